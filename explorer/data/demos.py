"""Built-in demo datasets that need no download: scikit-learn digits and generated shapes."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from explorer.cache import folder as cache_folder
from explorer.errors import DataError

DEMO_DATASETS: dict[str, str] = {
    "digits": "1,797 real 8x8 handwritten digits (scikit-learn), 10 classes, upscaled to 64x64",
    "shapes": "120 generated 64x64 images of circles, squares and triangles on noisy backgrounds",
}
_DEMO_MARKER = ".layer-explorer-demo"
_DEMO_VERSION = 1


def _default_demo_root() -> Path:
    return cache_folder("demo")  # under $LAYER_EXPLORER_CACHE when set, like everything the app keeps


def _write_digits(dest: Path) -> int:
    # start-up cost: scikit-learn takes ~1 s to import; only the digits demo needs it, once
    from sklearn.datasets import load_digits

    digits = load_digits()
    for c in range(10):
        (dest / str(c)).mkdir()
    for i, (img, y) in enumerate(zip(digits.images, digits.target, strict=True)):
        small = Image.fromarray(np.rint(img * (255 / 16)).astype(np.uint8), mode="L")
        big = small.resize((64, 64), Image.Resampling.BILINEAR).convert("RGB")
        big.save(dest / str(int(y)) / f"{i:04d}.png", optimize=False, compress_level=1)
    return len(digits.target)


def shape_image(rng: np.random.Generator, kind: str, size: int = 64) -> Image.Image:
    coarse = rng.uniform(40, 215, size=(4, 4, 3))
    bg = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize((size, size), Image.Resampling.BICUBIC))
    bg = np.clip(bg + rng.normal(0, 12, size=bg.shape), 0, 255).astype(np.uint8)
    mean = bg.reshape(-1, 3).mean(0)
    colour = rng.uniform(0, 255, 3)
    while np.abs(colour - mean).sum() < 220:  # keep the shape visible against the background
        colour = rng.uniform(0, 255, 3)
    s = 4  # draw at 4x and downsample for anti-aliased edges
    r = rng.uniform(9, 20) * s
    cx, cy = (rng.uniform(r, size * s - r) for _ in range(2))
    layer = Image.new("L", (size * s, size * s), 0)
    draw = ImageDraw.Draw(layer)
    if kind == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        n = 4 if kind == "square" else 3
        rot = rng.uniform(0, 2 * np.pi)
        rad = r if n == 3 else r * 0.95
        angles = rot + 2 * np.pi * np.arange(n) / n
        draw.polygon(list(zip(cx + rad * np.cos(angles), cy + rad * np.sin(angles), strict=True)), fill=255)
    alpha = np.asarray(layer.resize((size, size), Image.Resampling.LANCZOS), dtype=np.float64)[..., None] / 255
    out = bg * (1 - alpha) + colour * alpha
    return Image.fromarray(np.rint(out).astype(np.uint8), mode="RGB")


def _write_shapes(dest: Path, per_class: int = 40, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    kinds = ["circle", "square", "triangle"]
    for kind in kinds:
        (dest / kind).mkdir()
    for i in range(per_class):
        for kind in kinds:
            shape_image(rng, kind).save(dest / kind / f"{i:03d}.png")
    return per_class * len(kinds)


_DEMO_WRITERS: dict[str, Callable[[Path], int]] = {"digits": _write_digits, "shapes": _write_shapes}


def _marker_ok(folder: Path, name: str) -> bool:
    try:
        meta = json.loads((folder / _DEMO_MARKER).read_text())
    except (OSError, ValueError):
        return False
    return meta.get("name") == name and meta.get("version") == _DEMO_VERSION


def demo_dataset(name: str, root: str | Path | None = None) -> Path:
    """Materialise the built-in demo dataset ``name`` as an image folder and return its path.

    Cached under ``root/<name>`` (default ``<cache root>/demo/<name>``, the root being ``$LAYER_EXPLORER_CACHE`` or
    ``~/.cache/layer-explorer``); built once in a temporary folder and renamed into place, so a half-written dataset
    is never seen.
    """
    if name not in DEMO_DATASETS:
        raise DataError(f"Unknown demo dataset {name!r}; choose one of: {', '.join(DEMO_DATASETS)}.")
    base = Path(root) if root is not None else _default_demo_root()
    final = base / name
    if _marker_ok(final, name):
        return final
    if final.exists() and not (final / _DEMO_MARKER).exists():
        raise DataError(f"{final} exists but is not a Layer Explorer demo dataset; move it away.")
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=base))
    stale = None
    try:
        count = _DEMO_WRITERS[name](tmp)
        meta = {"name": name, "version": _DEMO_VERSION, "images": count}
        (tmp / _DEMO_MARKER).write_text(json.dumps(meta))
        if final.exists():  # an older version: swap it out
            stale = Path(tempfile.mkdtemp(prefix=f".{name}-stale-", dir=base))
            final.rename(stale / name)
        try:
            tmp.rename(final)
        except OSError:
            if not _marker_ok(final, name):  # not a concurrent builder winning the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if stale is not None:
            shutil.rmtree(stale, ignore_errors=True)
    return final
