"""Freeze points: which parameters a fine-tune leaves alone, their counts, and the code that freezes there.

"Freeze after L" means every module that runs before L's output exists (L included) keeps its weights:
parameters get ``requires_grad=False`` *and* the frozen modules stay in eval mode while the rest trains, so
their BatchNorm running statistics (and dropout) behave exactly as at inference. Order is execution order
(forward hooks), the same order as the ladder, so any ladder row is a valid freeze point except the head.
The frozen *parameters* are exactly those the point's output depends on (autograd, :func:`dependent_parameters`):
for a ViT block k that is the patch embedding, class token, position embedding and blocks 0..k (each attention's
``in_proj_weight`` and ``out_proj`` included), never the next block's ``ln_1`` or the final ``encoder.ln``.
"""

from __future__ import annotations

import copy
import difflib
import types
import weakref
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from explorer.errors import ExplorerError
from explorer.layers import execution_order, first_tensor, forward_hooks, is_quiet, ladder

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
    # parameters frozen outside those modules (a ViT's class token and position embedding)
    frozen_parameters: list[str] = field(default_factory=list)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable / self.total if self.total else 0.0

    def as_row(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k not in ("frozen", "frozen_parameters")}


def module_and_size(model: Any) -> tuple[nn.Module, tuple[int, int]]:
    """The network of a LoadedModel (or a bare module) and the input size to trace it at (224 px for a module)."""
    module = model.module if isinstance(getattr(model, "module", None), nn.Module) else model
    h, w = getattr(model, "input_size", (224, 224))
    return module, (int(h), int(w))


def _has_state(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))


def head_name(module: nn.Module, order: list[str]) -> str:
    """The module owning the last parameter to run: the classifier a fine-tune replaces."""
    with_params = [n for n in order if any(True for _ in module.get_submodule(n).parameters(recurse=False))]
    if not with_params:
        raise FreezeError("This model has no parameters to train.")
    return with_params[-1]


def absorbs(module: nn.Module, point: str, name: str) -> bool:
    """Whether the quiet layer `name`, running right after `point`, is the point's own (frozen with it).

    A BatchNorm, activation or dropout that sits beside the point (in the same container, like a stem's conv → bn →
    relu, or inside such a quiet layer, like timm's BatchNormAct2d) belongs to it. A layer inside a block that
    starts after the point (the next ViT block's ``ln_1``) does not, nor does a LayerNorm/GroupNorm (no running
    statistics: it opens what follows, like a ViT's final ``encoder.ln``).
    """
    mine = set(_ancestors(point)) | {point}
    outer = [n for n in _ancestors(name) if n not in mine]
    return _own_kind(module.get_submodule(name)) and all(_own_kind(module.get_submodule(n)) for n in outer)


def _own_kind(sub: nn.Module) -> bool:
    """A quiet layer that may belong to the layer before it: not a LayerNorm-like norm (no running statistics)."""
    return is_quiet(sub) and not isinstance(sub, (nn.LayerNorm, nn.GroupNorm)) and "RMSNorm" not in type(sub).__name__


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cut_position(module: nn.Module, point: str, order: list[str]) -> int:
    """Position in execution order of the frozen prefix's last module: the point, or its own BatchNorm/activation
    right after it (:func:`absorbs`)."""
    head = order.index(head_name(module, order))
    cut = order.index(point)
    while cut + 1 < head and absorbs(module, point, order[cut + 1]):
        cut += 1
    return cut


def _check_point(module: nn.Module, freeze_after: str, order: list[str]) -> int:
    """The cut position of a usable freeze point; FreezeError in one sentence otherwise."""
    if freeze_after not in order:
        close = difflib.get_close_matches(str(freeze_after), order, n=4, cutoff=0.5)
        raise FreezeError(
            f"Cannot freeze after {freeze_after!r}: no layer of that name runs in this model. Did you mean: "
            f"{', '.join(close)}?"
            if close
            else f"Cannot freeze after {freeze_after!r}: no layer of that name runs in this model. Pick a layer from "
            "the ladder."
        )
    head = head_name(module, order)
    if order.index(freeze_after) >= order.index(head):
        raise FreezeError(
            f"Freezing after {freeze_after!r} would leave nothing to train: the classifier {head!r} must stay "
            "trainable; choose an earlier layer, or 'none' to train everything."
        )
    return cut_position(module, freeze_after, order)


