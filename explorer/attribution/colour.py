"""Attribution maps as pictures: colour scales shared across layers (or models) or per layer, and overlays.

Raw magnitudes are the point (DESIGN §5): one scale across layers shows attribution growing with depth, which
per-map normalisation hides. Pixels blend towards the colour in proportion to their value on the scale, so a
weak map on a shared scale stays faint over the photo.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

# 11 evenly spaced anchors of matplotlib's colormaps (sampled once; no matplotlib dependency at run time).
COLORMAPS: dict[str, list[tuple[int, int, int]]] = {
    "inferno": [(0, 0, 4), (22, 11, 57), (66, 10, 104), (106, 23, 110), (147, 38, 103), (188, 55, 84),
                (221, 81, 58), (243, 120, 25), (252, 165, 10), (246, 215, 70), (252, 255, 164)],
    "viridis": [(68, 1, 84), (72, 36, 117), (65, 68, 135), (53, 95, 141), (42, 120, 142), (33, 145, 140),
                (34, 168, 132), (68, 191, 112), (122, 209, 81), (189, 223, 38), (253, 231, 37)],
    "rdbu": [(5, 48, 97), (32, 101, 171), (67, 147, 195), (144, 196, 221), (209, 229, 240), (247, 246, 246),
             (253, 219, 199), (243, 164, 129), (214, 96, 77), (177, 24, 43), (103, 0, 31)],
}  # fmt: skip
MODES = ("positive", "signed", "abs")
DEFAULT_CMAP = {"positive": "inferno", "abs": "inferno", "signed": "rdbu"}


def _np(values: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().float().cpu().numpy()
    return np.asarray(values, dtype=np.float32)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"Unknown colour mode {mode!r}; use one of {', '.join(MODES)}.")


def scale(maps: Iterable[torch.Tensor | np.ndarray], mode: str = "positive") -> tuple[float, float]:
    """(vmin, vmax) covering every map: [0, max] for 'positive', [0, max |v|] for 'abs', ±max |v| if 'signed'."""
    _check_mode(mode)
    top = 0.0
    for m in maps:
        a = _np(m)
        if a.size:
            top = max(top, float(a.max()) if mode == "positive" else float(np.abs(a).max()))
    top = top if top > 0 else 1e-12
    return (-top, top) if mode == "signed" else (0.0, top)


def colorize(values: torch.Tensor | np.ndarray, vmin: float, vmax: float, cmap: str = "inferno") -> np.ndarray:
    """A 2-D array mapped through a colormap: (h, w, 3) uint8."""
    if cmap not in COLORMAPS:
        raise ValueError(f"Unknown colormap {cmap!r}; use one of {', '.join(COLORMAPS)}.")
    lut = np.asarray(COLORMAPS[cmap], dtype=np.float32)
    t = np.clip((_np(values) - vmin) / max(vmax - vmin, 1e-12), 0.0, 1.0) * (len(lut) - 1)
    lo = np.floor(t).astype(int)
    hi = np.minimum(lo + 1, len(lut) - 1)
    frac = (t - lo)[..., None]
    return np.rint(lut[lo] * (1 - frac) + lut[hi] * frac).astype(np.uint8)


def upsample(values: torch.Tensor | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A (h, w) map resized (bilinear) to `size` = (H, W)."""
    t = torch.as_tensor(_np(values))[None, None]
    if tuple(t.shape[-2:]) != tuple(size):
        t = F.interpolate(t, size=size, mode="bilinear", align_corners=False)
    return t[0, 0].numpy()


def heatmap(
    values: torch.Tensor | np.ndarray,
    vmin: float,
    vmax: float,
    *,
    cmap: str = "inferno",
    size: tuple[int, int] | None = None,
) -> Image.Image:
    """The map alone as an RGB picture, optionally resized to `size` = (H, W)."""
    a = upsample(values, size) if size else _np(values)
    return Image.fromarray(colorize(a, vmin, vmax, cmap), mode="RGB")


def overlay(
    image: Image.Image | np.ndarray | torch.Tensor,
    values: torch.Tensor | np.ndarray,
    vmin: float,
    vmax: float,
    *,
    mode: str = "positive",
    cmap: str | None = None,
    alpha: float = 0.75,
) -> Image.Image:
    """The map over the image: each pixel moves towards its colour by `alpha` × its strength on the scale.

    `image` is a PIL image, or an (H, W, 3) array/tensor with values in [0, 1]; the map is resized to it.
    """
    _check_mode(mode)
    if isinstance(image, Image.Image):
        base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    else:
        base = np.clip(_np(image), 0.0, 1.0)
    h, w = base.shape[:2]
    a = upsample(values, (h, w))
    if mode == "abs":
        a = np.abs(a)
    elif mode == "positive":
        a = np.maximum(a, 0.0)
    colour = colorize(a, vmin, vmax, cmap or DEFAULT_CMAP[mode]).astype(np.float32) / 255.0
    reach = max(abs(vmin), abs(vmax), 1e-12)
    strength = np.clip(np.abs(a) / reach, 0.0, 1.0)[..., None] * alpha
    out = base * (1 - strength) + colour * strength
    return Image.fromarray(np.rint(out * 255).astype(np.uint8), mode="RGB")
