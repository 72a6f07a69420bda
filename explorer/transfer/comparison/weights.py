"""How much fine-tuning moved each block's parameters and BatchNorm statistics, in figures that mean something.

Relative change ‖ΔW‖/‖W‖ mostly tracks 1/RMS(W) under Adam (every parameter moves by about one learning rate per
step whatever its size), so it reads "late layers changed more" for blocks that merely have small weights. So:

- ``rms``: the absolute RMS change of the block's parameters;
- ``per_step``: that RMS divided by the learning rate summed over the steps the block trained (the run's step
  budget, saved in the checkpoint): the fraction of the distance Adam could have moved each parameter. ~1 means
  every step pushed the same way; ~1/√steps is a random walk; comparable across blocks of any scale;
- ``bn_shift`` / ``bn_scale``: BatchNorm running statistics are not weights. RMS over channels of the mean's shift
  in base standard deviations, and of |ln(σ_tuned/σ_base)|.

:func:`hybrid` builds the two models that separate them: tuned weights with the base's BatchNorm statistics, and
base weights with the tuned statistics (private copies; nothing shared is changed).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from explorer.transfer.training.finetune import private_copy

STAT_NAMES = ("running_mean", "running_var")
_BatchNorm = nn.modules.batchnorm._BatchNorm


@dataclass
class BlockChange:
    """Parameter and BatchNorm-statistic change of one block (None where it has none, or a new head)."""

    relative: float | None = None
    rms: float | None = None
    per_step: float | None = None
    bn_shift: float | None = None
    bn_scale: float | None = None
    channels: list[float] = field(default_factory=list)  # relative change per output channel of its last conv/linear
    new_head: bool = False


def _bn_modules(module: nn.Module, name: str) -> list[tuple[str, _BatchNorm]]:
    sub = module.get_submodule(name)
    prefix = f"{name}." if name else ""
    return [
        (prefix + n if n else name, m)
        for n, m in sub.named_modules()
        if isinstance(m, _BatchNorm) and m.running_mean is not None
    ]


def _bn_change(base: nn.Module, tuned: nn.Module, name: str) -> tuple[float | None, float | None]:
    shifts, scales = [], []
    for n, mb in _bn_modules(base, name):
        mt = tuned.get_submodule(n)
        assert isinstance(mt, _BatchNorm)  # same architecture
        assert mb.running_mean is not None and mb.running_var is not None
        assert mt.running_mean is not None and mt.running_var is not None
        sd_b = (mb.running_var.double() + mb.eps).sqrt()
        sd_t = (mt.running_var.double() + mt.eps).sqrt()
        shifts.append(((mt.running_mean.double() - mb.running_mean.double()) / sd_b).pow(2))
        scales.append(torch.log(sd_t / sd_b).pow(2))
    if not shifts:
        return None, None
    return math.sqrt(float(torch.cat(shifts).mean())), math.sqrt(float(torch.cat(scales).mean()))


def _last_weight(base: nn.Module, name: str, order: list[str]) -> str | None:
    inside = [n for n in order if n == name or n.startswith(name + ".")]
    for n in reversed(inside):
        w = getattr(base.get_submodule(n), "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            return n
    return None


def _weight(module: nn.Module, name: str) -> torch.Tensor:
    w = module.get_submodule(name).weight
    assert isinstance(w, torch.Tensor)
    return w


def block_change(
    base: nn.Module, tuned: nn.Module, name: str, order: list[str], lr_sum: float | None = None
) -> BlockChange:
    """The change of block `name` (parameters and BN statistics); `lr_sum` is its step budget when known."""
    pb = dict(base.get_submodule(name).named_parameters())
    pt = dict(tuned.get_submodule(name).named_parameters())
    shift, scale = _bn_change(base, tuned, name)
    if not pb:
        return BlockChange(bn_shift=shift, bn_scale=scale)
    if any(pb[k].shape != pt[k].shape for k in pb):
        return BlockChange(new_head=True)
    sq = sum(float((pt[k].detach().double() - pb[k].detach().double()).pow(2).sum()) for k in pb)
    norm = sum(float(pb[k].detach().double().pow(2).sum()) for k in pb)
    count = sum(p.numel() for p in pb.values())
    rms = math.sqrt(sq / count)
    out = BlockChange(
        relative=math.sqrt(sq / norm) if norm > 0 else None,
        rms=rms,
        bn_shift=shift,
        bn_scale=scale,
        per_step=rms / lr_sum if lr_sum else None,
    )
    last = _last_weight(base, name, order)
    if last is not None:
        wb = _weight(base, last).detach().double().flatten(1)
        wt = _weight(tuned, last).detach().double().flatten(1)
        out.channels = ((wt - wb).norm(dim=1) / wb.norm(dim=1).clamp_min(1e-12)).tolist()
    return out


def has_bn_stats(module: nn.Module) -> bool:
    """Whether the network keeps BatchNorm running statistics (else there is nothing to separate)."""
    return bool(_bn_modules(module, ""))


def hybrid(weights_from: nn.Module, stats_from: nn.Module) -> nn.Module:
    """A private copy of `weights_from` whose BatchNorm running statistics are `stats_from`'s (same architecture)."""
    out = private_copy(weights_from)
    with torch.no_grad():
        for n, m in _bn_modules(out, ""):
            src = stats_from.get_submodule(n)
            for stat in STAT_NAMES:
                getattr(m, stat).copy_(getattr(src, stat))
    return out


def step_budget(metadata: dict[str, object]) -> dict[str, float]:
    """The learning rate summed over a run's steps, per part ('head', 'body'), from its checkpoint; {} if unknown."""
    opt = metadata.get("optimizer")
    if not isinstance(opt, dict):
        return {}
    return {k.removesuffix("_lr_sum"): float(v) for k, v in opt.items() if k.endswith("_lr_sum") and v}