def _prefix_run(module: nn.Module, order: list[str], cut: int) -> list[str]:
    """Every module that runs by position `cut`, plus the modules that never run on their own inside one of them
    (a MultiheadAttention's ``out_proj``, whose weights its parent's forward reads)."""
    ran = set(order)
    done = set(order[: cut + 1])
    out = list(order[: cut + 1])
    for name, _ in module.named_modules():
        if not name or name in ran:
            continue
        runner = next((a for a in reversed(_ancestors(name)) if a in ran), None)
        if runner is not None and runner in done:
            out.append(name)
    return out


def frozen_modules(model: Any, freeze_after: str | None, *, order: list[str] | None = None) -> list[str]:
    """Names of the modules holding parameters or buffers that run at or before `freeze_after`'s output (they stay
    in eval mode). Which *parameters* stop training is :func:`frozen_parameters` (it also finds a ViT's class token
    and position embedding, which belong to modules that run on after the point)."""
    if freeze_after in (None, "", "none"):
        return []
    module, size = module_and_size(model)
    order = order if order is not None else execution_order(module, size)
    cut = _check_point(module, str(freeze_after), order)
    return [n for n in _prefix_run(module, order, cut) if _has_state(module.get_submodule(n))]


def _eval_modules(module: nn.Module, freeze_after: str | None, order: list[str]) -> list[str]:
    """Every module of the frozen prefix (stateless ones too: dropout must not drop there)."""
    if freeze_after in (None, "", "none"):
        return []
    return _prefix_run(module, order, _check_point(module, str(freeze_after), order))


def _input_like(module: nn.Module, size: tuple[int, int]) -> torch.Tensor:
    p = next((t for t in module.parameters() if t.is_floating_point()), None)
    return torch.zeros(
        1, 3, *size, device=p.device if p is not None else "cpu", dtype=p.dtype if p is not None else None
    )


# module → (layer, input size) → parameter names. Weak keys: a module that is gone takes its entries with it. The
# names depend on the module's structure, never on its weight values, so a trained copy may keep them.
_DEPENDENCIES: weakref.WeakKeyDictionary[nn.Module, dict[tuple[str, tuple[int, int]], list[str]]] = (
    weakref.WeakKeyDictionary()
)


