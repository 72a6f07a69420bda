"""The image picker shared by the Model and Attribution pages (a sample photo or an upload, decoded and shown),
`as_png`, which hands `st.image` PNG bytes instead of arrays it would encode again on every run, and `served`, the
bytes Streamlit makes of PNG bytes (its JPEG), made once, so that a rerun hands it finished bytes."""

from __future__ import annotations

import hashlib
import io
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from explorer.cache import png_bytes
from explorer.data import IMAGE_EXTENSIONS, load_image, sample_images
from explorer.ui.errors import show_error
from explorer.ui.i18n import t

MAX_IMAGE_PIXELS = 40_000_000
SHOWN_MEMO_ENTRIES = 16  # picked images whose shown bytes are kept (the sample photos and recent uploads)
DECODED_MEMO_BYTES = 64 * 2**20  # decoded picked images kept (their pixels), all together
SERVED_MEMO_BYTES = 32 * 2**20  # `served` results kept, all pictures together
MAX_CONTENT_WIDTH = 2 * 730  # streamlit.elements.lib.image_utils.MAXIMUM_CONTENT_WIDTH: st.image scales wider down
SERVED_QUALITY = 90  # the JPEG quality st.image re-encodes PNG bytes at
_shown: OrderedDict[tuple[Any, ...], bytes] = OrderedDict()
_decoded_memo: OrderedDict[tuple[Any, ...], Image.Image] = OrderedDict()
_shown_lock = threading.Lock()


def as_png(image: Any) -> Any:
    """What to give `st.image`: PNG bytes for a uint8 array or a PIL image (memoized by their pixels, see
    `explorer.cache.PngMemo`), anything else (bytes, a path, a float array) as it is.

    Streamlit encodes an array or a PIL image on every run of the page; bytes it passes on as they are."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L") else image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return png_bytes(image)
    return image


def _decoded(data: bytes, name: str, digest: str) -> Image.Image:
    """`load_image` of the picked file, decoded once per file (`digest`) and memoized; each call returns its own
    copy (the caller may change it)."""
    key = ("decoded", digest, name)
    with _shown_lock:
        found = _decoded_memo.get(key)
        if found is not None:
            _decoded_memo.move_to_end(key)
    if found is None:
        found = load_image(data, name=name, max_pixels=MAX_IMAGE_PIXELS)
        size = _nbytes(found)
        if size <= DECODED_MEMO_BYTES // 4:  # a huge upload is decoded each time rather than kept
            with _shown_lock:
                _decoded_memo[key] = found
                while sum(_nbytes(im) for im in _decoded_memo.values()) > DECODED_MEMO_BYTES:
                    _decoded_memo.popitem(last=False)
    return found.copy()


def _nbytes(image: Image.Image) -> int:
    return image.width * image.height * len(image.getbands())


def shown_bytes(image: Image.Image, digest: str) -> tuple[Any, str]:
    """(what to give `st.image`, its ``output_format``) for the picked image: for an RGB picture, the JPEG that
    Streamlit itself makes of a PIL image (quality 100), encoded once per file (`digest`) and memoized, so a rerun
    hands Streamlit the same bytes without encoding the photo again; any other picture as it is, with "auto"."""
    if image.mode != "RGB":
        return image, "auto"
    key = (digest, image.size)
    with _shown_lock:
        data = _shown.get(key)
        if data is not None:
            _shown.move_to_end(key)
            return data, "JPEG"
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=100)  # as streamlit.elements.lib.image_utils._pil_to_bytes does
    data = buf.getvalue()
    with _shown_lock:
        _shown[key] = data
        while len(_shown) > SHOWN_MEMO_ENTRIES:
            _shown.popitem(last=False)
    return data, "JPEG"


class _ServedMemo:
    """`served` results by a hash of their input and the width; bounded by the bytes held, thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.items: OrderedDict[tuple[bytes, int | None], tuple[bytes, str]] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key: tuple[bytes, int | None]) -> tuple[bytes, str] | None:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: tuple[bytes, int | None], value: tuple[bytes, str]) -> None:
        with self.lock:
            if key in self.items or len(value[0]) > self.max_bytes:
                return
            self.items[key] = value
            self.nbytes += len(value[0])
            while self.nbytes > self.max_bytes:
                self.nbytes -= len(self.items.popitem(last=False)[1][0])


