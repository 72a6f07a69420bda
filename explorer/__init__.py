"""Layer Explorer: what every layer of a CNN has learned, before and after fine-tuning."""

from explorer.errors import ExplorerError
from explorer.layers import LayerInfo, capture, forward_until, hook_count, ladder
from explorer.models import DEFAULT_SPEC, LoadedModel, ModelError, load_model

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
]
