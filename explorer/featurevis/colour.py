"""Lucid's decorrelated colour space, shared by the image parameterizations and the natural-image spectrum: the
optimiser works on decorrelated channels, and `recorrelate` turns them into RGB."""

from __future__ import annotations

import numpy as np
import torch

# Lucid's colour correlation (square root of the ImageNet colour covariance, via SVD), normalised so that the
# largest column has norm 1. decorrelated @ COLOR.T gives RGB.
COLOR_SVD_SQRT = np.asarray([[0.26, 0.09, 0.02], [0.27, 0.00, -0.05], [0.27, -0.09, 0.03]], dtype=np.float32)
COLOR_CORRELATION = COLOR_SVD_SQRT / np.max(np.linalg.norm(COLOR_SVD_SQRT, axis=0))


def recorrelate(x: torch.Tensor) -> torch.Tensor:
    """(N,3,H,W) decorrelated colour → RGB-correlated colour (Lucid's `_linear_decorrelate_color`)."""
    m = torch.as_tensor(COLOR_CORRELATION, device=x.device, dtype=x.dtype)
    return torch.einsum("nchw,dc->ndhw", x, m)
