"""Image parameterizations: what the optimiser actually changes, and how that becomes an RGB image in [0, 1].

- ``fft``: Lucid's Fourier parameterization. Each image is a spectrum scaled by 1/f^decay (so low frequencies
  move first), decorrelated colour (Lucid's 3×3 matrix), then a sigmoid. The "classic" look.
- ``pixel``: plain pixels (decorrelated colour, sigmoid); a baseline that shows why the others exist.
- ``maco``: Fel et al. 2023. Only the Fourier *phase* is optimised; the magnitude is fixed to a natural-image
  spectrum, so the result keeps natural-image statistics. The spectrum is computed here from local images
  (the shipped samples, or a folder of the user's) and cached on disk: nothing is downloaded.

Every image in a batch has its own parameters, drawn from its own generator (see `image_generator`), so an image
does not depend on which other images share its batch.
"""

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

# Lucid's colour correlation (square root of the ImageNet colour covariance, via SVD), normalised so that the
# largest column has norm 1. decorrelated @ COLOR.T gives RGB.
_COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_CORRELATION = _COLOR_SVD_SQRT / np.max(np.linalg.norm(_COLOR_SVD_SQRT, axis=0))
SPECTRUM_VERSION = 1


class ParamError(ExplorerError):
    """A parameterization that cannot be built (unknown kind, no images for the spectrum)."""


def image_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator determined by (seed, key) alone: an image's randomness never depends on its batch."""
    digest = hashlib.blake2b(f"{int(seed)}|{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


def recorrelate(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) decorrelated colour → RGB-correlated colour (Lucid's `_linear_decorrelate_color`)."""
    m = torch.as_tensor(COLOR_CORRELATION, device=x.device, dtype=x.dtype)
    return torch.einsum("nchw,dc->ndhw", x, m)


def _stack_randn(gens: Sequence[torch.Generator], shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


class ImageParam:
    """Base: `parameters()` are optimised; calling the object gives the (N,3,H,W) image in [0, 1]."""

    size: int
    n: int

    def parameters(self) -> list[torch.Tensor]:
        raise NotImplementedError

    def __call__(self) -> torch.Tensor:
        raise NotImplementedError


def rfft2d_freqs(h: int, w: int) -> np.ndarray:
    """Spatial frequency magnitude of each rfft2 coefficient, shape (h, w//2+1)."""
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.rfftfreq(w)[None, :]
    return np.sqrt(fx * fx + fy * fy)


class FFTParam(ImageParam):
    """Lucid's FFT image: spectrum × 1/max(f, 1/size)^decay_power, irfft, /4, colour recorrelation, sigmoid."""

    def __init__(
        self,
        n: int,
        size: int,
        gens: Sequence[torch.Generator],
        device: torch.device,
        *,
        sd: float = 0.01,
        decay_power: float = 1.0,
        decorrelate: bool = True,
    ) -> None:
        self.n, self.size, self.decorrelate = n, size, decorrelate
        freqs = rfft2d_freqs(size, size)
        scale = 1.0 / np.maximum(freqs, 1.0 / size) ** decay_power
        self.scale = torch.tensor(scale, dtype=torch.float32, device=device)[None, None, :, :, None]
        self.spectrum = (_stack_randn(gens, (3, *freqs.shape, 2), device) * sd).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.spectrum]

    def __call__(self) -> torch.Tensor:
        spec = torch.view_as_complex((self.scale * self.spectrum).contiguous())
        x = torch.fft.irfft2(spec, s=(self.size, self.size), norm="ortho") / 4.0  # Lucid's "magic" 4
        if self.decorrelate:
            x = recorrelate(x)
        return torch.sigmoid(x)


class PixelParam(ImageParam):
    """Plain pixels with Lucent's init (N(0, 0.01)), colour recorrelation and a sigmoid."""

    def __init__(
        self, n: int, size: int, gens: Sequence[torch.Generator], device: torch.device, *, sd: float = 0.01
    ) -> None:
        self.n, self.size = n, size
        self.pixels = (_stack_randn(gens, (3, size, size), device) * sd).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.pixels]

    def __call__(self) -> torch.Tensor:
        return torch.sigmoid(recorrelate(self.pixels))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per image (dims 1..), so images in a batch stay independent."""
    dims = tuple(range(1, x.ndim))
    x = x - x.mean(dim=dims, keepdim=True)
    return x / (x.std(dim=dims, keepdim=True) + 1e-4)


class MacoParam(ImageParam):
    """MACO: a learnable phase under a fixed natural magnitude spectrum (3, size, size//2+1).

    image = sigmoid(gain · recorrelate(standardize(irfft2(|M| e^{i·standardize(φ)}))))
    """

    def __init__(
        self,
        n: int,
        size: int,
        gens: Sequence[torch.Generator],
        device: torch.device,
        *,
        magnitude: torch.Tensor,
        gain: float = 1.0,
    ) -> None:
        if tuple(magnitude.shape) != (3, size, size // 2 + 1):
            raise ParamError(f"The MACO spectrum has shape {tuple(magnitude.shape)}, not (3, {size}, {size // 2 + 1}).")
        self.n, self.size, self.gain = n, size, gain
        self.magnitude = magnitude.to(device=device, dtype=torch.float32)
        self.phase = _stack_randn(gens, tuple(magnitude.shape), device).requires_grad_(True)

    def parameters(self) -> list[torch.Tensor]:
        return [self.phase]

    def __call__(self) -> torch.Tensor:
        phase = _standardize(self.phase)
        spec = torch.polar(self.magnitude.expand_as(phase), phase)
        x = _standardize(torch.fft.irfft2(spec, s=(self.size, self.size)))
        return torch.sigmoid(self.gain * recorrelate(x))


# --------------------------------------------------------------------------- the natural-image spectrum


def _spectrum_sources(folder: str | Path | None) -> list[Path]:
    paths = list_images(folder) if folder is not None else list(sample_images().values())
    if not paths:
        raise ParamError(
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


PARAM_KINDS = ("fft", "pixel", "maco")


def make_param(
    kind: str,
    n: int,
    size: int,
    gens: Sequence[torch.Generator],
    device: torch.device,
    *,
    decay_power: float = 1.0,
    decorrelate: bool = True,
    sd: float = 0.01,
    spectrum_folder: str | Path | None = None,
    maco_gain: float = 1.0,
) -> ImageParam:
    """Build the parameterization `kind` for `n` images of `size`², one generator per image."""
    if len(gens) != n:
        raise ParamError(f"Need one generator per image ({n}), got {len(gens)}.")
    if kind == "fft":
        return FFTParam(n, size, gens, device, sd=sd, decay_power=decay_power, decorrelate=decorrelate)
    if kind == "pixel":
        return PixelParam(n, size, gens, device, sd=sd)
    if kind == "maco":
        magnitude = natural_spectrum(size, spectrum_folder)
        return MacoParam(n, size, gens, device, magnitude=magnitude, gain=maco_gain)
    raise ParamError(f"Unknown parameterization {kind!r}: use one of {', '.join(PARAM_KINDS)}.")


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [0, 1] → (N,H,W,3) uint8."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
