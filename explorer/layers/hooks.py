"""Hooks that never outlive their block: resolve a layer name, record outputs (and gradients), stop a forward early.

Every hook here is registered inside a context manager that removes it in ``finally``, and fires only for the thread
that registered it, so a model shared by several app sessions can be inspected from two threads at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError, msg

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
HOLDERS = (nn.ModuleList, nn.ModuleDict)  # containers that hold layers but have no forward of their own


class LayerError(ExplorerError):
    """A layer name that the model does not have, phrased for the user."""


def first_tensor(out: Any) -> torch.Tensor | None:
    """The first tensor in a module's output (a tensor, or nested tuples, lists and dicts), None if it has none."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        for o in out:
            t = first_tensor(o)
            if t is not None:
                return t
    if isinstance(out, dict):
        for o in out.values():
            t = first_tensor(o)
            if t is not None:
                return t
    return None


@contextmanager
def forward_hooks(module: nn.Module, targets: dict[str, Callable[[str, nn.Module, Any], None]]) -> Iterator[None]:
    """Register `fn(name, module, output)` on each named submodule for this thread only; always removed."""
    owner = threading.get_ident()
    handles = []
    try:
        for name, fn in targets.items():
            sub = resolve(module, name)

            def hook(mod: nn.Module, _inp: Any, out: Any, _name: str = name, _fn: Any = fn) -> None:
                if threading.get_ident() == owner:
                    _fn(_name, mod, out)

            handles.append(sub.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def hook_count(module: nn.Module) -> int:
    """All hooks registered anywhere in `module` (tests assert this is 0 after every call)."""
    n = 0
    for m in module.modules():
        n += len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
        n += len(getattr(m, "_backward_pre_hooks", {}))
        n += len(getattr(m, "_forward_hooks_with_kwargs", {}))
    return n


def resolve(module: nn.Module, name: str) -> nn.Module:
    """The submodule at a dotted path ('' is the model itself), or a LayerError naming close matches."""
    if name == "":
        return module
    try:
        return module.get_submodule(name)
    except AttributeError:
        names = [n for n, _ in module.named_modules() if n]
        close = [n for n in names if n.startswith(name.rsplit(".", 1)[0])][:6] or names[:6]
        raise LayerError(f"The model has no layer {name!r}; for example: {', '.join(close)}.") from None


def not_run_error(module: nn.Module, names: Sequence[str]) -> LayerError:
    """The error for layers that exist but produced no output: a ModuleList/ModuleDict never runs as a whole."""
    for name in names:
        sub = resolve(module, name)
        if isinstance(sub, HOLDERS):
            kids = [f"{name}.{k}" for k, _ in sub.named_children()]
            example = f"{kids[0]} … {kids[-1]}" if len(kids) > 1 else (kids[0] if kids else msg("one of its layers"))
            return LayerError(
                msg(
                    f"{name} is a {type(sub).__name__}: it holds layers but never runs as one; "
                    f"pick one of them ({example})."
                )
            )
    return LayerError(msg(f"Layer(s) {', '.join(names)} did not run in the forward pass."))


@dataclass
class Capture:
    """Activations (and gradients) captured at named layers during a forward (and backward)."""

    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    gradients: dict[str, torch.Tensor] = field(default_factory=dict)


@contextmanager
def capture(module: nn.Module, layers: Sequence[str], *, grads: bool = False, detach: bool = True) -> Iterator[Capture]:
    """Record the output of each layer (its first call per forward) and, with `grads`, the gradient on it.

    With ``detach=False`` the activations stay in the autograd graph (for objectives that are optimised).
    """
    cap = Capture()

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is None or name in cap.activations:
            return
        # A copy: a later in-place op (ResNet's ReLU(inplace=True) after bn1) would otherwise change the record.
        cap.activations[name] = t.detach().clone() if detach else t.clone()
        if grads and t.requires_grad:

            def save_grad(g: torch.Tensor, _n: str = name) -> None:
                cap.gradients[_n] = g.detach()

            t.register_hook(save_grad)  # a tensor hook: freed with the graph, never left on the module

    with forward_hooks(module, {name: on_output for name in layers}):
        yield cap


class _Stop(Exception):
    """Raised inside a hook to end a forward early."""


def forward_until(module: nn.Module, layers: str | Sequence[str], x: torch.Tensor) -> Any:
    """Run the forward only until every named layer has produced its output.

    Returns that layer's output (a tensor) for one name, or a dict name → output for several. Outputs stay in
    the autograd graph, so objectives on them can be optimised; nothing after the deepest layer is computed.
    """
    names = list(dict.fromkeys([layers] if isinstance(layers, str) else layers))
    outs: dict[str, torch.Tensor] = {}

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is not None and name not in outs:
            # The forward goes on after all but the last layer: copy those so in-place ops cannot change them.
            outs[name] = t if len(outs) + 1 == len(names) else t.clone()
        if len(outs) == len(names):
            raise _Stop

    with forward_hooks(module, {n: on_output for n in names}), suppress(_Stop):
        module(x)
    missing = [n for n in names if n not in outs]
    if missing:
        raise not_run_error(module, missing)
    return outs[names[0]] if isinstance(layers, str) else outs
