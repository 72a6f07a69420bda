"""The first convolution's own picture: its kernels, drawn as enlarged RGB tiles.

A convolution that reads the image (3 input channels: ``conv_stem`` of EfficientNet, ``conv1`` of ResNet,
``features.0.0`` of many torchvision models, a ViT's patch embedding ``conv_proj``) is linear in the pixels. Maximising
one of its channels only pushes every pixel to a corner of the [0, 1] box, so activation maximization is the wrong
picture for it; its weights *are* the picture (the classic first-layer filter figure). The first layer after its
nonlinearity is where feature visualization starts to say something, so `kernel_figure` also names that layer.

Each kernel is shown as the unit sees the pixels: the model's input normalisation is folded in (a weight on a
normalised channel is a weight / std on the pixel), and so is the sign of a BatchNorm right after it (a negative
scale turns the kernel into its opposite). Each kernel is scaled on its own, sign-aware: [−max|w|, +max|w|] maps to
[0, 1] around grey, so grey is zero, a bright channel is a positive weight and a dark one a negative weight.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from explorer.errors import ExplorerError, msg
from explorer.featurevis.sheet import contact_sheet
from explorer.layers import ladder, resolve
from explorer.models import LoadedModel

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish, nn.PReLU, nn.SELU, nn.CELU,
    nn.Sigmoid, nn.Tanh, nn.Hardtanh, nn.Softplus,
)  # fmt: skip
STOPS = (nn.Conv2d, nn.Linear, nn.MultiheadAttention)  # layers that mix channels: the search for "after" ends
WHY = msg(
    "The first convolution is linear in the pixels, so maximising one of its channels only pushes pixels to the "
    "box's corners; its weights are the picture."
)
ZERO_REL = 1e-4  # a kernel whose max |w| is below this fraction of the layer's largest is zero (pruned), drawn grey
TILE = 144  # side of an enlarged kernel tile, in pixels (a multiple of 3 and 16 divides it well for 3×3 and 16×16)


class KernelError(ExplorerError):
    """A layer whose weights are not a picture of the pixels (not a convolution reading the 3 colour channels)."""


@dataclass(frozen=True)
class KernelFigure:
    """One convolution's kernels as pictures, and the layer after its nonlinearity."""

    layer: str
    weights: np.ndarray  # (N, 3, kh, kw) float32: each kernel as the unit sees pixels in [0, 1] (see module doc)
    tiles: np.ndarray  # (N, S, S, 3) uint8: each kernel enlarged (nearest), per-kernel sign-aware scaling
    peak: np.ndarray  # (N,) max |w| of each kernel before the per-kernel scaling
    stride: tuple[int, int]
    after: str | None  # the first layer after the nonlinearity that follows, when it keeps the channels
    notes: tuple[str, ...] = ()

    @property
    def kernel_size(self) -> tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])

    @property
    def zero(self) -> list[int]:
        """Kernels whose weights are (numerically) zero: pruned channels, always the same output, drawn grey.
        Scaling such a kernel on its own would blow rounding noise up into a full-contrast pattern."""
        return [int(i) for i in np.flatnonzero(self.peak <= ZERO_REL * float(self.peak.max(initial=0.0)))]

    def describe(self) -> str:
        kh, kw = self.kernel_size
        return msg(f"{len(self.tiles)} kernels of {kh}×{kw} pixels × 3 colours, stride {self.stride[0]}")


def is_pixel_conv(module: nn.Module) -> bool:
    """A 2-D convolution over the three colour channels (no grouping): linear in the pixels it reads."""
    return isinstance(module, nn.Conv2d) and module.in_channels == 3 and module.groups == 1


def pixel_convs(model: LoadedModel) -> list[str]:
    """The convolutions that read the 3 colour channels, in execution order (usually one: the stem)."""
    out = []
    for row in ladder(model, "full"):
        try:
            module = resolve(model.module, row.name)
        except ExplorerError:
            continue
        if is_pixel_conv(module):
            out.append(row.name)
    return out


def layer_after(model: LoadedModel, conv: str) -> str | None:
    """The first layer after `conv`'s nonlinearity that keeps its channels: the activation module, or the container
    whose output it is (timm's ``bn1``, torchvision's ``features.0``). None when no activation follows on a map."""
    rows = ladder(model, "full")
    names = [r.name for r in rows]
    if conv not in names:
        return None
    channels = resolve(model.module, conv).out_channels
    start = names.index(conv)
    for k in range(start + 1, len(rows)):
        row = rows[k]
        module = resolve(model.module, row.name)
        if isinstance(module, STOPS):
            return None  # another weighted layer first: no nonlinearity acts on these channels alone
        if not isinstance(module, ACTIVATIONS):
            continue
        if not row.has_map or row.grid_layout.channels != channels:
            return None
        chosen = row.name
        for parent in rows[k + 1 :]:  # a container that ends with this activation has the same output
            if chosen.rsplit(".", 1)[0] != parent.name or "." not in chosen or parent.out_shape != row.out_shape:
                break
            chosen = parent.name
        return chosen
    return None


