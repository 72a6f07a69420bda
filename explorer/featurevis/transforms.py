"""Batched, differentiable robustness transforms, each image with its own randomness.

Lucent applies pad → jitter → scale → rotate → jitter → upsample as five resampling passes, with one random draw
shared by the whole batch. Here the whole chain is one affine map per image, so it costs one `grid_sample` from
the parameterized image straight to the model's input size (one interpolation instead of three, nothing
resampled twice), and each image draws its own jitter, scale and angle from its own generator: an image
transforms the same whether it is rendered alone or in a batch of 64. Everything outside the image (Lucent's
constant padding and the corners uncovered by jitter and rotation) reads as the pad value 0.5.

``classic`` uses Lucent's `standard_transforms` values; ``crops`` is MACO's: several random crops per image,
resized to the model input, plus Gaussian and uniform noise.

``wrap`` reads the image as a torus instead (the FFT image is periodic, so it has no seam), and ``roll`` adds a
random shift over the whole period. Why: with a constant pad, a border pixel always has fixed content next to it (the
grey pad, or the network's zero padding at the input's frame when the image reaches it), so to drive a unit it must
go further than a pixel among free neighbours, and on the bundled EfficientNet-Lite0 the first layers' borders came
out clipped to black and white (`benchmarks/bench_saturation.py`). On a torus nothing is fixed; with the roll, every
pixel lands next to the frame equally often. An image whose objective reads one position (a neuron) is never rolled,
and with ``roll_stride`` neither is one of a deep layer: its units see most of the image and want their object in one
place (rolled, blocks.6.0 reached 29 % less; unrolled, the early layers drew a centred blob inside a frame).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from explorer.errors import ExplorerError

LUCENT_SCALES: tuple[float, ...] = tuple(1 + (i - 5) / 50.0 for i in range(11))  # 0.90, 0.92, …, 1.10
LUCENT_ANGLES: tuple[float, ...] = tuple(float(a) for a in list(range(-10, 11)) + 5 * [0])  # 0° weighted up
TRANSFORM_KINDS = ("classic", "crops", "none")


@dataclass(frozen=True)
class TransformSpec:
    """What the random transforms do. Pixel amounts are in pixels of the parameterized image."""

    kind: str = "classic"
    pad: int = 12
    jitter: int = 8
    scales: tuple[float, ...] = LUCENT_SCALES
    angles: tuple[float, ...] = LUCENT_ANGLES
    jitter2: int = 4
    crops: int = 1  # "crops": crops per image each step
    box: tuple[float, float] = (0.5, 0.8)  # "crops": crop side as a fraction of the image side
    noise: float = 0.0  # std of Gaussian noise (and width of uniform noise) added in [0, 1] image space
    fill: float = 0.5
    wrap: bool = False  # "classic": read outside the image as its periodic continuation, not as `fill`
    roll: float = 0.0  # "classic" with wrap: the random shift ranges over this fraction of the period (1: any shift)
    roll_stride: int = 0  # roll only for layers at most this many times smaller than the input (0: any layer)


def _choice(u: float, options: Sequence[float]) -> float:
    return float(options[min(int(u * len(options)), len(options) - 1)])


def _shift(u: float, d: int) -> float:
    """A whole-pixel shift in {0, …, d-1}, centred on zero."""
    return 0.0 if d <= 1 else min(int(u * d), d - 1) - (d - 1) / 2.0


def classic_affine(u: Sequence[float], spec: TransformSpec, size: int) -> list[float]:
    """One image's (2, 3) affine as six floats (row-major), from six uniforms in [0, 1); plain Python, so a
    step's affines cost one tensor, not a dozen small ones per image. See `classic_theta`."""
    padded = size + 2 * spec.pad
    k = 2.0 / padded
    t1x, t1y = _shift(u[0], spec.jitter) * k, _shift(u[1], spec.jitter) * k
    s = _choice(u[2], spec.scales)
    a = math.radians(_choice(u[3], spec.angles))
    t2x, t2y = _shift(u[4], spec.jitter2) * k, _shift(u[5], spec.jitter2) * k
    cos, sin = math.cos(a) / s, math.sin(a) / s  # (R(a)·s)^-1 = [[cos, sin], [-sin, cos]] / s
    bx = -(cos * t2x + sin * t2y) - t1x
    by = -(-sin * t2x + cos * t2y) - t1y
    f = padded / size  # padded-image coords → unpadded-image coords
    return [cos * f, sin * f, bx * f, -sin * f, cos * f, by * f]


def roll_shift(u: Sequence[float], spec: TransformSpec) -> tuple[float, float]:
    """A random shift on the torus from two uniforms in [0, 1), in normalised image coordinates (the period is 2)."""
    return (2 * u[0] - 1) * spec.roll, (2 * u[1] - 1) * spec.roll


def classic_theta(u: torch.Tensor, spec: TransformSpec, size: int) -> torch.Tensor:
    """One image's (2, 3) affine (output → source, normalised coords) from six uniforms in [0, 1).

    Forward chain on the padded image (side P = size + 2·pad): translate by jitter, scale s, rotate a, translate
    by jitter2; the result fills the output. The returned map reads the *unpadded* image.
    """
    return torch.tensor(classic_affine(u.tolist(), spec, size)).view(2, 3)


