"""Generated image folders for the science checks and benchmarks: datasets of known kinds that need no download.

- ``textures``: six classes of oriented, coloured noise textures (a grating's orientation and frequency, blurred
  noise, colour), each image a random mixture so that the classes overlap: a texture task ImageNet features help
  with but do not solve outright (a few hundred images leave a gap between freezing points to measure).
- ``shapes``: circles, squares and triangles on noisy backgrounds (the demo's generator, any number of images).
- ``photos``: crops of scikit-image's sample photographs, labelled by the photograph they come from, with random
  scale, flip and colour jitter: natural images, a task close to ImageNet's.

`generated_folder(kind, root, images, seed)` writes ``root/<class>/<i>.png`` (classes balanced) and returns root;
the same arguments give the same files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import skimage.data as samples
from PIL import Image

from explorer.data.demos import shape_image
from explorer.errors import DataError

KINDS = ("textures", "shapes", "photos")
TEXTURE_CLASSES = 6
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "horse", "camera")


def _texture(rng: np.random.Generator, label: int, size: int) -> np.ndarray:
    """One image of texture class `label`: a grating at the class's orientation and frequency, mixed with noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    angle = np.pi * label / TEXTURE_CLASSES + rng.normal(0, 0.25)
    freq = (4 + 2 * (label % 3)) * rng.uniform(0.8, 1.25)
    phase = rng.uniform(0, 2 * np.pi)
    grating = np.sin(2 * np.pi * freq * (np.cos(angle) * xx + np.sin(angle) * yy) + phase)
    coarse = rng.normal(0, 1, size=(size // 8, size // 8))
    blob = np.asarray(Image.fromarray(coarse.astype(np.float32)).resize((size, size), Image.Resampling.BICUBIC))
    mix = rng.uniform(0.35, 0.75)
    value = mix * grating + (1 - mix) * blob / (blob.std() + 1e-6) + rng.normal(0, 0.5, size=(size, size))
    hue = np.array([np.cos(2 * np.pi * label / 7), np.sin(2 * np.pi * label / 5), 0.5]) * 0.3
    colour = np.clip(0.5 + hue + rng.normal(0, 0.25, 3), 0.1, 0.9)
    img = 128 + 45 * value[..., None] * colour[None, None, :] * 2
    return np.clip(img, 0, 255).astype(np.uint8)


def _photo(rng: np.random.Generator, source: np.ndarray, size: int) -> np.ndarray:
    """A random crop of `source` (a quarter to two thirds of its short side), flipped and jittered, at `size`."""
    h, w = source.shape[:2]
    side = int(min(h, w) * rng.uniform(0.25, 0.66))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = Image.fromarray(source[y : y + side, x : x + side]).resize((size, size), Image.Resampling.BILINEAR)
    arr = np.asarray(crop).astype(np.float64)
    if rng.random() < 0.5:
        arr = arr[:, ::-1]
    arr = arr * rng.uniform(0.7, 1.3) + rng.normal(0, 20, 3)
    return np.clip(arr + rng.normal(0, 6, arr.shape), 0, 255).astype(np.uint8)


def _photo_sources() -> dict[str, np.ndarray]:
    out = {}
    for name in PHOTOS:
        img = np.asarray(getattr(samples, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        out[name] = img[..., :3].astype(np.uint8)
    return out


def generated_folder(kind: str, root: str | Path, images: int, seed: int = 0, size: int = 64) -> Path:
    """Write `images` generated images of `kind` (balanced classes) under `root`, one sub-folder per class."""
    if kind not in KINDS:
        raise DataError(f"Unknown generated dataset {kind!r}: use {', '.join(KINDS)}.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    if kind == "textures":
        classes = [f"texture{c}" for c in range(TEXTURE_CLASSES)]
    elif kind == "shapes":
        classes = ["circle", "square", "triangle"]
    else:
        sources = _photo_sources()
        classes = list(PHOTOS)
    for i in range(images):
        label = i % len(classes)
        if kind == "textures":
            arr = _texture(rng, label, size)
            img = Image.fromarray(arr)
        elif kind == "shapes":
            img = shape_image(rng, classes[label], size)
        else:
            img = Image.fromarray(_photo(rng, sources[classes[label]], size))
        folder = root / classes[label]
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / f"{i:05d}.png", compress_level=1)
    return root
