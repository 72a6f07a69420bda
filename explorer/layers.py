"""Layers: discovery in execution order, the layout of their outputs, and hooks that never outlive their block.

Layers are named by their dotted `named_modules` path (``blocks.3.2``, ``layer3.1.conv2``) and ordered by when
their forward hooks first fire, not by registration order (:func:`ladder`, :func:`execution_order`). Every hook
here is registered inside a context manager that removes it in ``finally``, and fires only for the thread that
registered it, so a model shared by several app sessions can be inspected from two threads at once. Layout
questions — is an output a map, in which layout, how many channels — are answered here (:func:`to_nchw`,
:attr:`LayerInfo.has_map`) and nowhere else.
"""

from __future__ import annotations

import copy
import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError

# Leaves that neither compute features nor change shape: hidden from the compact "blocks" view.
QUIET_TYPES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
    nn.GroupNorm, nn.Flatten,
)  # fmt: skip
_CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)


class LayerError(ExplorerError):
    """A layer name that the model does not have, phrased for the user."""


@dataclass
class LayerInfo:
    """One row of the ladder."""

    name: str
    type: str
    order: int  # position in execution order (0 = first to run)
    out_shape: tuple[int, ...]  # without the batch dimension
    channels: int | None
    params_trainable: int
    params_frozen: int
    stage: int
    depth: int  # nesting depth of the dotted name
    calls: int = 1  # how often the forward ran this module (reused modules > 1)
    is_block: bool = False

    @property
    def params(self) -> int:
        return self.params_trainable + self.params_frozen

    @property
    def spatial(self) -> tuple[int, int] | None:
        return _hw_channels(self.out_shape)[0]

    @property
    def has_map(self) -> bool:
        """Whether the output is a grid a picture can show: (C,H,W) / (H,W,C) larger than 1×1, or tokens (T, D)."""
        if len(self.out_shape) == 3:
            hw = self.spatial
            return hw is not None and hw[0] * hw[1] > 1
        return len(self.out_shape) == 2 and self.out_shape[0] > 1

    def as_row(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "layer": self.name,
            "type": self.type,
            "output": "×".join(str(s) for s in self.out_shape),
            "channels": self.channels,
            "stage": self.stage,
            "trainable": self.params_trainable,
            "frozen": self.params_frozen,
        }


# --------------------------------------------------------------------------- hooks


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
        raise LayerError(f"Layer(s) {', '.join(missing)} did not run in the forward pass.")
    return outs[names[0]] if isinstance(layers, str) else outs


# --------------------------------------------------------------------------- the ladder


