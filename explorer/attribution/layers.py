"""Which layers an attribution covers: "all" (blocks with a spatial map), "blocks", or names (any module that runs),
with each model's ladder traced once per module object."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import LayerError, LayerInfo, ladder, resolve, trace

_LADDERS: weakref.WeakKeyDictionary[nn.Module, dict[str, list[LayerInfo]]] = weakref.WeakKeyDictionary()


def cached_ladder(model: Any, view: str = "blocks") -> list[LayerInfo]:
    """`explorer.layers.ladder` ('blocks', 'full', or 'traced': every module that runs), once per module object."""
    per = _LADDERS.setdefault(model.module, {})
    if view not in per:
        per[view] = _traced(model) if view == "traced" else ladder(model, view)
    return per[view]


def _traced(model: Any) -> list[LayerInfo]:
    """Every module that runs (containers too), in the order its output appears; counts are left at zero."""
    x = torch.zeros(1, 3, *model.input_size, device=model.device)
    rows = []
    for order, (name, mod, shape, calls) in enumerate(trace(model.module, x)):
        channels = shape[0] if len(shape) == 3 else (shape[-1] if shape else None)
        rows.append(LayerInfo(name, type(mod).__name__, order, shape, channels, 0, 0, 0, name.count("."), calls))
    return rows


def resolve_layers(model: Any, layers: str | Sequence[str] = "all") -> list[LayerInfo]:
    """'all': every block with a spatial map (h·w > 1), in execution order; 'blocks': every block; or names."""
    if isinstance(layers, str) and layers in ("all", "blocks"):
        rows = cached_ladder(model, "blocks")
        if layers == "blocks":
            return list(rows)
        return [r for r in rows if r.spatial is not None and r.spatial[0] * r.spatial[1] > 1]
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ExplorerError("No layers were chosen.")
    known = {r.name: r for r in cached_ladder(model, "blocks")}
    out = []
    for name in dict.fromkeys(names):
        if name not in known:
            resolve(model.module, name)  # raises LayerError for a name the model does not have
            known.update({r.name: r for r in cached_ladder(model, "traced") if r.name not in known})
            if name not in known:
                raise LayerError(f"Layer {name!r} did not run in the forward pass.")
        out.append(known[name])
    return sorted(out, key=lambda r: r.order)
