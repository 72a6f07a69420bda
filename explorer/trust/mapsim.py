"""How alike two attribution maps of one layer are: Spearman rank correlation and SSIM of their absolute values,
both at `COMPARE_SIZE`² (bilinear resampling, antialiased when shrinking), as in Adebayo et al. (2018)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import rankdata
from torch.nn import functional as F

COMPARE_SIZE = 64


def resized(m: torch.Tensor, size: int = COMPARE_SIZE) -> np.ndarray:
    """A map at size × size (bilinear, antialiased when shrinking), float64."""
    t = m.detach().float()[None, None]
    out = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out[0, 0].double().numpy()


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (NaN when one is constant)."""
    ra, rb = rankdata(a.ravel()), rankdata(b.ravel())
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(np.sqrt((ra * ra).sum() * (rb * rb).sum()))
    return float((ra * rb).sum() / denom) if denom > 0 else float("nan")


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of two non-negative maps, each scaled to [0, 1] by its own maximum (skimage, 7-pixel window)."""
    # start-up cost: skimage.metrics takes ~0.3 s to import; the CLI and the app import explorer.trust at start
    from skimage.metrics import structural_similarity

    def unit(m: np.ndarray) -> np.ndarray:
        top = float(m.max())
        return m / top if top > 0 else np.zeros_like(m)

    return float(structural_similarity(unit(a), unit(b), data_range=1.0))


def similarity(original: torch.Tensor, now: torch.Tensor, size: int = COMPARE_SIZE) -> tuple[float, float]:
    """(Spearman, SSIM) of the absolute values of two maps of one layer."""
    a, b = np.abs(resized(original, size)), np.abs(resized(now, size))
    return spearman(a, b), ssim(a, b)