def _module_of(model: Any) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _default_input(model: Any, module: nn.Module) -> torch.Tensor:
    size = getattr(model, "input_size", (224, 224))
    try:
        device = next(module.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    return torch.zeros(1, 3, *size, device=device)


def trace(module: nn.Module, x: torch.Tensor) -> list[tuple[str, nn.Module, tuple[int, ...], int]]:
    """Every submodule that runs, in the order its output appears: (name, module, out_shape, calls)."""
    seen: dict[str, list[Any]] = {}
    names = {name: m for name, m in module.named_modules() if name}

    def on_output(name: str, mod: nn.Module, out: Any) -> None:
        if name in seen:
            seen[name][3] += 1
            return
        t = first_tensor(out)
        shape = tuple(t.shape[1:]) if t is not None else ()
        seen[name] = [name, mod, shape, 1]

    with forward_hooks(module, {n: on_output for n in names}), torch.no_grad():
        module(x)
    # A hook fires when a module *finishes*; a parent finishes after its children, which is the order we want
    # for outputs (a block's output comes after its layers' outputs).
    return [tuple(v) for v in seen.values()]  # type: ignore[misc]


def _is_custom_block(m: nn.Module) -> bool:
    """A module with its own forward and sub-layers (a residual block, an encoder layer), not a Sequential."""
    return not isinstance(m, _CONTAINERS) and any(True for _ in m.children())


def _is_stack(m: nn.Module) -> bool:
    """A sequence (of any container class) whose children are all custom blocks: a stage of blocks."""
    children = list(m.children())
    return isinstance(m, _CONTAINERS) and bool(children) and all(_is_custom_block(c) for c in children)


def _own_params(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def is_quiet(m: nn.Module) -> bool:
    """A leaf that neither computes features nor changes shape (activation, norm, dropout, identity)."""
    return isinstance(m, QUIET_TYPES) or type(m).__name__ in ("Permute", "StochasticDepth", "DropPath")


def _hw_channels(shape: tuple[int, ...]) -> tuple[tuple[int, int] | None, int | None]:
    """(H, W) and channels of an output shape; channels-last (H, W, C) is recognised by H == W != C."""
    if len(shape) == 3:
        if shape[0] == shape[1] and shape[1] != shape[2]:
            return (shape[0], shape[1]), shape[2]
        return (shape[1], shape[2]), shape[0]
    if shape:
        return None, shape[-1]
    return None, None


def _block_names(module: nn.Module) -> set[str]:
    """The compact view: stem layers, each block of each stage, and the head.

    Descend from the root through plain containers (Sequential/ModuleList/ModuleDict), through stages (any
    sequence of custom blocks) and through wrappers whose parameters sit mostly in one stage (a ViT encoder);
    everything else is a block. Sequential subclasses of plain layers (Conv2dNormActivation) stay whole.
    """
    blocks: set[str] = set()
    total = {id(m): sum(p.numel() for p in m.parameters()) for m in module.modules()}

    def visit(name: str, m: nn.Module, is_root: bool) -> None:
        children = list(m.named_children())
        descend = is_root or type(m) in _CONTAINERS or _is_stack(m)
        if not descend and children and total[id(m)]:
            stacks = [c for _, c in children if _is_stack(c) and len(list(c.children())) >= 2]
            descend = any(total[id(c)] >= 0.8 * total[id(m)] for c in stacks)
        if not descend or not children:
            if not is_root and not is_quiet(m):
                blocks.add(name)
            return
        for child_name, child in children:
            visit(f"{name}.{child_name}" if name else child_name, child, False)

    visit("", module, True)
    return blocks


def _stages(rows: list[tuple[str, nn.Module, tuple[int, ...], int]], blocks: set[str]) -> list[int]:
    """Stage = how many times the blocks' spatial resolution has dropped so far; non-spatial (head) blocks come
    last. A layer inside a block gets the stage of the block that finishes next."""
    block_rows = [r for r in rows if r[0] in blocks] or rows
    stages_of_blocks: list[int] = []
    stage, last = 0, None
    spatial_seen = False
    for _, _, shape, _ in block_rows:
        size, _ = _hw_channels(shape)
        if size is not None:
            hw = size[0] * size[1]
            if last is not None and hw < last:
                stage += 1
            last = hw if last is None else min(last, hw)
            spatial_seen = True
            stages_of_blocks.append(stage)
        else:
            stages_of_blocks.append(stage + 1 if spatial_seen else stage)
    by_name = {r[0]: st for r, st in zip(block_rows, stages_of_blocks, strict=False)}
    out = []
    for i, r in enumerate(rows):
        if r[0] not in by_name:
            nxt = next((by_name[q[0]] for q in rows[i:] if q[0] in by_name), stages_of_blocks[-1])
            out.append(nxt)
        else:
            out.append(by_name[r[0]])
    return out


def ladder(model: Any, view: str = "blocks", *, x: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every layer in execution order with its output shape, channels, parameters and stage.

    `view="blocks"` (default) keeps stem layers, blocks and head; `view="full"` lists every module that runs.
    `model` is a LoadedModel or a bare nn.Module (then `x` or a 224 px input is used).
    """
    if view not in ("blocks", "full"):
        raise LayerError(f"Unknown ladder view {view!r}: use 'blocks' or 'full'.")
    module = _module_of(model)
    rows = trace(module, x if x is not None else _default_input(model, module))
    block_names = _block_names(module)
    stages = _stages(rows, block_names)
    out: list[LayerInfo] = []
    for order, ((name, mod, shape, calls), stage) in enumerate(zip(rows, stages, strict=False)):
        is_block = name in block_names
        if view == "blocks" and not is_block:
            continue
        if view == "full" and not is_block and any(True for _ in mod.children()) and not _own_params(mod):
            continue  # pure containers add nothing; modules holding weights next to children stay (BatchNormAct2d)
        params = list(mod.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        _, channels = _hw_channels(shape)
        out.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                order=order,
                out_shape=shape,
                channels=channels,
                params_trainable=trainable,
                params_frozen=frozen,
                stage=stage,
                depth=name.count("."),
                calls=calls,
                is_block=is_block,
            )
        )
    return out


def execution_order(module: nn.Module, size: tuple[int, int] = (224, 224)) -> list[str]:
    """Module names in the order their outputs appear (the ladder's order), traced in eval mode on a zero image."""
    if module.training:  # tracing a training module would update BatchNorm statistics: trace a copy
        module = copy.deepcopy(module).eval()
    p = next(module.parameters(), None)
    x = torch.zeros(1, 3, *size, device=p.device if p is not None else "cpu")
    return [row[0] for row in trace(module, x)]


# --------------------------------------------------------------------------- layouts


class LayoutError(ExplorerError):
    """A layer output that has no channels-and-grid form."""


def to_nchw(t: torch.Tensor) -> torch.Tensor:
    """Any layer output as (N, C, H, W): NCHW as is, NHWC (H == W != C) permuted, tokens (N, T, D) to their
    √T×√T grid after dropping up to 8 leading class/register tokens, vectors (N, D) as (N, D, 1, 1)."""
    if t.ndim == 4:
        if t.shape[1] == t.shape[2] and t.shape[3] != t.shape[1]:
            return t.permute(0, 3, 1, 2)
        return t
    if t.ndim == 3:
        n, tokens, d = t.shape
        side = math.isqrt(tokens)
        extra = tokens - side * side
        if extra > 8:  # e.g. (N, C, L) sequence features: treat L as a 1-row grid
            return t.unsqueeze(2)
        return t[:, extra:].reshape(n, side, side, d).permute(0, 3, 1, 2)
    if t.ndim == 2:
        return t[:, :, None, None]
    raise LayoutError(f"Cannot read a layer output of shape {tuple(t.shape)} as channels.")
