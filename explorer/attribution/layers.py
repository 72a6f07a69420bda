"""Which layers an attribution covers: "all" (blocks with a spatial map), "blocks", or names (any module that runs),
with each model's ladder traced once per module object."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any

from torch import nn

from explorer.errors import ExplorerError
from explorer.layers import LayerInfo, ladder, not_run_error, resolve

_LADDERS: weakref.WeakKeyDictionary[nn.Module, dict[str, list[LayerInfo]]] = weakref.WeakKeyDictionary()


def cached_ladder(model: Any, view: str = "blocks") -> list[LayerInfo]:
    """`explorer.layers.ladder` ('blocks', or 'full'/'traced': every module that runs, containers too), once per
    module object."""
    view = "full" if view == "traced" else view
    per = _LADDERS.setdefault(model.module, {})
    if view not in per:
        per[view] = ladder(model, view)
    return per[view]


def resolve_layers(model: Any, layers: str | Sequence[str] = "all") -> list[LayerInfo]:
    """'all': every block with a spatial map (h·w > 1), in execution order; 'blocks': every block; or names."""
    if isinstance(layers, str) and layers in ("all", "blocks"):
        rows = cached_ladder(model, "blocks")
        if layers == "blocks":
            return list(rows)
        return [r for r in rows if r.has_map]
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise ExplorerError("No layers were chosen.")
    known = {r.name: r for r in cached_ladder(model, "blocks")}
    out = []
    for name in dict.fromkeys(names):
        if name not in known:
            resolve(model.module, name)  # raises LayerError for a name the model does not have
            known.update({r.name: r for r in cached_ladder(model, "full") if r.name not in known})
            if name not in known:
                raise not_run_error(model.module, [name])
        out.append(known[name])
    return sorted(out, key=lambda r: r.order)
