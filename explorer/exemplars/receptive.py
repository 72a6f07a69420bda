"""Receptive fields measured with gradients: which input pixels a position of a layer's map can see.

Measured, not derived from kernel sizes, so it holds for any architecture (residual branches, 'same'
padding, depthwise convolutions): the gradient of one map position with respect to the input is exactly zero
outside its receptive field. Positions are then mapped to input boxes by the layer's stride.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import forward_until


@dataclass(frozen=True)
class ReceptiveField:
    """A layer's receptive field in input pixels (rows, columns), at the model's input size."""

    layer: str
    size: tuple[int, int]  # height, width of the field in input pixels (may exceed the input)
    stride: tuple[float, float]  # input pixels between neighbouring map positions
    origin: tuple[float, float]  # input-pixel centre (y, x) of map position (0, 0)
    grid: tuple[int, int]  # the layer's map size (h, w)
    input_size: tuple[int, int]  # (H, W)

    def center(self, y: int, x: int) -> tuple[float, float]:
        return self.origin[0] + y * self.stride[0], self.origin[1] + x * self.stride[1]

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) in input pixels of map position (y, x), clipped to the image."""
        cy, cx = self.center(y, x)
        h, w = self.size
        top, left = round(cy - (h - 1) / 2), round(cx - (w - 1) / 2)
        H, W = self.input_size
        return max(0, left), max(0, top), min(W, left + w), min(H, top + h)


_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, tuple[int, int]], ReceptiveField]] = (
    weakref.WeakKeyDictionary()
)


def _extent(mask: torch.Tensor) -> tuple[int, int]:
    idx = mask.nonzero().flatten()
    return int(idx.min()), int(idx.max()) + 1


def receptive_field(model: Any, layer: str) -> ReceptiveField:
    """Measure `layer`'s receptive field on `model` (a LoadedModel) from the gradient of one map position."""
    per = _CACHE.setdefault(model.module, {})
    key = (layer, tuple(model.input_size))
    if key in per:
        return per[key]
    H, W = model.input_size
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=gen).to(model.device).requires_grad_(True)
    with torch.enable_grad():
        out = forward_until(model.module, layer, x)
        if out.dim() < 4:
            rf = ReceptiveField(layer, (H, W), (float(H), float(W)), ((H - 1) / 2, (W - 1) / 2), (1, 1), (H, W))
            per[key] = rf
            return rf
        h, w = out.shape[-2:]
        supports = []
        for y, x_ in ((h // 2, w // 2), (0, 0), (h - 1, w - 1)):  # centre, first and last positions
            (g,) = torch.autograd.grad(out[:, :, y, x_].sum(), x, retain_graph=True)
            supports.append(g.abs().sum(dim=(0, 1)) > 0)
    if not supports[0].any():
        raise ExplorerError(f"Layer {layer} does not depend on the input, so it has no receptive field.")
    origin, size = [], []
    for axis, n, cells in ((1, H, h), (0, W, w)):  # rows: any over columns (dim 1); columns: any over rows
        (lo, hi), (_, hi0), (lo1, _) = (_extent(m.any(dim=axis)) for m in supports)
        s = n / cells
        c = cells // 2
        if lo > 0 and hi < n:  # the centre's field is unclipped: it locates the grid
            origin.append((lo + hi - 1) / 2 - c * s)
            size.append(hi - lo)
        elif hi0 < n and lo1 > 0:  # first and last fields each keep one true edge
            origin.append((hi0 - 1 + lo1 - (cells - 1) * s) / 2)
            size.append(hi0 - lo1 + (cells - 1) * s)
        else:  # wider than twice the image: every box is the whole image
            origin.append((s - 1) / 2)
            size.append(2 * n)
    rf = ReceptiveField(
        layer=layer,
        size=(round(size[0]), round(size[1])),
        stride=(H / h, W / w),
        origin=(origin[0], origin[1]),
        grid=(int(h), int(w)),
        input_size=(H, W),
    )
    per[key] = rf
    return rf