_served = _ServedMemo(SERVED_MEMO_BYTES)


def served(png: bytes, width: int | None = None) -> tuple[bytes, str]:
    """(bytes, output_format) such that ``st.image(bytes, width=width, output_format=output_format)`` serves the
    very bytes that ``st.image(png, width=width)`` serves: Streamlit's "auto" format (JPEG at quality 90 for an
    opaque picture, PNG for one with transparency), scaled down (bilinear) to `width` (an int) or Streamlit's content
    width. Streamlit passes such bytes on as they are, where it would otherwise decode and encode them on every run;
    here that happens once (memoized by a hash of `png`). `width`: the int given to st.image, None for "stretch"."""
    key = (hashlib.blake2b(png, digest_size=16).digest(), width)
    hit = _served.get(key)
    if hit is not None:
        return hit
    target = width if width is not None else MAX_CONTENT_WIDTH
    with Image.open(io.BytesIO(png)) as pic:
        fmt = "GIF" if pic.format == "GIF" else "PNG" if pic.mode in ("RGBA", "LA", "P") else "JPEG"
        out: Image.Image | None = None
        if target > 0 and pic.width > target:
            out = pic.resize((target, int(1.0 * pic.height * target / pic.width)), resample=Image.Resampling.BILINEAR)
        elif pic.format != fmt:
            pic.load()
            out = pic
        data = png
        if out is not None:
            if fmt == "JPEG" and out.mode in ("RGBA", "LA", "P"):
                out = out.convert("RGB")
            buf = io.BytesIO()
            out.save(buf, format=fmt, quality=SERVED_QUALITY)
            data = buf.getvalue()
    value = (data, fmt if fmt != "GIF" else "auto")
    _served.put(key, value)
    return value


@dataclass(frozen=True)
class PickedImage:
    """The chosen image: its file name, bytes, their SHA-256 (a cache key), the decoded RGB image, and the sample's
    name when it is one of the sample photos."""

    name: str
    data: bytes
    digest: str
    image: Image.Image
    sample: str | None


def image_picker(key: str, samples: dict[str, Path] | None = None, default: str = "chelsea") -> PickedImage | None:
    """A Sample/Upload choice (widget keys ``{key}_source``, ``{key}_sample``, ``{key}_upload``), the image decoded
    and shown with its size; None while nothing is chosen or when the file cannot be read (the error is shown)."""
    samples = sample_images() if samples is None else samples
    words = {"Sample": t("images.sample"), "Upload": t("images.upload")}  # the values stay English: state, tests
    source = st.radio(t("images.image"), list(words), key=f"{key}_source", horizontal=True, format_func=words.get)
    if source == "Sample":
        if not samples:
            st.info(t("images.no_samples"))
            return None
        if st.session_state.get(f"{key}_sample") not in samples:
            st.session_state[f"{key}_sample"] = default if default in samples else next(iter(samples))
        sample = st.selectbox(t("images.sample_image"), list(samples), key=f"{key}_sample")
        name, data = samples[sample].name, samples[sample].read_bytes()
    else:
        up = st.file_uploader(
            t("images.file"), type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), key=f"{key}_upload"
        )
        if up is None:
            return None
        sample, name, data = None, up.name, up.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    try:
        image = _decoded(data, name, digest)
    except Exception as exc:
        show_error(exc)
        return None
    shown, output_format = shown_bytes(image, digest)
    st.image(shown, caption=f"{name} · {image.width}×{image.height}", width="stretch", output_format=output_format)
    return PickedImage(name, data, digest, image, sample)
