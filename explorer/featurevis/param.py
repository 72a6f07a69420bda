"""Image parameterizations: what the optimiser actually changes, and how that becomes an RGB image in [0, 1].

- ``fft``: Lucid's Fourier parameterization. Each image is a spectrum scaled by 1/f^decay (so low frequencies
  move first), decorrelated colour (Lucid's 3×3 matrix), then a sigmoid. The "classic" look.
- ``pixel``: plain pixels (decorrelated colour, sigmoid); a baseline that shows why the others exist.
- ``maco``: Fel et al. 2023. Only the Fourier *phase* is optimised; the magnitude is fixed to a natural-image
  spectrum (:mod:`explorer.featurevis.spectrum`), so the result keeps natural-image statistics.

Each kind is a small builder in `PARAMS` (kind → builder); the colour space they share is
:mod:`explorer.featurevis.colour`.

Every image in a batch has its own parameters, drawn from its own generator (see `image_generator`), so an image
does not depend on which other images share its batch.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from explorer.errors import ExplorerError
from explorer.featurevis.colour import recorrelate
from explorer.featurevis.spectrum import natural_spectrum


class ParamError(ExplorerError):
    """A parameterization that cannot be built (unknown kind, no images for the spectrum)."""


def image_generator(seed: int, key: str) -> torch.Generator:
    """A CPU generator determined by (seed, key) alone: an image's randomness never depends on its batch."""
    digest = hashlib.blake2b(f"{int(seed)}|{key}".encode(), digest_size=8).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest, "little") & ((1 << 63) - 1))


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


Builder = Callable[..., ImageParam]


def _fft(n: int, size: int, gens: Sequence[torch.Generator], device: torch.device, **o: Any) -> ImageParam:
    return FFTParam(n, size, gens, device, sd=o["sd"], decay_power=o["decay_power"], decorrelate=o["decorrelate"])


def _pixel(n: int, size: int, gens: Sequence[torch.Generator], device: torch.device, **o: Any) -> ImageParam:
    return PixelParam(n, size, gens, device, sd=o["sd"])


def _maco(n: int, size: int, gens: Sequence[torch.Generator], device: torch.device, **o: Any) -> ImageParam:
    magnitude = natural_spectrum(size, o["spectrum_folder"])
    return MacoParam(n, size, gens, device, magnitude=magnitude, gain=o["maco_gain"])


PARAMS: dict[str, Builder] = {"fft": _fft, "pixel": _pixel, "maco": _maco}  # kind → builder; add a kind here
PARAM_KINDS = tuple(PARAMS)


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
    """Build the parameterization `kind` (a key of `PARAMS`) for `n` images of `size`², one generator per image."""
    if len(gens) != n:
        raise ParamError(f"Need one generator per image ({n}), got {len(gens)}.")
    if kind not in PARAMS:
        raise ParamError(f"Unknown parameterization {kind!r}: use one of {', '.join(PARAM_KINDS)}.")
    options = {"decay_power": decay_power, "decorrelate": decorrelate, "sd": sd}
    return PARAMS[kind](n, size, gens, device, **options, spectrum_folder=spectrum_folder, maco_gain=maco_gain)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N,3,H,W) in [0, 1] → (N,H,W,3) uint8."""
    x = images.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
