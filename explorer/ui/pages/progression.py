"""The Progression page: one row per stage (edges → textures → patterns → parts → objects), a few units each.

Each row says which blocks of this network make the stage and shows the first units of its representative block
(the units `python -m explorer atlas` renders, so a cached atlas opens instantly). Rows fill progressively, the
edges first; a stage opens the Layer page and a unit the Unit page, with the settings carried in the link. The edges
row also links to the first convolution's kernels (the Layer page draws them): that layer's picture is its weights.
URL: `?preset=fast&seed=0&per_stage=4[&steps=…&size=…]`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from explorer.cache import png_bytes
from explorer.featurevis import Objective, channel, labelled_rows
from explorer.featurevis.stages import NOTE, Stage, StageMap
from explorer.models import LoadedModel
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, page_intro, stage_name, t
from explorer.ui.links import page_ref
from explorer.ui.messages import localize
from explorer.ui.session import current_model
from explorer.ui.widgets.gallery import (
    Rendered,
    RenderSettings,
    Tile,
    link_params,
    render_tiles,
    safe_filename,
    settings_form,
    settings_from_url,
    suggested_settings,
    zip_download,
)
from explorer.ui.widgets.layers import channels_of, get_pixel_convs, get_stage_map, renderable_layers

PER_STAGE = (2, 4, 6, 8)
DEFAULT_PER_STAGE = 4


def _per_stage_from_url() -> int:
    text = st.query_params.get("per_stage", str(st.session_state.get("prog_per_stage_last", DEFAULT_PER_STAGE)))
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n not in PER_STAGE:
        st.warning(
            t("progression.bad_per_stage", value=repr(text), choices=PER_STAGE, default=DEFAULT_PER_STAGE),
            icon=":material/link_off:",
        )
        n = DEFAULT_PER_STAGE
    st.session_state["prog_per_stage_last"] = n
    if st.query_params.get("per_stage") != str(n):
        st.query_params["per_stage"] = str(n)
    return n


def _on_per_stage() -> None:
    value = st.session_state.get("prog_per_stage")
    if value is not None:
        st.query_params["per_stage"] = str(value)


def _describe_blocks(blocks: list[str]) -> str:
    """'3 blocks: a, b, c' or '5 blocks: a, b … e'."""
    names = ", ".join(blocks) if len(blocks) <= 4 else f"{blocks[0]}, {blocks[1]} … {blocks[-1]}"
    return (
        t("progression.blocks_one", names=names)
        if len(blocks) == 1
        else t("progression.blocks", n=len(blocks), names=names)
    )


def stage_note(stages: StageMap) -> str:
    """How the stages were mapped to this network, in the session's language (`stages.note` is English): the
    mapping's sentence from the catalogue, and a sentence the mapping adds for some networks (transformers) through
    the engine's translations."""
    english = NOTE.format(shown=", ".join(f"{s.name} {s.representative}" for s in stages.stages))
    if not stages.note.startswith(english):
        return localize(stages.note)
    shown = ", ".join(f"{stage_name(s.name)} {s.representative}" for s in stages.stages)
    added = stages.note[len(english) :].strip()
    return t("progression.note", shown=shown) + (" " + localize(added) if added else "")