def crop_thetas(side_u: torch.Tensor, centre_n: torch.Tensor, spec: TransformSpec) -> torch.Tensor:
    """(k, 2, 3) affines for k square crops: side ~ U(box) from `side_u` (k,), centre 0.5 + 0.15·`centre_n` (k, 2),
    kept inside the image."""
    lo, hi = spec.box
    side = lo + (hi - lo) * side_u
    half = (side / 2)[:, None]
    centre = torch.minimum(torch.maximum(0.5 + 0.15 * centre_n, half), 1 - half)
    theta = torch.zeros(side_u.shape[0], 2, 3)
    theta[:, 0, 0] = side
    theta[:, 1, 1] = side
    theta[:, :, 2] = centre * 2 - 1
    return theta


class Augment:
    """Maps a batch of [0, 1] images (N,3,S,S) to the model's normalised input (N·copies, 3, H, W)."""

    def __init__(
        self,
        spec: TransformSpec,
        gens: Sequence[torch.Generator],
        out_size: tuple[int, int],
        normalize: Callable[[torch.Tensor], torch.Tensor],
        device: torch.device,
        shift: Sequence[bool] | None = None,
    ) -> None:
        """`shift[i]` False keeps image i from the random roll (its objective reads a fixed position)."""
        if spec.kind not in TRANSFORM_KINDS:
            raise ExplorerError(f"Unknown transforms {spec.kind!r}: use one of {', '.join(TRANSFORM_KINDS)}.")
        self.spec, self.gens, self.out_size, self.normalize, self.device = spec, list(gens), out_size, normalize, device
        self.copies = max(1, spec.crops) if spec.kind == "crops" else 1
        self.wrap = spec.wrap and spec.kind == "classic"
        rolls = list(shift) if shift is not None else [True] * len(self.gens)
        self.rolls = [bool(r) and self.wrap and spec.roll > 0 for r in rolls]
        self.noise_gens: list[torch.Generator] = []
        if spec.noise > 0:
            for g in self.gens:  # a device generator per image, seeded from the image's own generator
                seed = int(torch.randint(0, 2**62, (1,), generator=g))
                self.noise_gens.append(torch.Generator(device=device).manual_seed(seed))

    def thetas(self, size: int) -> torch.Tensor:
        """This step's affines, (N·copies, 2, 3), one random draw per image from its own generator."""
        if self.spec.kind == "classic":
            rows = []
            for g, roll in zip(self.gens, self.rolls, strict=True):
                u = torch.rand(8 if roll else 6, generator=g).tolist()
                row = classic_affine(u, self.spec, size)
                if roll:
                    dx, dy = roll_shift(u[6:], self.spec)
                    row[2] += dx
                    row[5] += dy
                rows.append(row)
            return torch.tensor(rows).view(len(rows), 2, 3)
        if self.spec.kind == "crops":
            k = self.copies
            return torch.cat(
                [crop_thetas(torch.rand(k, generator=g), torch.randn(k, 2, generator=g), self.spec) for g in self.gens]
            )
        return torch.eye(2, 3).expand(len(self.gens), 2, 3)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        n, c, _, size = images.shape
        theta = self.thetas(size).to(device=images.device, dtype=images.dtype)
        src = images - self.spec.fill
        seen = self._seen_side(size)
        if seen < size:  # the model sees the image smaller than it is: low-pass first, or fine detail aliases
            src = F.interpolate(src, size=(seen, seen), mode="bilinear", antialias=True, align_corners=False)
        if self.copies > 1:
            src = src.repeat_interleave(self.copies, dim=0)
        grid = F.affine_grid(theta, [src.shape[0], c, *self.out_size], align_corners=False)
        if self.wrap:
            x = wrap_sample(src, grid) + self.spec.fill
        else:
            x = F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + self.spec.fill
        if self.noise_gens:
            x = x + self._noise(x.shape[1:])
        return self.normalize(x)

    def _seen_side(self, size: int) -> int:
        """How many model-input pixels span the image's side (at scale 1): the resolution the model sees it at."""
        out = max(self.out_size)
        if self.spec.kind == "crops":
            return max(1, round(out / self.spec.box[0]))  # the smallest crop is the most magnified
        if self.spec.kind == "classic":
            return max(1, round(out * size / (size + 2 * self.spec.pad) * max(self.spec.scales)))
        return out

    def _noise(self, shape: torch.Size) -> torch.Tensor:
        level = self.spec.noise
        parts = []
        for g in self.noise_gens:
            gauss = torch.randn((self.copies, *shape), generator=g, device=self.device)
            unif = torch.rand((self.copies, *shape), generator=g, device=self.device) - 0.5
            parts.append(level * (gauss + unif))
        return torch.cat(parts)


def wrap_sample(src: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear `grid_sample` of (N,C,S,S) `src` read as a torus: coordinates wrap into [-1, 1), and a one-pixel
    circular border lets the last pixel blend with the first (align_corners=False)."""
    size = src.shape[-1]
    g = torch.remainder(grid + 1, 2) - 1
    g = ((g + 1) * size + 2) / (size + 2) - 1  # the same pixel in the circularly padded image
    padded = F.pad(src, (1, 1, 1, 1), mode="circular")
    return F.grid_sample(padded, g, mode="bilinear", padding_mode="border", align_corners=False)
