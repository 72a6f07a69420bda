"""How a layer's output becomes features: average-pooled to a small grid for CKA, globally pooled for probes and the
sweep's linear route. Every layout (NCHW, NHWC, a ViT's patch tokens with the class token left out) goes through
`explorer.layers`' layout adapter."""

from __future__ import annotations

import torch
from torch import nn

from explorer.layers import Layout, guess_layout


def pooled_features(t: torch.Tensor, grid: int | None, layout: Layout | None = None) -> torch.Tensor:
    """A block output → (N, features) float32 for CKA: its grid (`explorer.layers` layout: NCHW, NHWC, or a ViT's
    patch tokens, class token left out) average-pooled to grid×grid; vectors as they are. `layout` defaults to the
    one the shape suggests."""
    t = t.detach()
    lay = layout or guess_layout(tuple(t.shape[1:]))
    if lay.kind == "none":
        return t.float().reshape(t.shape[0], -1).cpu()
    g = lay.to_grid(t).float()
    if grid:
        g = nn.functional.adaptive_avg_pool2d(g, (min(grid, g.shape[2]), min(grid, g.shape[3])))
    return g.reshape(g.shape[0], -1).cpu()


def gap_features(t: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """Global-average-pooled features for the probes (N, C): the mean over the grid (patch tokens only)."""
    t = t.detach()
    lay = layout or guess_layout(tuple(t.shape[1:]))
    if lay.kind == "none":
        return t.float().reshape(t.shape[0], -1).cpu()
    return lay.pooled(t).float().cpu()
