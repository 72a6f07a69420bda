"""The image picker shared by the Model and Attribution pages (a sample photo or an upload, decoded and shown), and
`as_png`, which hands `st.image` PNG bytes instead of arrays it would encode again on every run."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
from PIL import Image

from explorer.cache import png_bytes
from explorer.data import IMAGE_EXTENSIONS, load_image, sample_images
from explorer.ui.common import show_error
from explorer.ui.i18n import t

MAX_IMAGE_PIXELS = 40_000_000


def as_png(image: Any) -> Any:
    """What to give `st.image`: PNG bytes for a uint8 array or a PIL image (memoized by their pixels, see
    `explorer.cache.PngMemo`), anything else (bytes, a path, a float array) as it is.

    Streamlit encodes an array or a PIL image on every run of the page; bytes it passes on as they are."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB") if image.mode not in ("RGB", "L") else image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3):
        return png_bytes(image)
    return image


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
    try:
        image = load_image(data, name=name, max_pixels=MAX_IMAGE_PIXELS)
    except Exception as exc:
        show_error(exc)
        return None
    st.image(image, caption=f"{name} · {image.width}×{image.height}", width="stretch")
    return PickedImage(name, data, hashlib.sha256(data).hexdigest(), image, sample)
