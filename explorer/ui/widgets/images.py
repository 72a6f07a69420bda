"""The image picker shared by the Model and Attribution pages: a sample photo or an upload, decoded and shown."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import streamlit as st
from PIL import Image

from explorer.data import IMAGE_EXTENSIONS, load_image, sample_images
from explorer.ui.common import show_error

MAX_IMAGE_PIXELS = 40_000_000


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
    source = st.radio("Image", ["Sample", "Upload"], key=f"{key}_source", horizontal=True)
    if source == "Sample":
        if not samples:
            st.info("No sample images are installed (assets/); upload one instead.")
            return None
        if st.session_state.get(f"{key}_sample") not in samples:
            st.session_state[f"{key}_sample"] = default if default in samples else next(iter(samples))
        sample = st.selectbox("Sample image", list(samples), key=f"{key}_sample")
        name, data = samples[sample].name, samples[sample].read_bytes()
    else:
        up = st.file_uploader("Image file", type=sorted(e.lstrip(".") for e in IMAGE_EXTENSIONS), key=f"{key}_upload")
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
