"""Receptive fields measured with gradients: which input pixels a position of a layer's map can see.

Measured, not derived from kernel sizes, so it holds for any architecture (residual branches, 'same'
padding, depthwise convolutions): the gradient of one map position with respect to the input is exactly zero
outside its receptive field. Positions are then mapped to input boxes by the layer's stride. Outputs are read
through the layer's layout (`explorer.layers.layout_of`), so channels-last maps (Swin) are measured the same way.

A ViT's token is different: attention lets every token of every block see the whole image, so its receptive field
is the image and a box around it would show nothing. For tokens the box is the patch the token sits on, and
`ReceptiveField.note` says so, with the token's *effective* field measured: the share of its input gradient that
falls on its own patch (high in the first blocks, lower as attention mixes the patches).
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError, msg
from explorer.layers import forward_until, layout_of


@dataclass(frozen=True)
class ReceptiveField:
    """A layer's receptive field in input pixels (rows, columns), at the model's input size."""

    layer: str
    size: tuple[int, int]  # height, width of the field in input pixels (may exceed the input)
    stride: tuple[float, float]  # input pixels between neighbouring map positions
    origin: tuple[float, float]  # input-pixel centre (y, x) of map position (0, 0)
    grid: tuple[int, int]  # the layer's map size (h, w)
    input_size: tuple[int, int]  # (H, W)
    kind: str = "measured"  # "measured" (gradient support), "patch" (a token: the patch it covers), "image"
    own_share: float | None = None  # tokens: share of the centre token's input gradient inside its own patch
    note: str = ""  # one sentence saying what the box is, for tokens and vectors

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


def _token_field(
    layer: str, out: torch.Tensor, x: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
) -> ReceptiveField:
    """A token's patch as its box, and the share of the centre token's input gradient that falls on that patch."""
    (h, w), (H, W) = grid, size
    sy, sx = H / h, W / w
    cy, cx = h // 2, w // 2
    (g,) = torch.autograd.grad(out[:, :, cy, cx].sum(), x)
    mass = g.abs().sum(dim=(0, 1))
    total = float(mass.sum())
    top, left = round(cy * sy), round(cx * sx)
    inside = float(mass[top : round((cy + 1) * sy), left : round((cx + 1) * sx)].sum())
    share = inside / total if total > 0 else None
    ph, pw = round(sy), round(sx)
    if share is not None:
        note = msg(
            f"Each token of {layer} sits on one {ph}×{pw} px patch of the input, and the box shows that patch; "
            f"through attention it sees the whole image; {share:.0%} of its input gradient falls on that patch (its "
            "effective receptive field)."
        )
    else:
        note = msg(
            f"Each token of {layer} sits on one {ph}×{pw} px patch of the input, and the box shows that patch; "
            "through attention it sees the whole image (its effective receptive field)."
        )
    return ReceptiveField(layer, (round(sy), round(sx)), (sy, sx), ((sy - 1) / 2, (sx - 1) / 2), grid, size,
                          kind="patch", own_share=share, note=note)  # fmt: skip


def receptive_field(model: Any, layer: str) -> ReceptiveField:
    """Measure `layer`'s receptive field on `model` (a LoadedModel) from the gradient of one map position."""
    per = _CACHE.setdefault(model.module, {})
    key = (layer, tuple(model.input_size))
    if key in per:
        return per[key]
    H, W = model.input_size
    lay = layout_of(model, layer)
    if lay.kind == "none":
        raise ExplorerError(lay.problem(layer))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, H, W, generator=gen).to(model.device).requires_grad_(True)
    with torch.enable_grad():
        out = lay.to_grid(forward_until(model.module, layer, x))
        h, w = out.shape[-2:]
        if h * w == 1:
            note = msg(f"{layer} has no spatial map ({lay.describe()}): each example is the whole image.")
            rf = ReceptiveField(layer, (H, W), (float(H), float(W)), ((H - 1) / 2, (W - 1) / 2), (1, 1), (H, W),
                                kind="image", note=note)  # fmt: skip
            per[key] = rf
            return rf
        if lay.tokens:
            rf = _token_field(layer, out, x, (h, w), (H, W))
            per[key] = rf
            return rf
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
