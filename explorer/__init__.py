"""Layer Explorer: what every layer of a network has learned, before and after fine-tuning.

The light core (models, ladder, hooks) is imported at once; the engines are imported on first use, so
``import explorer`` stays fast::

    from explorer import load_model, ladder, render, attribute, dataset_examples, objectives as obj
    from explorer.transfer import finetune, compare, FinetuneSettings, freeze_code
"""

from __future__ import annotations

import importlib
from typing import Any

from explorer.errors import ExplorerError, ModelError
from explorer.layers import LayerInfo, capture, forward_until, hook_count, ladder
from explorer.models import DEFAULT_SPEC, LoadedModel, load_model

# name -> module that defines it (imported lazily by __getattr__)
_LAZY = {
    "render": "explorer.featurevis",
    "objectives": "explorer.featurevis.objectives",
    "attribute": "explorer.attribution",
    "channel_attribution": "explorer.attribution",
    "AttributionResult": "explorer.attribution",
    "dataset_examples": "explorer.exemplars",
    "FinetuneSettings": "explorer.transfer",
    "apply_freeze": "explorer.transfer",
    "freeze_code": "explorer.transfer",
    "freeze_table": "explorer.transfer",
    "resolve_data": "explorer.data",
    "demo_dataset": "explorer.data",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'explorer' has no attribute {name!r}")
    mod = importlib.import_module(module)
    value = mod if name == "objectives" else getattr(mod, name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_SPEC",
    "ExplorerError",
    "LayerInfo",
    "LoadedModel",
    "ModelError",
    "capture",
    "forward_until",
    "hook_count",
    "ladder",
    "load_model",
    *_LAZY,
]
