"""The Layer page: a paged gallery of every channel of one layer, rendered a page at a time.

URL: `?layer=blocks.3.2&page=2&preset=fast&seed=0[&steps=…&size=…]`. Each tile links to its Unit page; each
rendered unit downloads as a PNG, and the whole layer (every unit rendered so far with these settings) as a zip.
"""

from __future__ import annotations

import math

import numpy as np
import streamlit as st

from explorer.cache import png_bytes
from explorer.featurevis import channel, contact_sheet
from explorer.featurevis.store import cached_mask
from explorer.models import LoadedModel
from explorer.ui.common import current_model, page_ref, show_error
from explorer.ui.widgets.gallery import (
    RenderSettings,
    link_params,
    png_download,
    render_tiles,
    safe_filename,
    settings_form,
    settings_from_url,
    suggested_settings,
    tile_grid,
    zip_bytes,
)
from explorer.ui.widgets.layers import (
    PER_PAGE,
    block_names,
    channels_of,
    get_stage_map,
    layer_from_url,
    layer_label,
    renderable_layers,
)

COLS = 8


# --------------------------------------------------------------------------- downloads


def cached_units(model: LoadedModel, layer: str, n_units: int, settings: RenderSettings) -> list[int]:
    """Units of `layer` whose channel image is in the disk cache for these settings (no file is read)."""
    objs = [channel(layer, u) for u in range(n_units)]
    return [u for u, hit in enumerate(cached_mask(model, objs, settings.resolved(), settings.seed)) if hit]


def layer_zip(model: LoadedModel, layer: str, n_units: int, settings: RenderSettings) -> bytes:
    """A zip of every rendered unit of `layer` (`<layer>-<unit>.png`) and their contact sheet."""
    from explorer.featurevis import lookup

    units = cached_units(model, layer, n_units, settings)
    entries = lookup(model, [channel(layer, u) for u in units], settings.resolved(), settings.seed)
    found = [(u, e) for u, e in zip(units, entries, strict=True) if e is not None]
    files = {f"{safe_filename(layer)}-{u}.png": e.data for u, e in found}
    if found:
        sheet = contact_sheet([e.image() for _, e in found], [str(u) for u, _ in found], cols=min(8, len(found)))
        files[f"{safe_filename(layer)}-sheet.png"] = png_bytes(np.asarray(sheet))
    return zip_bytes(files)


# --------------------------------------------------------------------------- the page


def _on_layer() -> None:
    st.query_params["layer"] = st.session_state["layer_pick"]
    st.query_params["page"] = "1"


def _on_page() -> None:
    st.query_params["page"] = str(st.session_state["layer_page"])


def _page_from_url(pages: int) -> int:
    text = st.query_params.get("page", "1")
    try:
        page = int(text)
    except ValueError:
        page = 0
    if not 1 <= page <= pages:
        st.warning(
            f"page={text!r} is not a page of this layer (1–{pages}); showing page 1.", icon=":material/link_off:"
        )
        page = 1
    if st.query_params.get("page") != str(page):
        st.query_params["page"] = str(page)
    return page


def render() -> None:
    """The Layer page."""
    st.title("Layer")
    model = current_model()
    layers = renderable_layers(model)
    stages = get_stage_map(model)
    blocks = block_names(model)
    if not layers:
        st.info(f"{model.spec} has no layer with a spatial output to visualise.")
        return
    settings = settings_from_url(suggested_settings(model))
    fallback = blocks[0] if blocks else next(iter(layers))
    if st.query_params.get("layer", fallback) not in layers:
        st.query_params["page"] = "1"  # the page of an unknown layer means nothing: one message is enough
    layer = layer_from_url(model, layers, fallback)
    options = blocks if layer in blocks else [*blocks, layer]
    n_units = {name: channels_of(layers[name]) for name in options}
    st.session_state["layer_pick"] = layer
    top = st.columns([3, 1], vertical_alignment="bottom")
    top[0].selectbox(
        "Layer",
        options,
        key="layer_pick",
        on_change=_on_layer,
        format_func=lambda name: layer_label(layers[name], n_units[name], stages),
        help="Blocks of the ladder with a spatial output, in execution order.",
    )
    units = n_units[layer]
    pages = max(1, math.ceil(units / PER_PAGE))
    page = _page_from_url(pages)
    st.session_state["layer_page"] = page
    top[1].number_input(f"Page (of {pages})", 1, pages, key="layer_page", on_change=_on_page)
    stage = stages.stage_of(layer)
    row = layers[layer]
    st.caption(
        f"{layer} ({row.type}, output {'×'.join(map(str, row.out_shape))})"
        + (f" is in the **{stage}** stage of this network." if stage else ".")
        + f" {units} units; units {(page - 1) * PER_PAGE}–{min(page * PER_PAGE, units) - 1} below, rendered as one "
        "batch. Open a unit for its neuron, negative and diversity images and the dataset examples that excite it."
    )
    settings_form(settings, "layer", model)
    status = st.container()
    shown = list(range((page - 1) * PER_PAGE, min(page * PER_PAGE, units)))
    tiles = tile_grid(len(shown), COLS, caption="waiting…")
    unit_page = page_ref("unit", "Unit")
    for tile, u in zip(tiles, shown, strict=True):
        tile.actions.page_link(
            unit_page,
            label=f"Unit {u}",
            icon=":material/open_in_new:",
            query_params=link_params(settings, layer=layer, unit=u),
        )
    try:
        result = render_tiles(
            model,
            [channel(layer, u) for u in shown],
            settings,
            tiles,
            [f"unit {u}" for u in shown],
            key=f"layer_{layer}_{page}",
            status=status,
            batches=None,
        )
    except Exception as exc:
        show_error(exc)
        return
    for tile, u, data in zip(tiles, shown, result.png, strict=True):
        if data is not None:
            png_download(tile.actions, data, f"{safe_filename(layer)}-{u}.png", key=f"png_{layer}_{u}")
    done = cached_units(model, layer, units, settings)
    st.download_button(
        f"Download zip of {layer} ({len(done)} of {units} units rendered with these settings)",
        lambda: layer_zip(model, layer, units, settings),
        file_name=f"{safe_filename(layer)}-{settings.preset}-seed{settings.seed}.zip",
        mime="application/zip",
        icon=":material/folder_zip:",
        on_click="ignore",
        disabled=not done,
        key="layer_zip",
    )