def _following_batchnorm(model: LoadedModel, conv: str, channels: int) -> nn.BatchNorm2d | None:
    """The BatchNorm applied to `conv`'s output before any nonlinearity (timm's BatchNormAct2d counts: its own
    activation runs after its normalisation, although its hook fires first)."""
    rows = ladder(model, "full")
    names = [r.name for r in rows]
    passed: list[str] = []  # activations met on the way
    for row in rows[names.index(conv) + 1 :]:
        module = resolve(model.module, row.name)
        if isinstance(module, nn.BatchNorm2d) and module.num_features == channels:
            return module if all(a.startswith(row.name + ".") for a in passed) else None
        if isinstance(module, STOPS):
            return None
        if isinstance(module, ACTIVATIONS):
            passed.append(row.name)
    return None


def enlarge(kernels: np.ndarray, tile: int = TILE) -> np.ndarray:
    """(N, 3, kh, kw) weights → (N, S, S, 3) uint8 tiles: each kernel scaled by its own max |w| (sign-aware, grey =
    0), enlarged by nearest-neighbour repetition so each weight is a square block (S = the largest multiple of the
    kernel side not above `tile`, at least the kernel side)."""
    k = np.asarray(kernels, dtype=np.float32)
    peak = np.abs(k).reshape(len(k), -1).max(axis=1) if len(k) else np.zeros(0, np.float32)
    unit = k / np.where(peak > 0, peak, 1.0)[:, None, None, None]
    rgb = np.clip(0.5 + 0.5 * unit, 0.0, 1.0).transpose(0, 2, 3, 1)  # (N, kh, kw, 3)
    kh, kw = k.shape[2], k.shape[3]
    factor = max(1, tile // max(kh, kw))
    big = rgb.repeat(factor, axis=1).repeat(factor, axis=2)
    return np.round(big * 255).astype(np.uint8)


def kernel_figure(model: LoadedModel, layer: str | None = None, tile: int = TILE) -> KernelFigure:
    """The kernels of `layer` (default: the model's first pixel convolution) as pictures; see the module doc."""
    convs = pixel_convs(model)
    if layer is None:
        if not convs:
            raise KernelError(f"{model.spec} has no convolution over the 3 colour channels to draw.")
        layer = convs[0]
    module = resolve(model.module, layer)
    if not is_pixel_conv(module):
        raise KernelError(
            f"{layer} is not a convolution over the 3 colour channels, so its weights are not a picture of pixels."
        )
    assert isinstance(module, nn.Conv2d)
    w = module.weight.detach().float().cpu().clone()
    notes = []
    std = torch.tensor(model.std, dtype=torch.float32).view(1, 3, 1, 1)
    w = w / std  # a weight on a normalised channel, as a weight on the pixel
    bn = _following_batchnorm(model, layer, module.out_channels)
    if bn is not None and bn.affine:
        sign = torch.sign(bn.weight.detach().float().cpu())
        flipped = int((sign < 0).sum())
        w = w * torch.where(sign == 0, torch.ones_like(sign), sign).view(-1, 1, 1, 1)
        if flipped > 1:
            notes.append(
                msg(
                    f"{flipped} kernels are drawn inverted: the BatchNorm after the convolution has a negative scale "
                    "there, so the opposite pattern raises the unit."
                )
            )
        elif flipped:
            notes.append(
                msg(
                    "1 kernel is drawn inverted: the BatchNorm after the convolution has a negative scale there, so "
                    "the opposite pattern raises the unit."
                )
            )
    weights = w.numpy()
    peak = np.abs(weights).reshape(len(weights), -1).max(axis=1)
    stride = module.stride if isinstance(module.stride, tuple) else (module.stride, module.stride)
    zero = peak <= ZERO_REL * float(peak.max(initial=0.0))
    if zero.any():
        which = ", ".join(str(i) for i in np.flatnonzero(zero))
        notes.append(
            msg(f"Kernels {which} are zero (pruned: the channel's output never changes), drawn flat grey.")
            if zero.sum() > 1
            else msg(f"Kernel {which} is zero (pruned: the channel's output never changes), drawn flat grey.")
        )
    return KernelFigure(
        layer=layer,
        weights=weights,
        tiles=enlarge(np.where(zero[:, None, None, None], 0.0, weights), tile),
        peak=peak.astype(np.float32),
        stride=(int(stride[0]), int(stride[1])),
        after=layer_after(model, layer),
        notes=tuple(notes),
    )


def kernel_sheet(figure: KernelFigure, units: Sequence[int] | None = None, cols: int = 8) -> np.ndarray:
    """The kernels (all, or `units`) in one labelled picture, for downloads: (H, W, 3) uint8."""
    idx = list(units) if units is not None else list(range(len(figure.tiles)))
    tiles = [figure.tiles[i] for i in idx]
    return np.asarray(contact_sheet(tiles, [str(i) for i in idx], cols=min(cols, max(1, len(tiles)))))
