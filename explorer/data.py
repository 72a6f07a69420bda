"""Image loading and validation, image folders, safe zip extraction, demo datasets.

Every problem a user can cause (a bad file, a bad folder, a hostile zip) raises
:class:`DataError` with one plain sentence that the UI and the CLI can show as is.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from explorer.errors import ExplorerError

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm", ".pbm"}
)
ASSETS_DIR: Path = Path(__file__).resolve().parent.parent / "assets"

# Decoders we trust with uploads; leaves out e.g. EPS, which PIL renders by running Ghostscript.
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}


class DataError(ExplorerError):
    """A problem with the user's data, described in one sentence."""


# ----------------------------------------------------------------------------- images


def load_image(
    source: str | Path | bytes | BinaryIO, *, max_pixels: int = 40_000_000, name: str | None = None
) -> Image.Image:
    """Open, fully decode and convert any supported image to 8-bit RGB.

    The pixel count is checked against ``max_pixels`` before decoding. Transparency is
    composited on white, 16-bit and float images are stretched over their actual value
    range, EXIF orientation is applied and only the first frame is kept.
    """
    return cast(Image.Image, _open(source, max_pixels, name, decode=True))


def _open(source: str | Path | bytes | BinaryIO, max_pixels: int, name: str | None, decode: bool) -> Image.Image | None:
    """Check the size from the header, then decode and convert (``decode``) or only verify."""
    fp: Any
    if isinstance(source, (str, Path)):
        fp, name = Path(source), name or Path(source).name
        if not fp.exists():
            raise DataError(f"{name} does not exist.")
        if fp.is_dir():
            raise DataError(f"{name} is a folder, not an image file.")
        if fp.stat().st_size == 0:
            raise DataError(f"{name} is empty (0 bytes).")
    elif isinstance(source, (bytes, bytearray, memoryview)):
        fp, name = io.BytesIO(bytes(source)), name or "the uploaded image"
        if not source:
            raise DataError(f"{name} is empty (0 bytes).")
    else:
        name = name or Path(str(getattr(source, "name", "") or "the uploaded image")).name
        seekable = getattr(source, "seekable", None)
        fp = source if seekable and seekable() else io.BytesIO(source.read())
    try:
        # The warnings filter is process-wide; PIL's bomb guard only backs up the size check below.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=_FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DataError(_too_big(name, f"{w}x{h} = {w * h:,}", max_pixels))
                if not decode:
                    im.verify()  # checks PNG chunk CRCs and truncation without decoding pixels
                    return None
                im.seek(0)
                im.load()
                return _to_rgb(_exif_transpose(im))
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        numbers = [int(n) for n in re.findall(r"\d+", str(e))]  # "Image size (N pixels) exceeds limit of M"
        size = f"{numbers[0]:,}" if numbers else "too many"
        raise DataError(_too_big(name, size, min([max_pixels, *numbers[1:2]]))) from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image file (PIL could not identify it).") from None
    except PermissionError as e:
        raise DataError(f"{name} could not be read ({e.strerror}).") from None
    except Exception as e:  # any decoder failure: truncated data, bad chunks, bad CRC...
        raise DataError(f"{name} is truncated or corrupt ({_short(e)}).") from None


def _short(e: BaseException) -> str:
    text = str(e).strip().rstrip(".") or type(e).__name__
    return text.splitlines()[0][:120]


def _too_big(name: str, size: str, limit: int) -> str:
    return f"{name} is {size} pixels, over the limit of {limit:,} pixels (possibly a decompression bomb)."


