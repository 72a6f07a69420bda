"""The natural-image magnitude spectrum MACO keeps fixed: computed from local images (the shipped sample
photographs, or a folder of the user's) in Lucid's decorrelated colour space, and cached in memory and on disk;
nothing is downloaded."""

from __future__ import annotations

import contextlib
import hashlib
import io
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from explorer.cache import Cache, make_key
from explorer.data import list_images, load_image, sample_images
from explorer.errors import ExplorerError
from explorer.featurevis.colour import COLOR_CORRELATION

SPECTRUM_VERSION = 1


class SpectrumError(ExplorerError):
    """No natural images to compute the spectrum from."""


def _spectrum_sources(folder: str | Path | None) -> list[Path]:
    paths = list_images(folder) if folder is not None else list(sample_images().values())
    if not paths:
        raise SpectrumError(
            f"MACO needs natural images for its spectrum, and the folder {folder} has none."
            if folder is not None
            else "MACO needs natural images for its spectrum, and assets/ has none."
        )
    return sorted(paths)[:256]


def _crops(path: Path, size: int) -> list[np.ndarray]:
    """Centre crops of an image at three scales, as float (size, size, 3) arrays in [0, 1]."""
    im = load_image(path)
    out = []
    for factor in (1.0, 1.5, 2.0):
        w, h = im.size
        s = factor * size / min(w, h)
        if s > 1.0 and factor > 1.0:
            continue  # never upsample beyond the first scale: upsampling adds no natural high frequencies
        r = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.BICUBIC)
        w2, h2 = r.size
        for left, top in {((w2 - size) // 2, (h2 - size) // 2), (0, 0), (w2 - size, h2 - size)}:
            crop = r.crop((left, top, left + size, top + size))
            out.append(np.asarray(crop, dtype=np.float32) / 255.0)
    return out


def compute_spectrum(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Mean |rfft2| of the images' crops in Lucid's decorrelated colour space: (3, size, size//2+1)."""
    inv = np.linalg.inv(COLOR_CORRELATION.T).astype(np.float32)
    acc = np.zeros((3, size, size // 2 + 1), dtype=np.float64)
    count = 0
    for p in paths:
        for crop in _crops(p, size):
            x = (crop - crop.mean(axis=(0, 1), keepdims=True)) @ inv  # RGB → decorrelated
            acc += np.abs(np.fft.rfft2(np.moveaxis(x, -1, 0), axes=(-2, -1)))
            count += 1
    return torch.from_numpy((acc / max(count, 1)).astype(np.float32))


def _files_digest(paths: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@lru_cache(maxsize=16)
def _natural_spectrum(folder: str | None, size: int) -> torch.Tensor:
    paths = _spectrum_sources(folder)
    key = make_key(kind="maco-spectrum", version=SPECTRUM_VERSION, size=size, files=_files_digest(paths))
    cache = Cache()
    entry = cache.get("spectra", key, suffix=".npy")
    if entry is not None:
        arr = np.load(io.BytesIO(entry.data), allow_pickle=False)
        if arr.shape == (3, size, size // 2 + 1):
            return torch.from_numpy(arr)
    spectrum = compute_spectrum(paths, size)
    buf = io.BytesIO()
    np.save(buf, spectrum.numpy(), allow_pickle=False)
    with contextlib.suppress(OSError):  # a read-only cache only costs recomputation
        cache.put("spectra", key, buf.getvalue(), {"size": size, "images": len(paths)}, suffix=".npy")
    return spectrum


def natural_spectrum(size: int, folder: str | Path | None = None) -> torch.Tensor:
    """The MACO magnitude spectrum at `size`, from the sample images or `folder`; cached in memory and on disk."""
    return _natural_spectrum(None if folder is None else str(Path(folder).resolve()), int(size)).clone()