def dependent_parameters(module: nn.Module, layers: list[str], size: tuple[int, int]) -> dict[str, list[str]]:
    """For each layer, the parameters its output depends on (autograd's graph on one zero image): exactly what
    a freeze there must fix. The module is not changed (its parameters are read through detached aliases)."""
    m = copy.deepcopy(module).eval() if module.training else module
    params = {n: p.detach().requires_grad_(True) for n, p in m.named_parameters()}
    outs: dict[str, torch.Tensor] = {}

    def keep(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is not None and name not in outs:
            outs[name] = t

    with torch.inference_mode(False), torch.enable_grad(), forward_hooks(m, dict.fromkeys(layers, keep)):
        functional_call(m, params, (_input_like(m, size),), strict=False)
    names, tensors = list(params), list(params.values())
    result: dict[str, list[str]] = {}
    for layer in layers:
        out = outs.get(layer)
        if out is None or not out.requires_grad:
            result[layer] = []
            continue
        grads = torch.autograd.grad(out.float().sum(), tensors, allow_unused=True, retain_graph=True)
        result[layer] = [n for n, g in zip(names, grads, strict=True) if g is not None]
    return result


def frozen_parameters(
    model: Any,
    freeze_after: str | None,
    *,
    order: list[str] | None = None,
    input_size: tuple[int, int] | None = None,
) -> list[str]:
    """Names of the parameters a freeze after `freeze_after` fixes: every one the frozen prefix's output depends on
    (blocks 0..k of a ViT with its patch embedding, class token and position embedding; never the next block)."""
    if freeze_after in (None, "", "none"):
        return []
    module, size = module_and_size(model)
    size = tuple(input_size or size)  # type: ignore[assignment]
    order = order if order is not None else execution_order(module, size)
    layer = order[_check_point(module, str(freeze_after), order)]
    known = _DEPENDENCIES.setdefault(module, {})  # a forward and a backward per (module, point): once
    if (layer, size) not in known:
        if len(known) >= 64:
            known.clear()
        known[(layer, size)] = dependent_parameters(module, [layer], size)[layer]
    return list(known[(layer, size)])


def _collapse(module: nn.Module, frozen: set[str], counts: Callable[[nn.Module], bool] | None = None) -> list[str]:
    """The fewest module names whose subtrees hold exactly the frozen modules' state (`counts`: which modules
    matter, default those with parameters or buffers)."""
    out: list[str] = []
    counts = counts or _has_state

    def stateful(prefix: str, m: nn.Module) -> list[str]:
        return [f"{prefix}.{n}" if prefix and n else (n or prefix) for n, s in m.named_modules() if counts(s)]

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


def _cover(module: nn.Module, params: set[str]) -> tuple[list[str], list[str]]:
    """The fewest module names whose parameters are all in `params`, and the parameters left over (held directly
    by a module that also holds trainable ones: a ViT's ``class_token``, ``encoder.pos_embedding``)."""
    mods: list[str] = []
    loose: list[str] = []

    def visit(prefix: str, m: nn.Module) -> None:
        for n, _ in m.named_parameters(recurse=False):
            full = f"{prefix}.{n}" if prefix else n
            if full in params:
                loose.append(full)
        for name, child in m.named_children():
            full = f"{prefix}.{name}" if prefix else name
            inside = [f"{full}.{n}" for n, _ in child.named_parameters()]
            if inside and all(n in params for n in inside):
                mods.append(full)
            elif any(n in params for n in inside):
                visit(full, child)

    visit("", module)
    return mods, loose


def _counts(
    module: nn.Module, frozen: list[str], params: set[str], num_classes: int | None, head: str
) -> tuple[int, int, int]:
    trainable = non_trainable = 0
    for name, sub in module.named_modules():
        own = [(f"{name}.{n}" if name else n, p) for n, p in sub.named_parameters(recurse=False)]
        if name == head and num_classes is not None:  # a fine-tune replaces the head for the new classes
            w = getattr(sub, "weight", None)
            if w is not None and w.dim() >= 2:
                fan_in = int(w[0].numel())
                trainable += num_classes * fan_in + (num_classes if getattr(sub, "bias", None) is not None else 0)
                continue
        for full, p in own:
            if full in params:
                non_trainable += p.numel()
            else:
                trainable += p.numel()
    frozen_set = set(frozen)
    buffers = sum(
        b.numel()
        for name, sub in module.named_modules()
        if name in frozen_set
        for b in sub.buffers(recurse=False)
        if b.is_floating_point()
    )
    return trainable, non_trainable, buffers


def freeze_table(model: Any, *, num_classes: int | None = None, points: list[str] | None = None) -> list[FreezeSummary]:
    """A summary for each candidate freeze point (default: every ladder block before the head, and 'none').

    One trace (and one forward for the parameters each point depends on) for all rows, so the app can show the
    whole table at once. `num_classes` counts the head as the fine-tune will build it.
    """
    module, size = module_and_size(model)
    order = execution_order(module, size)
    head = head_name(module, order)
    if points is None:
        rows = [r.name for r in ladder(model, "blocks")]
        points = [n for n in rows if order.index(n) < order.index(head)]
    layers = {p: order[_check_point(module, p, order)] for p in points}
    deps = dependent_parameters(module, sorted(set(layers.values())), size) if layers else {}
    out = [_summary(module, None, [], set(), num_classes, head)]
    for p in points:
        frozen = frozen_modules(module, p, order=order)
        out.append(_summary(module, p, _eval_set(module, p, order), set(deps[layers[p]]), num_classes, head, frozen))
    return out


def _drops(m: nn.Module) -> bool:
    """A stateless module that behaves differently in training mode (dropout, stochastic depth)."""
    return isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)) or type(
        m
    ).__name__ in ("DropPath", "StochasticDepth")


