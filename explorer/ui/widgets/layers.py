"""Layer pickers shared by the feature-visualization pages (Progression, Layer, Unit): which layers can be shown,
their units, the stage map, the layer a page opens on, the layer named in the URL, and the first convolution's
kernel figure (the picture of a layer that reads the pixels)."""

from __future__ import annotations

import threading
from typing import Any

import streamlit as st

from explorer.featurevis import StageMap, stage_map
from explorer.featurevis.kernels import KernelFigure, kernel_figure, pixel_convs
from explorer.layers import LayerInfo
from explorer.models import LoadedModel
from explorer.ui.messages import localize
from explorer.ui.session import get_ladder, model_key

PER_PAGE = 16  # units per page of the Layer gallery (the Unit page links back to the right page)
LAYER_KEY = "fv_layer"  # session_state: the last layer looked at (pages opened without ?layer=)


MAX_MODELS = 16  # models whose renderable layers are remembered (a class uses one or two)
_RENDERABLE: dict[tuple[Any, ...], tuple[dict[str, LayerInfo], list[str]]] = {}  # insertion order = recency
_RENDERABLE_LOCK = threading.Lock()


def _renderable(model: LoadedModel) -> tuple[dict[str, LayerInfo], list[str]]:
    """(renderable layers by name, block names) of a model, computed once per process and model.

    The ladder comes from `get_ladder` (st.cache_data), which hands every caller its own unpickled copy of the full
    view (257 rows for EfficientNet-Lite0): pages asked for it several times per run. Rows are not modified by
    anyone, so they are shared here; callers get their own dict and list."""
    key = model_key(model)
    with _RENDERABLE_LOCK:
        found = _RENDERABLE.pop(key, None)
        if found is not None:
            _RENDERABLE[key] = found
            return found
    blocks = [r for r in get_ladder(model, "blocks") if r.has_map]
    names = {r.name for r in blocks}
    rows = blocks + [r for r in get_ladder(model, "full") if r.has_map and r.name not in names]
    found = ({r.name: r for r in rows}, [r.name for r in blocks])
    with _RENDERABLE_LOCK:
        _RENDERABLE[key] = found
        while len(_RENDERABLE) > MAX_MODELS:
            del _RENDERABLE[next(iter(_RENDERABLE))]
    return found


def renderable_layers(model: LoadedModel) -> dict[str, LayerInfo]:
    """Layers with a grid output (what can be visualised): the blocks first, then the rest of the full view."""
    return dict(_renderable(model)[0])


def block_names(model: LoadedModel) -> list[str]:
    """The renderable layers of the blocks view, in execution order."""
    return list(_renderable(model)[1])


def channels_of(row: LayerInfo) -> int:
    """Units of a layer as the objectives see them (channels of NCHW/NHWC maps, embedding dimensions of tokens)."""
    return int(row.grid_layout.channels or 0)


@st.cache_data(max_entries=32, show_spinner=False)
def _stage_map(_model: LoadedModel, key: tuple[Any, ...]) -> StageMap:
    del key
    return stage_map(_model)


def get_stage_map(model: LoadedModel) -> StageMap:
    """The five named stages of this model, cached by its fingerprint."""
    return _stage_map(model, model_key(model))


def default_layer(model: LoadedModel, layers: dict[str, LayerInfo]) -> str:
    """The layer a page opens on when neither the link nor the session names one: the block that represents the
    middle stage (patterns), where a first render already shows structure; else the middle block, else the first
    layer. (The first layers are linear in the pixels or close to it: the Layer page explains them separately.)"""
    stages = get_stage_map(model).stages
    if stages and stages[len(stages) // 2].representative in layers:
        return stages[len(stages) // 2].representative
    blocks = [b for b in block_names(model) if b in layers]
    return blocks[len(blocks) // 2] if blocks else next(iter(layers))


@st.cache_data(max_entries=32, show_spinner=False)
def _pixel_convs(_model: LoadedModel, key: tuple[Any, ...]) -> list[str]:
    del key
    return pixel_convs(_model)


def get_pixel_convs(model: LoadedModel) -> list[str]:
    """The convolutions that read the colour channels (the stem), cached by the model's fingerprint."""
    return _pixel_convs(model, model_key(model))


@st.cache_data(max_entries=16, show_spinner=False)
def _kernel_figure(_model: LoadedModel, key: tuple[Any, ...], layer: str) -> KernelFigure:
    del key
    return kernel_figure(_model, layer)


def get_kernel_figure(model: LoadedModel, layer: str) -> KernelFigure | None:
    """The kernel figure of `layer` when it is a convolution over the colour channels, else None (cached)."""
    if layer not in get_pixel_convs(model):
        return None
    return _kernel_figure(model, model_key(model), layer)


def layer_from_url(model: LoadedModel, layers: dict[str, LayerInfo], fallback: str) -> str:
    """The layer in `?layer=` if this model has it (else one error and `fallback`), remembered in the session."""
    wanted = st.query_params.get("layer")
    if wanted is None:
        wanted = st.session_state.get(LAYER_KEY)
        wanted = wanted if wanted in layers else fallback
    elif wanted not in layers:
        st.error(
            f"{model.spec} has no layer {wanted!r} with a spatial output to visualise; showing {fallback} instead. "
            "Pick a layer from the list (the Model page shows them all).",
            icon=":material/error:",
        )
        wanted = fallback
    st.session_state[LAYER_KEY] = wanted
    if st.query_params.get("layer") != wanted:
        st.query_params["layer"] = wanted
    return wanted


def layer_label(row: LayerInfo, n_units: int, stages: StageMap | None = None) -> str:
    """'blocks.3.2 · 80 units · 14×14 · patterns' for pickers."""
    hw = "×".join(str(s) for s in row.spatial) if row.spatial else "no grid"
    hw += " patch tokens" if row.grid_layout.tokens else ""
    stage = stages.stage_of(row.name) if stages else None
    return f"{row.name} · {n_units} units · {hw}" + (f" · {stage}" if stage else "")


def kernel_description(figure: KernelFigure) -> str:
    """'32 kernels of 3×3 pixels × 3 colours, stride 2' in the session's language."""
    return localize(figure.describe())


def kernel_notes(figure: KernelFigure) -> str:
    """A `KernelFigure`'s notes (kernels drawn inverted, kernels that are zero) in the session's language."""
    return " ".join(localize(note) for note in figure.notes)
