"""The ladder: every layer in execution order with its output, layout, parameters and stage.

Layers are named by their dotted `named_modules` path (``blocks.3.2``, ``layer3.1.conv2``, and containers such as
``layer3`` whose output is that of their last child) and ordered by when their forward hooks first fire, not by
registration order (:func:`ladder`, :func:`execution_order`). A model's :class:`Anatomy` — its traced shapes and
the layout of every output (:mod:`explorer.layers.layout`), and whether it takes only its own input size — is
traced once per module object and input size.
"""

from __future__ import annotations

import copy
import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers.hooks import CONTAINERS, LayerError, first_tensor, forward_hooks, not_run_error, resolve
from explorer.layers.layout import Layout, guess_layout, infer_layouts, probe_size

# Leaves that neither compute features nor change shape: hidden from the compact "blocks" view.
QUIET_TYPES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid, nn.Sigmoid, nn.Tanh, nn.LeakyReLU,
    nn.ELU, nn.Mish, nn.Identity, nn.Dropout, nn.Dropout2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm,
    nn.GroupNorm, nn.Flatten,
)  # fmt: skip

Row = tuple[str, nn.Module, tuple[int, ...], int]  # (name, module, out_shape, calls)


class InputSizeError(ExplorerError):
    """An input size the model cannot run on (a ViT takes only its own), phrased for the user."""


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
    layout: Layout | None = None  # how to read the output as channels on a grid (None: guessed from the shape)

    @property
    def params(self) -> int:
        return self.params_trainable + self.params_frozen

    @property
    def grid_layout(self) -> Layout:
        """The layout, guessed from the shape when the row was built without one."""
        return self.layout if self.layout is not None else guess_layout(self.out_shape)

    @property
    def spatial(self) -> tuple[int, int] | None:
        """(h, w) of the output's grid (patch grid for tokens), None when it has no spatial form."""
        return self.grid_layout.grid

    @property
    def has_map(self) -> bool:
        """Whether the output is a grid a picture can show: a map or patch tokens larger than 1×1."""
        return self.grid_layout.has_map

    def as_row(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "layer": self.name,
            "type": self.type,
            "output": "×".join(str(s) for s in self.out_shape),
            "layout": self.grid_layout.short(),
            "channels": self.channels,
            "stage": self.stage,
            "trainable": self.params_trainable,
            "frozen": self.params_frozen,
        }


# --------------------------------------------------------------------------- tracing


def _module_of(model: Any) -> nn.Module:
    return model.module if hasattr(model, "module") and isinstance(model.module, nn.Module) else model


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _trace(module: nn.Module, x: torch.Tensor) -> tuple[list[Row], tuple[int, ...]]:
    """`trace`, plus the shape of the model's own output (its first tensor)."""
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
        result = first_tensor(module(x))
    # A hook fires when a module *finishes*; a parent finishes after its children, which is the order we want
    # for outputs (a block's output comes after its layers' outputs).
    root = tuple(result.shape[1:]) if result is not None else ()
    return [(v[0], v[1], v[2], v[3]) for v in seen.values()], root


def trace(module: nn.Module, x: torch.Tensor) -> list[Row]:
    """Every submodule that runs, in the order its output appears: (name, module, out_shape, calls)."""
    return _trace(module, x)[0]


@dataclass
class Anatomy:
    """A model traced at its input size: rows in execution order, each output's layout, and whether the model
    also runs at another size (False: it takes only its own, like a ViT)."""

    rows: list[Row]
    layouts: dict[str, Layout]  # by layer name; "" is the model's own output
    input_size: tuple[int, int]
    flexible: bool
    probe_error: str = ""  # why the second size failed (for messages)


_ANATOMY: weakref.WeakKeyDictionary[nn.Module, dict[tuple[Any, ...], Anatomy]] = weakref.WeakKeyDictionary()
_ANATOMY_LOCK = threading.Lock()


def _structure(module: nn.Module) -> int:
    """A hash of the module tree and its parameter shapes: a changed head or a swapped layer traces again."""
    parts: list[tuple[str, Any]] = [(n, type(m).__name__) for n, m in module.named_modules()]
    parts += [(n, tuple(p.shape)) for n, p in module.named_parameters()]
    return hash(tuple(parts))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0].rstrip(".") if text and text[0] else type(exc).__name__


def anatomy(model: Any, x: torch.Tensor | None = None) -> Anatomy:
    """The traced anatomy of `model` (a LoadedModel or bare module) at its input size, or at `x`'s; cached.

    A model that fails at its own size raises InputSizeError in one sentence. In training mode no second size is
    tried (it would move BatchNorm statistics); layouts then come from the modules.
    """
    module = _module_of(model)
    size = tuple(x.shape[-2:]) if x is not None else tuple(getattr(model, "input_size", (224, 224)))
    key = (size, module.training, _structure(module))
    with _ANATOMY_LOCK:
        hit = _ANATOMY.get(module, {}).get(key)
    if hit is not None:
        return hit
    if x is None:
        x = torch.zeros(1, 3, *size, device=_device(module))
    try:
        rows, root = _trace(module, x)
    except ExplorerError:
        raise
    except Exception as exc:  # noqa: BLE001 - the model's own complaint, made one sentence for the user
        raise InputSizeError(f"The model does not run on a {size[0]}×{size[1]} input ({_first_line(exc)}).") from None
    probe, error = None, ""
    if not module.training:
        big = probe_size(size)
        try:
            probe = {name: shape for name, _, shape, _ in trace(module, x.new_zeros(1, x.shape[1], *big))}
        except Exception as exc:  # noqa: BLE001 - any failure means: the model takes only its own size
            error = _first_line(exc)
    layouts = infer_layouts(rows, probe, size)
    layouts[""] = guess_layout(root)
    ana = Anatomy(rows, layouts, (int(size[0]), int(size[1])), probe is not None, error)
    with _ANATOMY_LOCK:
        _ANATOMY.setdefault(module, {})[key] = ana
    return ana