def _eval_set(module: nn.Module, point: str | None, order: list[str]) -> list[str]:
    """The fewest module names covering the frozen prefix's state and dropout: they stay in eval mode."""
    run = set(_eval_modules(module, point, order))
    keep = {n for n in run if _has_state(module.get_submodule(n)) or _drops(module.get_submodule(n))}
    return _collapse(module, keep, lambda m: _has_state(m) or _drops(m))


def _summary(
    module: nn.Module,
    point: str | None,
    eval_names: list[str],
    params: set[str],
    num_classes: int | None,
    head: str,
    stateful: list[str] | None = None,
) -> FreezeSummary:
    trainable, non_trainable, buffers = _counts(module, stateful or [], params, num_classes, head)
    covered = {f"{m}.{n}" for m in eval_names for n, _ in module.get_submodule(m).named_parameters()}
    return FreezeSummary(
        freeze_after=point,
        trainable=trainable,
        non_trainable=non_trainable,
        total=trainable + non_trainable,
        frozen_buffers=buffers,
        frozen=eval_names,
        frozen_parameters=sorted(params - covered),
    )


def freeze_summary(model: Any, freeze_after: str | None, *, num_classes: int | None = None) -> FreezeSummary:
    """Trainable / non-trainable / total parameter counts when freezing after `freeze_after` (None: train all)."""
    module, size = module_and_size(model)
    order = execution_order(module, size)
    head = head_name(module, order)
    if freeze_after in (None, "", "none"):
        return _summary(module, None, [], set(), num_classes, head)
    params = set(frozen_parameters(module, freeze_after, order=order, input_size=size))
    stateful = frozen_modules(module, freeze_after, order=order)
    return _summary(module, freeze_after, _eval_set(module, freeze_after, order), params, num_classes, head, stateful)


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
    if not s.frozen and not s.frozen_parameters:
        return (
            f"import torch\nfrom torch import nn\n\n{new_head}"
            f"# Train every layer: nothing to freeze ({s.total:,} parameters, all trainable).\n"
            f"optimizer = torch.optim.AdamW({var}.parameters(), lr=1e-4)\n"
        )
    names = ",\n".join(f"    {n!r}" for n in s.frozen)
    loose = ""
    if s.frozen_parameters:
        listed = ",\n".join(f"    {n!r}" for n in s.frozen_parameters)
        loose = (
            "# Parameters held directly by a module that also holds trainable ones (class token, position embedding):\n"
            f"FROZEN_PARAMETERS = [\n{listed},\n]\n"
            f"for name in FROZEN_PARAMETERS:\n    {var}.get_parameter(name).requires_grad_(False)\n"
        )
    return f'''import torch
from torch import nn

{new_head}# Freeze everything up to and including {freeze_after!r}:
# {s.trainable:,} trainable, {s.non_trainable:,} non-trainable of {s.total:,} parameters.
FROZEN = [
{names},
]
for name in FROZEN:
    {var}.get_submodule(name).requires_grad_(False)
{loose}

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
    size = tuple(input_size or size)  # type: ignore[assignment]
    order = execution_order(module, size)
    if freeze_after in (None, "", "none"):
        covered: list[str] = []
    else:
        params = set(frozen_parameters(module, freeze_after, order=order, input_size=size))
        for name, p in module.named_parameters():
            if name in params:
                p.requires_grad_(False)
        covered = _eval_set(module, freeze_after, order)
    object.__setattr__(module, FROZEN_ATTR, tuple(covered))
    module.train = types.MethodType(_train_keeping_frozen_eval, module)  # type: ignore[method-assign]
    module.train(module.training)
    return frozen_modules(module, freeze_after, order=order)
