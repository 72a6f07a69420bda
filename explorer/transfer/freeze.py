"""Freeze points: which parameters a fine-tune leaves alone, their counts, and the code that freezes there.

"Freeze after L" means every module that runs before L's output exists (L included) keeps its weights:
parameters get ``requires_grad=False`` *and* the frozen modules stay in eval mode while the rest trains, so
their BatchNorm running statistics (and dropout) behave exactly as at inference. Order is execution order
(forward hooks), the same order as the ladder, so any ladder row is a valid freeze point except the head.
"""

from __future__ import annotations

import difflib
import types
from dataclasses import asdict, dataclass, field
from typing import Any

from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import execution_order, is_quiet, ladder

FROZEN_ATTR = "_explorer_frozen"  # tuple of frozen module names stored on a module that apply_freeze changed


class FreezeError(ExplorerError):
    """A freeze point that cannot be used (unknown layer, or nothing left to train)."""


@dataclass
class FreezeSummary:
    """Parameter counts for one freeze point, like Keras' model summary (buffers are listed apart)."""

    freeze_after: str | None
    trainable: int
    non_trainable: int
    total: int
    frozen_buffers: int  # BatchNorm running statistics etc. that stay fixed (Keras counts them as non-trainable)
    frozen: list[str] = field(default_factory=list)  # fewest module names that cover the frozen part

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def as_row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "frozen"}


def module_and_size(model: Any) -> tuple[nn.Module, tuple[int, int]]:
    """The network of a LoadedModel (or a bare module) and the input size to trace it at (224 px for a module)."""
    module = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    return module, tuple(getattr(model, "input_size", (224, 224)))  # type: ignore[return-value]


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


def head_name(module: nn.Module, order: list[str]) -> str:
    """The module owning the last parameter to run: the classifier a fine-tune replaces."""
    with_params = [n for n in order if any(True for _ in module.get_submodule(n).parameters(recurse=False))]
    if not with_params:
        raise FreezeError("This model has no parameters to train.")
    return with_params[-1]


