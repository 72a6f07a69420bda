"""Layers: discovery in execution order, the layout of their outputs, and hooks that never outlive their block.

- :mod:`~explorer.layers.hooks`: `resolve` a dotted name, `capture` outputs and gradients, `forward_until` a layer;
  every hook inside a context manager that removes it, firing only for the thread that registered it.
- :mod:`~explorer.layers.ladder`: `ladder` (every layer in execution order, containers too), `anatomy` (a model's
  traced shapes and layouts, cached), `layout_of`, `fixed_input_size`, `is_transformer`.
- :mod:`~explorer.layers.layout`: the one layout adapter. Is an output an NCHW map, channels-last (ConvNeXt's MLPs,
  Swin), tokens with a class token (ViT), a vector, or nothing with a spatial form? `Layout.to_grid` gives every
  engine the same ``(N, C, h, w)`` view, and no engine re-derives it.
"""

import torch

from explorer.layers.hooks import (
    Capture,
    LayerError,
    capture,
    first_tensor,
    forward_hooks,
    forward_until,
    hook_count,
    not_run_error,
    resolve,
)
from explorer.layers.ladder import (
    QUIET_TYPES,
    Anatomy,
    InputSizeError,
    LayerInfo,
    anatomy,
    check_input_size,
    execution_order,
    fixed_input_size,
    is_quiet,
    is_transformer,
    ladder,
    layout_of,
    trace,
)
from explorer.layers.layout import MAX_PREFIX, Layout, LayoutError, guess_layout, infer_layouts


def to_nchw(t: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """Any layer output as (N, C, H, W) by its `layout` (from :func:`layout_of`), or by its shape alone."""
    return (layout or guess_layout(tuple(t.shape[1:]))).to_grid(t)


__all__ = [
    "MAX_PREFIX",
    "QUIET_TYPES",
    "Anatomy",
    "Capture",
    "InputSizeError",
    "LayerError",
    "LayerInfo",
    "Layout",
    "LayoutError",
    "anatomy",
    "capture",
    "check_input_size",
    "execution_order",
    "first_tensor",
    "fixed_input_size",
    "forward_hooks",
    "forward_until",
    "guess_layout",
    "hook_count",
    "infer_layouts",
    "is_quiet",
    "is_transformer",
    "ladder",
    "layout_of",
    "not_run_error",
    "resolve",
    "to_nchw",
    "trace",
]
