"""The optimiser a fine-tune uses: AdamW parameter groups and the learning-rate schedule (warm-up, then cosine).

Weight decay applies to weight matrices and kernels only: BatchNorm scales and shifts and every bias are left out
(decaying them towards zero changes what the pretrained layers compute, not how complex they are). The new head
and the pretrained layers get their own learning rates. :class:`StepBudget` adds up the learning rate each group
actually used: under Adam every parameter moves by about one learning rate per step, whatever its size, so the sum
is the distance a parameter could travel, and weight change divided by it is comparable across blocks.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

SCHEDULES = ("cosine", "constant")


def param_groups(
    module: nn.Module, head: str, *, lr: float, backbone_lr: float, weight_decay: float
) -> list[dict[str, object]]:
    """AdamW groups: head and body, each split into decayed (≥ 2-D) and undecayed (BN, biases) parameters."""
    head_ids = {id(p) for p in module.get_submodule(head).parameters()}
    groups: dict[tuple[str, bool], list[nn.Parameter]] = {}
    for p in module.parameters():
        if not p.requires_grad:
            continue
        part = "head" if id(p) in head_ids else "body"
        groups.setdefault((part, p.ndim >= 2), []).append(p)
    out = []
    for (part, decay), params in sorted(groups.items()):
        out.append(
            {
                "params": params,
                "lr": lr if part == "head" else backbone_lr,
                "weight_decay": weight_decay if decay else 0.0,
                "part": part,
            }
        )
    return out


def lr_factor(schedule: str, total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate at step k: linear warm-up from 1/warmup, then cosine (or flat)."""
    total = max(1, total_steps)
    warm = max(0, min(warmup_steps, total - 1))

    def factor(k: int) -> float:
        if k < warm:
            return (k + 1) / (warm + 1)
        if schedule == "constant":
            return 1.0
        progress = (k - warm) / max(1, total - warm)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    return factor


@dataclass
class StepBudget:
    """Σ over steps of the learning rate each part (head, body) trained with: the distance Adam could move it."""

    sums: dict[str, float] = field(default_factory=dict)
    steps: int = 0

    def record(self, optimizer: torch.optim.Optimizer) -> None:
        seen: set[str] = set()
        for g in optimizer.param_groups:
            part = str(g.get("part", "body"))
            if part not in seen:
                self.sums[part] = self.sums.get(part, 0.0) + float(g["lr"])
                seen.add(part)
        self.steps += 1

    def as_dict(self) -> dict[str, object]:
        return {"steps": self.steps, **{f"{k}_lr_sum": v for k, v in self.sums.items()}}
