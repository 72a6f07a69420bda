"""What a training step costs on this machine, measured: seconds per step and trainable parameters at a freeze point.

Used to tell a student, with their own machine's numbers, what freezing saves: a frozen prefix needs no gradients
(its backward is skipped), so a step is cheaper, and fewer parameters train. Measured on a private copy of the model
with random images of the given size, so nothing shared is touched.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from explorer.layers import fixed_input_size
from explorer.models import LoadedModel, logits_of
from explorer.models.freeze import apply_freeze


@dataclass(frozen=True)
class StepCost:
    """Median seconds of one training step (forward, backward, optimizer) and the parameter counts."""

    freeze_after: str | None
    seconds: float
    trainable: int
    total: int
    batch: int
    size: int


def training_step_cost(
    model: LoadedModel, freeze_after: str | None, *, batch: int = 16, size: int = 64, steps: int = 3
) -> StepCost:
    """Time `steps` training steps (after one warm-up) on a copy of `model` frozen after `freeze_after`."""
    fixed = fixed_input_size(model)
    size = fixed[0] if fixed else size  # a ViT runs only at its own size
    module = copy.deepcopy(model.module).requires_grad_(True)
    apply_freeze(module, freeze_after, input_size=model.input_size)
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g).to(model.device)
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        out = logits_of(module(x))
        loss = out.float().logsumexp(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if model.device.type == "cuda":
            torch.cuda.synchronize(model.device)
        if i:  # the first step warms caches up
            times.append(time.perf_counter() - start)
    times.sort()
    return StepCost(
        freeze_after=freeze_after,
        seconds=times[len(times) // 2],
        trainable=sum(p.numel() for p in params),
        total=sum(p.numel() for p in module.parameters()),
        batch=batch,
        size=size,
    )