def render() -> None:
    """The Progression page."""
    st.title(t("progression.title"))
    model = current_model()
    stages = get_stage_map(model)
    layers = renderable_layers(model)
    settings = settings_from_url(suggested_settings(model))
    per_stage = _per_stage_from_url()
    page_intro("progression")
    if not stages.stages:
        st.info(t("layer.no_spatial", spec=model.spec))
        return
    st.session_state["prog_per_stage"] = per_stage
    c = st.columns([3, 2], vertical_alignment="bottom")
    c[0].markdown(t("progression.map", spec=model.spec, note=stage_note(stages)))
    c[1].pills(t("progression.per_stage"), PER_STAGE, key="prog_per_stage", on_change=_on_per_stage)
    settings_form(settings, "prog", model)
    status = st.container()
    layer_page, unit_page = page_ref("layer", "Layer"), page_ref("unit", "Unit")
    stems = get_pixel_convs(model)
    objectives: list[Objective] = []
    captions: list[str] = []
    tiles: list[Tile] = []
    batches: list[list[int]] = []
    rows: list[tuple[str, str, list[int]]] = []
    for k, stage in enumerate(stages.stages):
        layer = stage.representative
        n = min(per_stage, channels_of(layers[layer])) if layer in layers else per_stage
        units = list(range(n))
        with st.container(border=True):
            cols = st.columns([1.6] + [1] * per_stage, gap="small")
            with cols[0]:
                _stage_head(
                    k, stage, units, settings, layer_page, stems[0] if k == 0 and stems and stems[0] in layers else None
                )
            batch = []
            for j, u in enumerate(units):
                tile = Tile(cols[1 + j])
                tile.show(None, t("tiles.waiting"))
                tile.actions.page_link(
                    unit_page,
                    label=t("tiles.unit_link", unit=u),
                    icon=":material/open_in_new:",
                    query_params=link_params(settings, layer=layer, unit=u),
                )
                batch.append(len(objectives))
                objectives.append(channel(layer, u))
                captions.append(t("tiles.unit", unit=u))
                tiles.append(tile)
            batches.append(batch)
            rows.append((stage.name, layer, batch))
    try:
        result = render_tiles(model, objectives, settings, tiles, captions, key="prog", status=status, batches=batches)
    except Exception as exc:
        show_error(exc)
        return
    if not result.complete:
        return
    _downloads(model, settings, result, rows)


def _stage_head(
    k: int, stage: Stage, units: list[int], settings: RenderSettings, layer_page: Any, stem: str | None
) -> None:
    """A stage's row head: its number and name, where it lies in the network, and links to its layer (and, for the
    first stage, to the pixel convolution's kernels)."""
    layer = stage.representative
    st.markdown(f"#### {k + 1}. {stage_name(stage.name).capitalize()}")
    st.caption(
        t(
            "progression.row",
            blocks=_describe_blocks(stage.blocks),
            start=number(stage.depth[0], 2),
            end=number(stage.depth[1], 2),
            layer=layer,
            first=units[0],
            last=units[-1],
        )
    )
    st.page_link(
        layer_page,
        label=t("progression.open_layer", layer=layer),
        icon=":material/grid_view:",
        query_params=link_params(settings, layer=layer, page=1),
    )
    if stem is not None:
        st.page_link(
            layer_page,
            label=t("progression.kernels", layer=stem),
            icon=":material/grid_on:",
            query_params=link_params(settings, layer=stem, page=1),
            help=t("progression.kernels.help"),
        )


def _downloads(
    model: LoadedModel, settings: RenderSettings, result: Rendered, rows: list[tuple[str, str, list[int]]]
) -> None:
    """The finished progression as one labelled sheet (PNG) and as every picture (zip)."""
    sheet = labelled_rows(
        [(f"{stage_name(name)}\n{layer}", [result.images[i] for i in idx]) for name, layer, idx in rows]
    )
    files = {
        f"{safe_filename(layer)}-{u}.png": result.png[i] or b"" for _, layer, idx in rows for u, i in enumerate(idx)
    }
    stem = f"progression-{safe_filename(model.spec)}-{settings.preset}-seed{settings.seed}"
    files[f"{stem}.png"] = png_bytes(np.asarray(sheet))
    c = st.columns(2)
    c[0].download_button(
        t("progression.download_png"),
        files[f"{stem}.png"],
        file_name=f"{stem}.png",
        mime="image/png",
        icon=":material/download:",
        on_click="ignore",
        key="prog_png",
    )
    zip_download(c[1], t("progression.download_zip"), files, f"{stem}.zip", key="prog_zip")