def frozen_modules(model: Any, freeze_after: str | None, *, order: list[str] | None = None) -> list[str]:
    """Names of the modules holding parameters or buffers that run at or before `freeze_after`'s output."""
    if freeze_after in (None, "", "none"):
        return []
    module, size = module_and_size(model)
    order = order if order is not None else execution_order(module, size)
    if freeze_after not in order:
        close = difflib.get_close_matches(str(freeze_after), order, n=4, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else " Pick a layer from the ladder."
        raise FreezeError(f"Cannot freeze after {freeze_after!r}: no layer of that name runs in this model.{hint}")
    head = head_name(module, order)
    cut = order.index(freeze_after)
    if cut >= order.index(head):
        raise FreezeError(
            f"Freezing after {freeze_after!r} would leave nothing to train: the classifier {head!r} must stay "
            "trainable; choose an earlier layer, or 'none' to train everything."
        )
    # The layer's own BatchNorm / activation (hidden in the ladder's block view) belongs to it: freeze it too.
    while cut + 1 < order.index(head) and is_quiet(module.get_submodule(order[cut + 1])):
        cut += 1
    return [n for n in order[: cut + 1] if _has_state(module.get_submodule(n))]


def _collapse(module: nn.Module, frozen: set[str]) -> list[str]:
    """The fewest module names whose subtrees hold exactly the frozen modules' state."""
    out: list[str] = []

    def stateful(prefix: str, m: nn.Module) -> list[str]:
        return [f"{prefix}.{n}" if prefix and n else (n or prefix) for n, s in m.named_modules() if _has_state(s)]

    def visit(prefix: str, m: nn.Module) -> None:
        for name, child in m.named_children():
            full = f"{prefix}.{name}" if prefix else name
            inside = stateful(full, child)
            if inside and all(n in frozen for n in inside):
                out.append(full)
            elif any(n in frozen for n in inside):
                visit(full, child)

    visit("", module)
    return out


def _counts(module: nn.Module, frozen: list[str], num_classes: int | None, head: str) -> tuple[int, int, int]:
    frozen_set = set(frozen)
    trainable = non_trainable = buffers = 0
    for name, sub in module.named_modules():
        own = list(sub.parameters(recurse=False))
        n = sum(p.numel() for p in own)
        if name == head and num_classes is not None:  # a fine-tune replaces the head for the new classes
            w = getattr(sub, "weight", None)
            if w is not None and w.dim() >= 2:
                fan_in = int(w[0].numel())
                n = num_classes * fan_in + (num_classes if getattr(sub, "bias", None) is not None else 0)
        if name in frozen_set:
            non_trainable += n
            buffers += sum(b.numel() for b in sub.buffers(recurse=False) if b.is_floating_point())
        else:
            trainable += n
    return trainable, non_trainable, buffers


def freeze_table(model: Any, *, num_classes: int | None = None, points: list[str] | None = None) -> list[FreezeSummary]:
    """A summary for each candidate freeze point (default: every ladder block before the head, and 'none').

    One trace for all rows, so the app can show the whole table at once. `num_classes` counts the head
    as the fine-tune will build it.
    """
    module, size = module_and_size(model)
    order = execution_order(module, size)
    head = head_name(module, order)
    if points is None:
        rows = [r.name for r in ladder(model, "blocks")]
        points = [n for n in rows if order.index(n) < order.index(head)]
    out = [_summary(module, None, [], num_classes, head)]
    for p in points:
        frozen = frozen_modules(module, p, order=order)
        out.append(_summary(module, p, frozen, num_classes, head))
    return out


def _summary(
    module: nn.Module, point: str | None, frozen: list[str], num_classes: int | None, head: str
) -> FreezeSummary:
    trainable, non_trainable, buffers = _counts(module, frozen, num_classes, head)
    return FreezeSummary(
        freeze_after=point,
        trainable=trainable,
        non_trainable=non_trainable,
        total=trainable + non_trainable,
        frozen_buffers=buffers,
        frozen=_collapse(module, set(frozen)),
    )


def freeze_summary(model: Any, freeze_after: str | None, *, num_classes: int | None = None) -> FreezeSummary:
    """Trainable / non-trainable / total parameter counts when freezing after `freeze_after` (None: train all)."""
    module, size = module_and_size(model)
    order = execution_order(module, size)
    frozen = frozen_modules(module, freeze_after, order=order)
    return _summary(module, freeze_after or None, frozen, num_classes, head_name(module, order))


def _new_head_code(module: nn.Module, head: str, num_classes: int | None, var: str) -> str:
    """The line that replaces the classifier for `num_classes` classes ('' when it already has that many)."""
    if num_classes is None:
        return ""
    old = module.get_submodule(head)
    if isinstance(old, nn.Linear):
        if old.out_features == num_classes:
            return ""
        new = f"nn.Linear({old.in_features}, {num_classes})"
    elif isinstance(old, nn.Conv2d):
        if old.out_channels == num_classes:
            return ""
        new = f"nn.Conv2d({old.in_channels}, {num_classes}, kernel_size={old.kernel_size})"
    else:
        return ""
    parent, _, child = head.rpartition(".")
    owner = f"{var}.get_submodule({parent!r})" if parent else var
    target = f"{owner}.{child}" if child.isidentifier() else f"{owner}[{int(child)}]"
    return f"# A new head for your {num_classes} classes (trainable):\n{target} = {new}\n\n"


def freeze_code(model: Any, freeze_after: str | None, *, var: str = "model", num_classes: int | None = None) -> str:
    """Plain PyTorch that freezes `var` after `freeze_after` the way our fine-tune does (BatchNorm included).

    With `num_classes`, the snippet first replaces the classifier for that many classes, and the counts in its
    comment are those of the model with the new head (as `freeze_table(num_classes=...)` shows them).
    """
    module, size = module_and_size(model)
    head = head_name(module, execution_order(module, size))
    s = freeze_summary(model, freeze_after, num_classes=num_classes)
    new_head = _new_head_code(module, head, num_classes, var)
    if not s.frozen:
        return (
            f"import torch\nfrom torch import nn\n\n{new_head}"
            f"# Train every layer: nothing to freeze ({s.total:,} parameters, all trainable).\n"
            f"optimizer = torch.optim.AdamW({var}.parameters(), lr=1e-4)\n"
        )
    names = ",\n".join(f"    {n!r}" for n in s.frozen)
    return f'''import torch
from torch import nn

{new_head}# Freeze everything up to and including {freeze_after!r}:
# {s.trainable:,} trainable, {s.non_trainable:,} non-trainable of {s.total:,} parameters.
FROZEN = [
{names},
]
for name in FROZEN:
    {var}.get_submodule(name).requires_grad_(False)


def train_keeping_frozen_eval(mode: bool = True) -> nn.Module:
    """model.train() that keeps the frozen part in eval mode: its BatchNorm statistics must not move."""
    nn.Module.train({var}, mode)
    for name in FROZEN:
        {var}.get_submodule(name).eval()
    return {var}


{var}.train = train_keeping_frozen_eval  # every later {var}.train() / {var}.eval() goes through it
optimizer = torch.optim.AdamW([p for p in {var}.parameters() if p.requires_grad], lr=1e-3)
'''


def _train_keeping_frozen_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    nn.Module.train(self, mode)
    for name in getattr(self, FROZEN_ATTR, ()):
        self.get_submodule(name).eval()
    return self


def apply_freeze(model: Any, freeze_after: str | None, *, input_size: tuple[int, int] | None = None) -> list[str]:
    """Freeze a model *you own* after `freeze_after`: requires_grad off and eval mode kept for the frozen part.

    Overrides ``train`` on this instance so any later ``.train()`` keeps the frozen modules in eval mode.
    Returns the frozen module names. Never call it on a shared model (it changes the module). `input_size`
    is the size traced for a bare module (default: the LoadedModel's, else 224).
    """
    module, size = module_and_size(model)
    order = execution_order(module, tuple(input_size or size))  # type: ignore[arg-type]
    frozen = frozen_modules(module, freeze_after, order=order)
    covered = _collapse(module, set(frozen))
    for name in covered:
        module.get_submodule(name).requires_grad_(False)
    object.__setattr__(module, FROZEN_ATTR, tuple(covered))
    module.train = types.MethodType(_train_keeping_frozen_eval, module)  # type: ignore[method-assign]
    module.train(module.training)
    return frozen
