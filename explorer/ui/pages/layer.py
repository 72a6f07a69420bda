"""The Layer page: a paged gallery of every channel of one layer, rendered a page at a time.

URL: `?layer=blocks.3.2&page=2&preset=fast&seed=0[&steps=…&size=…]`; without a layer it opens on the block that
represents the middle stage. Each tile links to its Unit page; each rendered unit downloads as a PNG, and the whole
layer (every unit rendered so far with these settings) as a zip.

A convolution over the colour channels (the stem) is shown as it is: its kernels as enlarged RGB tiles, each next to
the feature visualization of the same channel after the nonlinearity (`featurevis.kernels`), because maximising a
layer that is linear in the pixels only pushes them to the corners of the colour box.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from explorer.cache import png_bytes
from explorer.featurevis import channel, contact_sheet, lookup
from explorer.featurevis.kernels import KernelFigure, kernel_sheet
from explorer.featurevis.stages import StageMap
from explorer.featurevis.store import cached_mask
from explorer.layers import LayerInfo
from explorer.models import LoadedModel
from explorer.ui.errors import show_error
from explorer.ui.i18n import layer_option, number, page_intro, stage_name, t
from explorer.ui.links import page_ref
from explorer.ui.session import current_model
from explorer.ui.widgets.atlas import atlas_offer, cache_note, whole_network
from explorer.ui.widgets.gallery import (
    RenderSettings,
    Tile,
    link_params,
    png_download,
    render_tiles,
    safe_filename,
    settings_form,
    settings_from_url,
    suggested_settings,
    tile_grid,
    zip_bytes,
    zip_download,
)
from explorer.ui.widgets.layers import (
    PER_PAGE,
    block_names,
    channels_of,
    default_layer,
    get_kernel_figure,
    get_stage_map,
    kernel_description,
    kernel_notes,
    layer_from_url,
    renderable_layers,
)

COLS = 8
PAIRS = 4  # kernel + picture pairs per row on a first convolution's page


# --------------------------------------------------------------------------- downloads


def cached_units(model: LoadedModel, layer: str, n_units: int, settings: RenderSettings) -> list[int]:
    """Units of `layer` whose channel image is in the disk cache for these settings (no file is read)."""
    objs = [channel(layer, u) for u in range(n_units)]
    return [u for u, hit in enumerate(cached_mask(model, objs, settings.resolved(), settings.seed)) if hit]


def layer_zip(model: LoadedModel, layer: str, n_units: int, settings: RenderSettings) -> bytes:
    """A zip of every rendered unit of `layer` (`<layer>-<unit>.png`) and their contact sheet."""
    units = cached_units(model, layer, n_units, settings)
    entries = lookup(model, [channel(layer, u) for u in units], settings.resolved(), settings.seed)
    found = [(u, e) for u, e in zip(units, entries, strict=True) if e is not None]
    files = {f"{safe_filename(layer)}-{u}.png": e.data for u, e in found}
    if found:
        sheet = contact_sheet([e.image() for _, e in found], [str(u) for u, _ in found], cols=min(8, len(found)))
        files[f"{safe_filename(layer)}-sheet.png"] = png_bytes(np.asarray(sheet))
    return zip_bytes(files)


# --------------------------------------------------------------------------- a first convolution


def _render_units(
    model: LoadedModel,
    layer: str,
    shown: list[int],
    tiles: list[Tile],
    settings: RenderSettings,
    captions: list[str],
    **render: Any,
) -> None:
    """Units `shown` of `layer` into `tiles`: each with its link to the Unit page, filled in as it renders, then
    with its PNG. `render` goes to render_tiles (key, status, batches)."""
    unit_page = page_ref("unit", "Unit")
    for tile, u in zip(tiles, shown, strict=True):
        tile.actions.page_link(
            unit_page,
            label=t("tiles.unit_link", unit=u),
            icon=":material/open_in_new:",
            query_params=link_params(settings, layer=layer, unit=u),
        )
    result = render_tiles(model, [channel(layer, u) for u in shown], settings, tiles, captions, **render)
    for tile, u, data in zip(tiles, shown, result.png, strict=True):
        if data is not None:
            png_download(tile.actions, data, f"{safe_filename(layer)}-{u}.png", key=f"png_{layer}_{u}")


def _first_layer(
    model: LoadedModel, figure: KernelFigure, shown: list[int], settings: RenderSettings, status: object
) -> None:
    """The kernels of a convolution over the colour channels, each next to its channel after the nonlinearity."""
    layer, after = figure.layer, figure.after
    st.info(t("layer.first_conv.why"), icon=":material/lightbulb:")
    st.caption(t("layer.kernels.caption", describe=kernel_description(figure), notes=kernel_notes(figure)).rstrip())
    if after is None:
        st.caption(t("layer.kernels.no_after", layer=layer))
        cols = st.columns(COLS)
        for k, u in enumerate(shown):
            Tile(cols[k % COLS]).show(figure.tiles[u], t("layer.kernel_tile", unit=u))
        return
    st.caption(t("layer.kernels.pairs", layer=layer, after=after, settings=settings.describe()))
    tiles: list[Tile] = []
    for start in range(0, len(shown), PAIRS):
        cols = st.columns(2 * PAIRS, gap="small")
        for j, u in enumerate(shown[start : start + PAIRS]):
            Tile(cols[2 * j]).show(figure.tiles[u], t("layer.kernel_tile", unit=u))
            tile = Tile(cols[2 * j + 1])
            tile.show(None, t("tiles.waiting"))
            tiles.append(tile)
    captions = [f"{after} {u}" for u in shown]
    _render_units(model, after, shown, tiles, settings, captions, key=f"layer_{after}_{shown[0]}", status=status)


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
        st.warning(t("layer.bad_page", value=repr(text), pages=pages), icon=":material/link_off:")
        page = 1
    if st.query_params.get("page") != str(page):
        st.query_params["page"] = str(page)
    return page


def _choose_layer(model: LoadedModel, layers: dict[str, LayerInfo], stages: StageMap) -> tuple[str, int, int]:
    """The layer picker and the page number, both kept in the URL: (layer, page, units of the layer)."""
    blocks = block_names(model)
    fallback = default_layer(model, layers)
    if st.query_params.get("layer", fallback) not in layers:
        st.query_params["page"] = "1"  # the page of an unknown layer means nothing: one message is enough
    layer = layer_from_url(model, layers, fallback)
    options = blocks if layer in blocks else [*blocks, layer]
    n_units = {name: channels_of(layers[name]) for name in options}
    st.session_state["layer_pick"] = layer
    labels = {name: layer_option(layers[name], n_units[name], stages.stage_of(name)) for name in options}
    top = st.columns([3, 1], vertical_alignment="bottom")
    top[0].selectbox(
        t("layer.pick"),
        options,
        key="layer_pick",
        on_change=_on_layer,
        format_func=labels.get,
        help=t("layer.pick.help"),
    )
    units = n_units[layer]
    pages = max(1, math.ceil(units / PER_PAGE))
    page = _page_from_url(pages)
    st.session_state["layer_page"] = page
    top[1].number_input(t("layer.page", pages=pages), 1, pages, key="layer_page", on_change=_on_page)
    return layer, page, units


def _unit_tiles(
    model: LoadedModel,
    layer: str,
    page: int,
    units: int,
    shown: list[int],
    settings: RenderSettings,
    status: DeltaGenerator,
    note: DeltaGenerator,
) -> None:
    """The units of this page as tiles that fill in as they render, each with its Unit link and PNG; the zip."""
    tiles = tile_grid(len(shown), COLS, caption=t("tiles.waiting"))
    captions = [t("tiles.unit", unit=u) for u in shown]
    try:
        _render_units(
            model, layer, shown, tiles, settings, captions, key=f"layer_{layer}_{page}", status=status, batches=None
        )
    except Exception as exc:
        show_error(exc)
        return
    finally:
        with note:
            cache_note(model, layer, units, settings)
    done = cached_units(model, layer, units, settings)
    zip_download(
        st,
        t("layer.zip", layer=layer, done=number(len(done)), units=number(units)),
        lambda: layer_zip(model, layer, units, settings),
        f"{safe_filename(layer)}-{settings.preset}-seed{settings.seed}.zip",
        key="layer_zip",
        disabled=not done,
    )


def render() -> None:
    """The Layer page."""
    st.title(t("layer.title"))
    page_intro("layer")
    model = current_model()
    layers = renderable_layers(model)
    stages = get_stage_map(model)
    if not layers:
        st.info(t("layer.no_spatial", spec=model.spec))
        return
    settings = settings_from_url(suggested_settings(model))
    layer, page, units = _choose_layer(model, layers, stages)
    stage = stages.stage_of(layer)
    row = layers[layer]
    figure = get_kernel_figure(model, layer)
    span = t("layer.span", first=(page - 1) * PER_PAGE, last=min(page * PER_PAGE, units) - 1)
    shape = "×".join(map(str, row.out_shape))
    about = (
        t("layer.about_stage", layer=layer, type=row.type, shape=shape, stage=stage_name(stage))
        if stage
        else t("layer.about", layer=layer, type=row.type, shape=shape)
    )
    count = number(units)
    more = (
        t("layer.units_render", units=count, span=span)
        if figure is None
        else t("layer.units_kernels", units=count, span=span)
    )
    st.caption(f"{about} {more}")
    settings_form(settings, "layer", model)
    note = st.container()  # the count is drawn after the render, so it counts this visit's images too
    if figure is None:
        with note:
            atlas_offer(model, layer, units, settings)
    whole_network(model, settings)
    status = st.container()
    shown = list(range((page - 1) * PER_PAGE, min(page * PER_PAGE, units)))
    if figure is None:
        _unit_tiles(model, layer, page, units, shown, settings, status, note)
        return
    try:
        _first_layer(model, figure, shown, settings, status)
    except Exception as exc:
        show_error(exc)
    st.download_button(
        t("layer.kernels_png", layer=layer),
        lambda: png_bytes(kernel_sheet(figure)),
        file_name=f"{safe_filename(layer)}-kernels.png",
        mime="image/png",
        icon=":material/download:",
        on_click="ignore",
        key="layer_kernels",
    )