def _exif_transpose(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block should not cost the user the image
        return im


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB uint8 (see :func:`load_image`)."""
    if im.mode in _WIDE_MODES:
        im = Image.fromarray(_stretch_to_uint8(np.asarray(im), im.mode), mode="L")
    if im.mode == "La":
        im = im.convert("LA")
    if im.mode in _ALPHA_MODES or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    try:
        return im.convert("RGB")
    except ValueError as e:
        raise DataError(f"Images in colour mode {im.mode} are not supported ({_short(e)}).") from None


def _stretch_to_uint8(a: np.ndarray, mode: str) -> np.ndarray:
    """Map the actual value range of a wide image to 0..255; constants use the nominal range."""
    a = a.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.any():
        return np.zeros(a.shape, np.uint8)
    lo, hi = float(a[finite].min()), float(a[finite].max())
    a = np.where(finite, a, lo)
    if hi > lo:
        out = (a - lo) * (255.0 / (hi - lo))
    elif mode.startswith("I;16"):
        out = a / 257.0
    elif mode == "F" and 0.0 <= lo <= 1.0:
        out = a * 255.0
    else:
        out = a
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _is_hidden(path: Path, root: Path) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive, by extension), sorted; hidden ones skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not _is_hidden(p, root)
    )


def sample_images() -> dict[str, Path]:
    """The sample photographs shipped in ``assets/``, by file stem."""
    if not ASSETS_DIR.is_dir():
        return {}
    files = sorted(p for p in ASSETS_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return {p.stem: p for p in files}


# ------------------------------------------------------------------------ image folders


def _check_file(path: Path, max_pixels: int, full: bool) -> str | None:
    """Return why ``path`` is unusable, or None. Reads only the header unless ``full``."""
    try:
        _open(path, max_pixels, None, decode=full)
    except DataError as e:
        return str(e)
    return None


class ImageFolderDataset(Dataset):
    """A folder with one sub-folder per class; items are ``(RGB image or transform(image), label)``.

    Unreadable files are skipped at scan time and listed in ``skipped`` as ``(path, reason)``.
    The scan only reads headers unless ``full_check`` decodes every image.
    """

    def __init__(
        self,
        root: str | Path,
        transform: Callable[[Image.Image], Any] | None = None,
        *,
        max_pixels: int = 40_000_000,
        full_check: bool = False,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.max_pixels = max_pixels
        if not self.root.exists():
            raise DataError(f"Dataset folder {self.root} does not exist.")
        if not self.root.is_dir():
            raise DataError(f"{self.root} is not a folder.")
        dirs = sorted(d.name for d in self.root.iterdir() if d.is_dir() and not _is_hidden(d, self.root))
        if not dirs:
            raise DataError(
                f"{self.root} has no class sub-folders; put each class's images in its own "
                f"sub-folder (e.g. {self.root.name}/cats/1.jpg)."
            )
        if len(dirs) < 2:
            raise DataError(f"{self.root} needs at least two classes but has only one sub-folder ({dirs[0]}).")
        self.classes: list[str] = dirs
        self.class_to_idx: dict[str, int] = {c: i for i, c in enumerate(dirs)}
        self.samples: list[tuple[Path, int]] = []
        self.skipped: list[tuple[Path, str]] = []
        empty: list[str] = []
        for label, cls in enumerate(dirs):
            found = 0
            for path in list_images(self.root / cls):
                reason = _check_file(path, max_pixels, full_check)
                if reason is None:
                    self.samples.append((path, label))
                    found += 1
                else:
                    self.skipped.append((path, reason))
            if not found:
                empty.append(cls)
        if empty:
            raise DataError(f"{self.root} has classes with no readable images: {', '.join(empty)}.")

    @property
    def targets(self) -> list[int]:
        """The label of every sample, in order."""
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        path, label = self.samples[index]
        img = load_image(path, max_pixels=self.max_pixels)
        return (self.transform(img) if self.transform else img), label


# ------------------------------------------------------------------------------ splits


def _n_val(count: int, val_fraction: float) -> int:
    return max(0, min(count - 1, int(np.floor(count * val_fraction + 0.5))))


def _check_fraction(val_fraction: float) -> None:
    if not 0.0 <= val_fraction < 1.0:
        raise DataError(f"The validation fraction must be in [0, 1), got {val_fraction}.")


def split(n: int, val_fraction: float, seed: int, labels: Sequence[Any] | None = None) -> tuple[list[int], list[int]]:
    """Random train/validation split of ``range(n)`` as sorted index lists, deterministic in ``seed``.

    Stratified (see :func:`split_indices`) when ``labels`` are given; keeps at least one train item.
    """
    if labels is not None:
        if len(labels) != n:
            raise DataError(f"The split needs {n} labels but got {len(labels)}.")
        return split_indices(labels, val_fraction, seed)
    _check_fraction(val_fraction)
    order = np.random.default_rng(seed).permutation(n)
    k = _n_val(n, val_fraction)
    return sorted(order[k:].tolist()), sorted(order[:k].tolist())


def split_indices(labels: Sequence[Any], val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Stratified :func:`split`: each class contributes ``round(count * val_fraction)`` items to
    validation and always keeps at least one training item."""
    _check_fraction(val_fraction)
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(y, []).append(i)
    train: list[int] = []
    val: list[int] = []
    for y in sorted(by_class, key=repr):
        idx = np.array(by_class[y])[rng.permutation(len(by_class[y]))]
        k = _n_val(len(idx), val_fraction)
        val += idx[:k].tolist()
        train += idx[k:].tolist()
    return sorted(train), sorted(val)


def resolve_data(spec_or_path: str | Path) -> Path:
    """Turn ``demo:<name>`` or a folder path into an existing image-folder path."""
    spec = str(spec_or_path)
    if spec.startswith("demo:"):
        from explorer.demos import demo_dataset

        return demo_dataset(spec.removeprefix("demo:"))
    path = Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"Data folder {path} does not exist.")
    if not path.is_dir():
        raise DataError(f"{path} is not a folder.")
    return path


# Re-exported so `from explorer.data import …` reaches the whole data API.
from explorer.archive import safe_extract_zip  # noqa: E402
from explorer.demos import DEMO_DATASETS, demo_dataset  # noqa: E402

__all__ = [
    "ASSETS_DIR",
    "DEMO_DATASETS",
    "IMAGE_EXTENSIONS",
    "DataError",
    "ImageFolderDataset",
    "demo_dataset",
    "list_images",
    "load_image",
    "resolve_data",
    "safe_extract_zip",
    "sample_images",
    "split",
    "split_indices",
]
