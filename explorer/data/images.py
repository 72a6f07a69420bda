"""Images: open, validate and convert any supported image file to 8-bit RGB; list image files; sample photos.

Every problem a user can cause (a missing, empty, truncated or oversized file, an unknown format) raises
:class:`~explorer.errors.DataError` with one plain sentence that the UI and the CLI can show as is.
"""

from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any, BinaryIO, cast

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from explorer.errors import DataError, brief, msg

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".avif", ".ppm", ".pgm", ".pbm"}
)
ASSETS_DIR: Path = Path(__file__).resolve().parents[2] / "assets"

# Decoders we trust with uploads; leaves out e.g. EPS, which PIL renders by running Ghostscript.
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP", "AVIF", "PPM")
_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_WIDE_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I", "F"}
UPLOADED = msg("the uploaded image")  # the name of an image that came without one

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
        fp, name = io.BytesIO(bytes(source)), name or UPLOADED
        if not source:
            raise DataError(f"{name} is empty (0 bytes).")
    else:
        name = name or Path(str(getattr(source, "name", "") or UPLOADED)).name
        seekable = getattr(source, "seekable", None)
        fp = source if seekable and seekable() else io.BytesIO(source.read())
    try:
        # The warnings filter is process-wide; PIL's bomb guard only backs up the size check below.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp, formats=_FORMATS) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise DataError(_too_big(name, max_pixels, (w, h)))
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
        limit = min([max_pixels, *numbers[1:2]])
        raise DataError(_too_big(name, limit, count=numbers[0] if numbers else None)) from None
    except UnidentifiedImageError:
        raise DataError(f"{name} is not an image file (PIL could not identify it).") from None
    except PermissionError as e:
        raise DataError(f"{name} could not be read ({e.strerror}).") from None
    except Exception as e:  # any decoder failure: truncated data, bad chunks, bad CRC...
        raise DataError(f"{name} is truncated or corrupt ({brief(e)}).") from None


def _too_big(name: str, limit: int, size: tuple[int, int] | None = None, count: int | None = None) -> str:
    """Why an image is refused for its pixel count: its width × height (from its header), else the count PIL's
    bomb guard read, else no number."""
    if size is not None:
        w, h = size
        return msg(
            f"{name} is {w}x{h} = {w * h:,} pixels, over the limit of {limit:,} pixels (possibly a decompression bomb)."
        )
    if count is not None:
        return msg(f"{name} is {count:,} pixels, over the limit of {limit:,} pixels (possibly a decompression bomb).")
    return msg(f"{name} is too many pixels, over the limit of {limit:,} pixels (possibly a decompression bomb).")


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
        raise DataError(f"Images in colour mode {im.mode} are not supported ({brief(e)}).") from None


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


def is_hidden(path: Path, root: Path) -> bool:
    """Whether `path` (under `root`) is a dotfile, inside a dot-folder or in macOS's __MACOSX folder."""
    return any(p.startswith(".") or p == "__MACOSX" for p in path.relative_to(root).parts)


def list_images(folder: str | Path) -> list[Path]:
    """All image files under ``folder`` (recursive, by extension), sorted; hidden ones skipped."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.")
    return sorted(
        p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file() and not is_hidden(p, root)
    )


def typical_side(paths: list[str] | list[Path], limit: int = 32) -> int | None:
    """The median longer side of the readable images among the first `limit` of `paths` (headers only), or None."""
    sides = []
    for path in paths[:limit]:
        try:
            with Image.open(path) as im:
                sides.append(max(im.size))
        except (OSError, ValueError, Image.DecompressionBombError):
            continue
    return int(np.median(sides)) if sides else None


def sample_images() -> dict[str, Path]:
    """The sample photographs shipped in ``assets/``, by file stem."""
    if not ASSETS_DIR.is_dir():
        return {}
    files = sorted(p for p in ASSETS_DIR.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    return {p.stem: p for p in files}


def check_image(path: Path, max_pixels: int = 40_000_000, *, full: bool = False) -> str | None:
    """Why the image file `path` is unusable, or None. Reads only the header unless `full` decodes it."""
    try:
        _open(path, max_pixels, None, decode=full)
    except DataError as e:
        return str(e)
    return None
