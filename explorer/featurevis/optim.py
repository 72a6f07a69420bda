"""Adam and NAdam for image parameters, step for step the same arithmetic as `torch.optim`'s (tested).

Why not `torch.optim`: constructing any torch optimizer imports `torch._dynamo`, which takes 4–8 s on a small
CPU, and the `fast` preset must show its first preview within 2 s of a click. Both updates are elementwise, so
images sharing a parameter tensor stay independent of each other.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from explorer.errors import ExplorerError


class Adam:
    """torch.optim.Adam without weight decay or amsgrad."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8) -> None:  # fmt: skip
        self.params, self.lr, self.betas, self.eps = list(params), lr, betas, eps
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc1, bc2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g.conj(), value=1 - b2)
            denom = (v.sqrt() / math.sqrt(bc2)).add_(self.eps)
            p.addcdiv_(m, denom, value=-self.lr / bc1)


class NAdam:
    """torch.optim.NAdam (momentum decay 4e-3) without weight decay."""

    def __init__(self, params: Sequence[torch.Tensor], lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, momentum_decay: float = 4e-3) -> None:  # fmt: skip
        self.params, self.lr, self.betas, self.eps, self.psi = list(params), lr, betas, eps, momentum_decay
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.t = 0
        self.mu_product = 1.0

    @torch.no_grad()
    def step(self, grads: Sequence[torch.Tensor]) -> None:
        self.t += 1
        b1, b2 = self.betas
        bc2 = 1 - b2**self.t
        mu = b1 * (1.0 - 0.5 * 0.96 ** (self.t * self.psi))
        mu_next = b1 * (1.0 - 0.5 * 0.96 ** ((self.t + 1) * self.psi))
        self.mu_product *= mu
        mu_product_next = self.mu_product * mu_next
        for p, g, m, v in zip(self.params, grads, self.m, self.v, strict=True):
            m.lerp_(g, 1 - b1)
            v.mul_(b2).addcmul_(g, g, value=1 - b2)
            denom = v.div(bc2).sqrt_().add_(self.eps)
            p.addcdiv_(g, denom, value=-self.lr * (1.0 - mu) / (1.0 - self.mu_product))
            p.addcdiv_(m, denom, value=-self.lr * mu_next / (1.0 - mu_product_next))


OPTIMIZERS = {"adam": Adam, "nadam": NAdam}


def make_optimizer(name: str, params: Sequence[torch.Tensor], lr: float) -> Adam | NAdam:
    """The optimiser `name` (adam | nadam) over `params` at learning rate `lr`."""
    try:
        return OPTIMIZERS[name](params, lr)
    except KeyError:
        raise ExplorerError(f"Unknown optimizer {name!r}: use one of {', '.join(OPTIMIZERS)}.") from None