def layout_of(model: Any, name: str) -> Layout:
    """The layout of one layer's output (any module that runs, containers included), or a LayerError."""
    layouts = anatomy(model).layouts
    if name in layouts:
        return layouts[name]
    module = _module_of(model)
    resolve(module, name)  # an unknown name: LayerError naming close matches
    raise not_run_error(module, [name])


def fixed_input_size(model: Any) -> tuple[int, int] | None:
    """The only input size the model takes (a ViT's, a timm Swin's, MaxViT's), or None when it takes others too."""
    ana = anatomy(model)
    return None if ana.flexible else ana.input_size


def check_input_size(model: Any, size: Sequence[int]) -> None:
    """Raise InputSizeError when a fixed-size model is asked to run at another size."""
    fixed = fixed_input_size(model)
    if fixed is not None and tuple(int(s) for s in size) != fixed:
        raise InputSizeError(
            f"This model takes only {fixed[0]}×{fixed[1]} inputs, so {size[0]}×{size[1]} cannot be used; "
            f"leave the size at {fixed[0]}."
        )


def is_transformer(model: Any) -> bool:
    """A network built on attention (ViT, DeiT, Swin, MaxViT): token or channels-last blocks, or attention modules."""
    module = _module_of(model)
    if any(isinstance(m, nn.MultiheadAttention) or "Attention" in type(m).__name__ for m in module.modules()):
        return True
    return any(lay.kind == "tokens" for lay in anatomy(model).layouts.values())


# --------------------------------------------------------------------------- blocks and stages


def _is_custom_block(m: nn.Module) -> bool:
    """A module with its own forward and sub-layers (a residual block, an encoder layer), not a Sequential."""
    return not isinstance(m, CONTAINERS) and any(True for _ in m.children())


def _is_stack(m: nn.Module) -> bool:
    """A sequence (of any container class) whose children are all custom blocks: a stage of blocks."""
    children = list(m.children())
    return isinstance(m, CONTAINERS) and bool(children) and all(_is_custom_block(c) for c in children)


def is_quiet(m: nn.Module) -> bool:
    """A leaf that neither computes features nor changes shape (activation, norm, dropout, identity)."""
    return isinstance(m, QUIET_TYPES) or type(m).__name__ in ("Permute", "StochasticDepth", "DropPath")


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
        descend = is_root or type(m) in CONTAINERS or _is_stack(m)
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


def _stages(rows: list[Row], blocks: set[str], layouts: dict[str, Layout]) -> list[int]:
    """Stage = how many times the blocks' grid has shrunk so far; blocks without a grid (the head) come last.
    A layer inside a block gets the stage of the block that finishes next."""
    block_rows = [r for r in rows if r[0] in blocks] or rows
    stages_of_blocks: list[int] = []
    stage, last = 0, None
    spatial_seen = False
    for name, _, _, _ in block_rows:
        size = layouts[name].grid
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
        if r[0] in by_name:
            out.append(by_name[r[0]])
            continue
        inside = [by_name[q[0]] for q in rows[:i] if q[0] in by_name and q[0].startswith(r[0] + ".")]
        if inside:  # a container of blocks (layer3): the stage of its last block
            out.append(inside[-1])
        else:  # a layer inside a block: the stage of the block that finishes next
            out.append(next((by_name[q[0]] for q in rows[i:] if q[0] in by_name), stages_of_blocks[-1]))
    return out


def ladder(model: Any, view: str = "blocks", *, x: torch.Tensor | None = None) -> list[LayerInfo]:
    """Every layer in execution order with its output shape, layout, channels, parameters and stage.

    `view="blocks"` (default) keeps stem layers, blocks and head; `view="full"` lists every module that runs,
    containers included (``layer3``, ``features.5``: their output is their last child's). `model` is a LoadedModel
    or a bare nn.Module (then `x` or a 224 px input is used).
    """
    if view not in ("blocks", "full"):
        raise LayerError(f"Unknown ladder view {view!r}: use 'blocks' or 'full'.")
    module = _module_of(model)
    ana = anatomy(model, x)
    rows, layouts = ana.rows, ana.layouts
    block_names = _block_names(module)
    stages = _stages(rows, block_names, layouts)
    out: list[LayerInfo] = []
    for order, ((name, mod, shape, calls), stage) in enumerate(zip(rows, stages, strict=False)):
        is_block = name in block_names
        if view == "blocks" and not is_block:
            continue
        params = list(mod.parameters())
        trainable = sum(p.numel() for p in params if p.requires_grad)
        frozen = sum(p.numel() for p in params if not p.requires_grad)
        out.append(
            LayerInfo(
                name=name,
                type=type(mod).__name__,
                order=order,
                out_shape=shape,
                channels=layouts[name].channels,
                params_trainable=trainable,
                params_frozen=frozen,
                stage=stage,
                depth=name.count("."),
                calls=calls,
                is_block=is_block,
                layout=layouts[name],
            )
        )
    return out


def execution_order(module: nn.Module, size: tuple[int, int] = (224, 224)) -> list[str]:
    """Module names in the order their outputs appear (the ladder's order), traced in eval mode on a zero image."""
    if module.training:  # tracing a training module would update BatchNorm statistics: trace a copy
        module = copy.deepcopy(module).eval()
    x = torch.zeros(1, 3, *size, device=_device(module))
    return [row[0] for row in trace(module, x)]
