"""Turning layer outputs and gradients into per-image attribution maps and per-channel scores."""

from __future__ import annotations

from collections.abc import Callable

import torch

from explorer.layers import LayerInfo


def as_map(t: torch.Tensor) -> torch.Tensor:
    """A per-image attribution reduced to (N, h, w): (N,h,w) stays, (N,L) → (N,1,L), (N,) → (N,1,1)."""
    if t.dim() == 1:
        return t.view(-1, 1, 1)
    if t.dim() == 2:
        return t.unsqueeze(1)
    return t.reshape(t.shape[0], t.shape[1], -1) if t.dim() > 3 else t


def gradcam_map(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM without the ReLU, exactly as Captum's LayerGradCam: Σ_c mean_hw(∂y/∂A_c) · A_c."""
    if act.dim() > 2:
        w = grad.mean(dim=tuple(range(2, act.dim())), keepdim=True)
        return as_map((w * act).sum(1))
    return as_map((grad * act).sum(1))


def channel_scores(attr: torch.Tensor) -> torch.Tensor:
    """(N, C) per-channel attribution: the attribution summed over space."""
    return attr.sum(dim=tuple(range(2, attr.dim()))) if attr.dim() > 2 else attr


def ablation_groups(info: LayerInfo, grid: int) -> tuple[int, int]:
    """Rows and columns of the ablation patch grid on this layer's map."""
    h, w = info.spatial or (1, 1)
    return min(grid, h), min(grid, w)


def ablation_mask(info: LayerInfo, grid: int) -> torch.Tensor:
    """(1, 1, h, w) feature groups: the layer's map cut into at most `grid` × `grid` patches."""
    h, w = info.spatial or (1, 1)
    gh, gw = ablation_groups(info, grid)
    rows = torch.arange(h) * gh // h
    cols = torch.arange(w) * gw // w
    return (rows[:, None] * gw + cols[None, :]).view(1, 1, h, w)


def target_score(module: torch.nn.Module, tgt: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward returning each image's target logit, for batches that repeat the images (Captum's expansion)."""

    def score(inp: torch.Tensor) -> torch.Tensor:
        out = module(inp)
        picks = tgt.to(out.device).repeat(out.shape[0] // tgt.shape[0])
        return out.gather(1, picks[:, None])[:, 0]

    return score
