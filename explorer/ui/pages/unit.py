"""The Unit page: one unit (a channel of a layer) seen four ways, and the real images that excite it.

Feature visualizations: channel (mean over the map), neuron (the centre position), negative (what it is most
against) and four diversity images (one objective, pushed apart in style; how far apart the layer sees them is
measured under them). Dataset examples: the images of a folder (by default a class-stratified subset of the digits
demo set; the sample photos, the shapes demo, or a folder on the server) whose strongest position excites the unit
most, cropped to that position's receptive field, and which of their pixels drive it (unit attribution).
URL: `?layer=blocks.3.2&unit=17&preset=fast&seed=0[&steps=…&size=…][&data=demo:shapes]`.
"""

from __future__ import annotations

import hashlib
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from explorer.attribution import overlay, unit_attribution
from explorer.cache import cache_root, make_key
from explorer.cache import folder as cache_folder
from explorer.data import ASSETS_DIR, list_images, resolve_data
from explorer.errors import msg
from explorer.exemplars import dataset_examples
from explorer.featurevis import Objective, channel, diverse, negative, neuron
from explorer.featurevis.distance import NEAR_IDENTICAL, feature_distance
from explorer.featurevis.kernels import KernelFigure
from explorer.layers import LayerInfo
from explorer.models import LoadedModel
from explorer.transfer.study import subset_folder
from explorer.ui.errors import show_error
from explorer.ui.i18n import layer_option, number, page_intro, t
from explorer.ui.links import page_ref
from explorer.ui.messages import localize
from explorer.ui.paths import fenced_path
from explorer.ui.progress import progress_callback
from explorer.ui.session import current_model, model_key
from explorer.ui.widgets.atlas import atlas_offer, cache_note
from explorer.ui.widgets.gallery import (
    RenderSettings,
    Tile,
    link_params,
    png_download,
    render_tiles,
    safe_filename,
    settings_form,
    settings_from_url,
    stop_control,
    stopped_key,
    suggested_settings,
    tile_grid,
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
    layer_from_url,
    renderable_layers,
)
from explorer.ui.widgets.queue import turn

K = 8  # dataset examples per unit
SOURCES = {  # the image sources, with their English names (`source_name` gives the session's language)
    "samples": "Sample photos (assets/)",
    "demo:shapes": "Demo: shapes",
    "demo:digits": "Demo: digits",
    "folder": "A folder on the server",
}
KINDS = ["channel", "neuron (centre)", "negative", "diversity 1", "diversity 2", "diversity 3", "diversity 4"]  # files
SUBSET = 200  # images of a demo set scanned for examples: a class-stratified subset (digits in full: ~130 s a layer)
FEW = 50  # fewer images scanned than this: the top examples are too few to mean much
METHODS = {"saliency": "Saliency (gradient)", "ig": "Integrated Gradients (32 steps)"}


def source_name(source: str) -> str:
    names = {
        "samples": t("unit.source.samples"),
        "demo:shapes": t("unit.source.shapes"),
        "demo:digits": t("unit.source.digits"),
        "folder": t("unit.source.folder"),
    }
    return names.get(source, source)


def kind_names() -> list[str]:
    """The seven images' captions (KINDS) in the session's language."""
    diversity = [t("unit.kind.diversity", n=i) for i in range(1, 5)]
    return [t("unit.kind.channel"), t("unit.kind.neuron"), t("unit.kind.negative"), *diversity]


def method_name(method: str) -> str:
    return {"saliency": t("unit.method.saliency"), "ig": t("unit.method.ig")}.get(method, method)


def unit_objectives(layer: str, unit: int) -> list[Objective]:
    """Channel, neuron, negative and 4 diversity objectives for one unit (rendered together in one batch).

    The diversity images maximise `channel + 10 · diversity(layer)` (:func:`explorer.featurevis.diverse`, where the
    weight is measured); how far apart the layer sees them is shown under them."""
    return [channel(layer, unit), neuron(layer, unit), negative(layer, unit), *diverse(channel(layer, unit), layer, 4)]


def _unit_from_url(units: int) -> int:
    """The unit in `?unit=` (one error if this layer lacks it), else the session's last one if it fits, else 0."""
    if "unit" not in st.query_params:
        last = st.session_state.get("fv_unit", 0)
        st.query_params["unit"] = str(last if 0 <= last < units else 0)
    text = st.query_params["unit"]
    try:
        unit = int(text)
    except ValueError:
        unit = -1
    if not 0 <= unit < units:
        st.error(t("unit.bad_unit", units=number(units), last=units - 1, value=repr(text)), icon=":material/error:")
        unit = 0
    st.session_state["fv_unit"] = unit
    if st.query_params.get("unit") != str(unit):
        st.query_params["unit"] = str(unit)
    return unit


def _on_layer() -> None:
    st.query_params["layer"] = st.session_state["unit_layer"]
    st.query_params["unit"] = "0"


def _on_unit() -> None:
    st.query_params["unit"] = str(st.session_state["unit_pick"])


def _on_source() -> None:
    source = st.session_state["unit_data"]
    if source == "folder":
        st.query_params.pop("data", None)
    else:
        st.query_params["data"] = source


# --------------------------------------------------------------------------- feature visualizations


def _visualizations(model: LoadedModel, layer: str, unit: int, settings: RenderSettings) -> None:
    st.subheader(t("unit.responds"))
    status = st.container()
    first = st.columns(4)
    tiles = [Tile(first[i]) for i in range(3)]
    first[3].caption(t("unit.kinds.caption"))
    tiles += tile_grid(4, 4)
    for tile in tiles[:3]:
        tile.show(None, t("tiles.waiting"))
    result = render_tiles(
        model, unit_objectives(layer, unit), settings, tiles, kind_names(), key=f"unit_{layer}_{unit}", status=status
    )
    stem = f"{safe_filename(layer)}-{unit}"
    names = [f"{stem}-{k.split(' ')[0]}{k[-1] if k[-1].isdigit() else ''}.png" for k in KINDS]
    for tile, name, data in zip(tiles, names, result.png, strict=True):
        if data is not None:
            png_download(tile.actions, data, name, key=f"png_{name}")
    _diversity_note(model, layer, result.images[3:])
    if result.complete:
        zip_download(
            st,
            t("unit.zip", unit=unit),
            {name: data or b"" for name, data in zip(names, result.png, strict=True)},
            f"{stem}-{settings.preset}-seed{settings.seed}.zip",
            key="unit_zip",
        )


@st.cache_data(max_entries=64, show_spinner=False)
def _distance(_model: LoadedModel, key: tuple[Any, ...], digest: str, _images: tuple[Any, ...], layer: str) -> float:
    """The four diversity images' mean pairwise feature distance at `layer` (cached by their pixels' digest)."""
    del key, digest
    return feature_distance(_model, list(_images), layer).mean


def _diversity_note(model: LoadedModel, layer: str, images: list[Any]) -> None:
    """Under the diversity row: how different the four images are to the layer, and a warning when they are not."""
    if len(images) < 2 or any(im is None for im in images):
        return
    digest = hashlib.sha256(b"".join(np.ascontiguousarray(im).tobytes() for im in images)).hexdigest()
    try:
        d = _distance(model, model_key(model), digest, tuple(images), layer)
    except Exception as exc:
        show_error(exc)
        return
    st.caption(t("unit.diversity.distance", value=number(d, 2), layer=layer))
    if d < NEAR_IDENTICAL:
        st.warning(
            t("unit.diversity.same", value=number(d, 2), threshold=number(NEAR_IDENTICAL, 2)),
            icon=":material/content_copy:",
        )


def _kernel(figure: KernelFigure, unit: int, settings: RenderSettings) -> None:
    """A unit of a convolution over the colour channels: its kernel is its picture (no render)."""
    st.subheader(t("unit.responds"))
    st.info(t("layer.first_conv.why"), icon=":material/lightbulb:")
    cols = st.columns(4)
    Tile(cols[0]).show(figure.tiles[unit], t("layer.kernel_tile", unit=unit))
    with cols[1].container():
        st.caption(
            t("unit.kernel.caption", describe=kernel_description(figure))
            + (" " + t("unit.kernel.zero") if unit in figure.zero else "")
        )
        if figure.after is not None:
            st.page_link(
                page_ref("unit", "Unit"),
                label=t("unit.kernel.after", unit=unit, after=figure.after),
                icon=":material/open_in_new:",
                query_params=link_params(settings, layer=figure.after, unit=unit),
            )


# --------------------------------------------------------------------------- dataset examples


def _folder_choice() -> tuple[str, Path | None, str]:
    """The chosen image folder (label, path, a note on the subset scanned); None when the user still has to type one.

    A demo set is scanned through a class-stratified subset of `SUBSET` images (the same one every visit: a folder of
    links under the cache's "subsets"), so a layer's examples take seconds, not minutes."""
    wanted = st.query_params.get("data")
    if wanted is not None and (wanted not in SOURCES or wanted == "folder"):
        st.warning(t("unit.bad_data", value=repr(wanted)), icon=":material/link_off:")
        wanted = "samples"
        st.query_params["data"] = wanted
    if wanted is not None:
        st.session_state["unit_data"] = wanted
    st.session_state.setdefault("unit_data", "demo:digits")
    labels = {s: source_name(s) for s in SOURCES}
    source = st.radio(
        t("unit.images"), list(SOURCES), key="unit_data", format_func=labels.get, horizontal=True, on_change=_on_source
    )
    if source == "samples":
        return source_name(source), ASSETS_DIR, ""
    if source == "folder":
        typed = st.text_input(t("unit.folder"), key="unit_folder", placeholder=t("unit.folder.placeholder"))
        if not typed.strip():
            st.info(t("unit.folder.type"), icon=":material/folder:")
            return source_name(source), None, ""
        return typed.strip(), resolve_data(fenced_path(typed, msg("The folder"), "dir")), ""
    with st.spinner(t("unit.preparing", source=source_name(source))):
        root, scanned, n, total = _demo_subset(source, str(cache_root()))
        if scanned != root and not (Path(scanned) / ".complete").exists():  # the cache was cleared since
            _demo_subset.clear()
            root, scanned, n, total = _demo_subset(source, str(cache_root()))
    if scanned == root:
        return source_name(source), Path(root), ""
    return source_name(source), Path(scanned), t("unit.examples.subset", n=number(n), total=number(total))


@st.cache_data(max_entries=8, show_spinner=False)
def _demo_subset(source: str, root_of_cache: str) -> tuple[str, str, int, int]:
    """A demo set's folder, the stratified subset scanned for its examples and their image counts: once per process
    and cache root, not on every run (each call lists the whole set's files)."""
    del root_of_cache  # part of the key only: the subset's links live under the cache root
    root = resolve_data(source)
    scanned = subset_folder(root, SUBSET, 0, cache_folder("subsets"))
    return str(root), str(scanned), len(list_images(scanned)), len(list_images(root))


def _examples(model: LoadedModel, folder: Path, layer: str) -> Any:
    """The layer's dataset examples over `folder` (one cached pass for all its units), with progress and Stop."""
    slot = st.empty()
    left, right = slot.container().columns([6, 1], vertical_alignment="center")
    signature = make_key(model=model.fingerprint, folder=str(folder.resolve()), layer=layer)
    if stop_control(right, "unit_examples", signature):
        left.info(t("unit.stopped"), icon=":material/pause_circle:")
        right.button(
            t("unit.resume"),
            key="unit_examples_resume",
            icon=":material/play_arrow:",
            on_click=lambda: st.session_state.pop(stopped_key("unit_examples"), None),
        )
        return None
    done = _scanned()
    key = (model.fingerprint, str(folder.resolve()), layer, K)
    with turn("examples", left) if key not in done else nullcontext():  # a scan takes its turn; a known hit not
        found = dataset_examples(model, folder, [layer], k=K, progress=progress_callback(left, text=t("unit.scanning")))
    done.add(key)
    slot.empty()
    return found[layer]


@st.cache_resource(show_spinner=False)
def _scanned() -> set[tuple[Any, ...]]:
    """(model, folder, layer, k) scans this process has finished: their results are in the disk cache, so opening
    them again does not queue behind other sessions' heavy jobs (after a restart the first visit queues once)."""
    return set()


def display_maps(maps: torch.Tensor, method: str, smooth: int = 9, percentile: float = 0.99) -> tuple[Any, float]:
    """Attribution maps made readable as overlays: smoothed over `smooth` px (pixel gradients are speckled) and
    put on one scale for the batch whose top is a high percentile, not the single hottest pixel."""
    m = maps.abs() if method == "saliency" else maps
    m = F.avg_pool2d(m[:, None].float(), smooth, stride=1, padding=smooth // 2, count_include_pad=False)[:, 0]
    top = float(torch.quantile(m.abs().flatten()[:: max(1, m.numel() // 1_000_000)], percentile))
    return m, max(top, 1e-12)


GAMMA = 0.5  # display gamma on the map's strength: a tenth of the top shows at a third of the full colour
DIM = 0.55  # the photo under the map: greyscale at this brightness, so the map's colour is what stands out


def saliency_overlays(images: list[Any], maps: torch.Tensor, method: str, shared: bool = True) -> list[Image.Image]:
    """Attribution maps over their images, visible at a glance: each map divided by its scale's top (the batch's
    99th percentile, or the image's own when not `shared`), clipped, raised to `GAMMA` (weak but real evidence is
    not lost in black), drawn with an opacity that grows with the map over a dimmed greyscale of the image.
    `images`: PIL images or (H, W, 3) arrays/tensors in [0, 1]."""
    smoothed, top = display_maps(maps, method)
    tops = [top] * len(smoothed) if shared else [display_maps(m[None], method)[1] for m in maps]
    signed = method != "saliency"
    out = []
    for im, m, scale in zip(images, smoothed, tops, strict=True):
        v = (m / scale).clamp(-1.0, 1.0)
        v = v.sign() * v.abs().pow(GAMMA)
        rgb = np.asarray(im.convert("RGB"), np.float32) / 255.0 if isinstance(im, Image.Image) else np.asarray(im)
        grey = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        base = DIM * np.repeat(grey[..., None], 3, axis=2)
        out.append(overlay(base, v, -1.0 if signed else 0.0, 1.0, mode="signed" if signed else "abs", alpha=0.95))
    return out


@st.cache_data(max_entries=64, show_spinner=False)  # the caller shows the spinner, in the session's language
def _attribution(
    _model: LoadedModel,
    key: tuple[Any, ...],
    stamp: str,
    paths: tuple[str, ...],
    boxes: tuple[Any, ...],
    layer: str,
    unit: int,
    method: str,
    shared: bool,
) -> tuple[list[Image.Image], list[float]]:
    """Unit attribution overlays (one colour scale) with the receptive-field box of each strongest position."""
    del key, stamp
    res = unit_attribution(_model, list(paths), layer, unit, method)
    overlays = saliency_overlays(list(res.images), res.maps, method, shared)
    for im, box in zip(overlays, boxes, strict=True):
        ImageDraw.Draw(im).rectangle(box, outline=(0, 229, 255), width=2)
    return overlays, [float(v) for v in res.values]


def _examples_section(model: LoadedModel, layer: str, unit: int) -> None:
    st.subheader(t("unit.examples"))
    try:
        label, folder, subset = _folder_choice()
        if folder is None:
            return
        ex = _examples(model, folder, layer)
    except Exception as exc:
        show_error(exc)
        return
    if ex is None:
        return
    top = ex.examples(unit)
    if ex.skipped:
        names = ", ".join(f for f, _ in ex.skipped[:3]) + (" …" if len(ex.skipped) > 3 else "")
        st.warning(
            t("unit.skipped", n=number(len(ex.skipped)), total=number(len(ex.files)), names=names),
            icon=":material/warning:",
        )
    size = {"width": ex.rf.size[0], "height": ex.rf.size[1]}
    where = t("unit.where.patch", **size) if ex.rf.kind == "patch" else t("unit.where.rf", **size)
    st.caption(
        t(
            "unit.examples.caption",
            n=len(top),
            used=number(ex.images_used),
            label=label,
            unit=unit,
            where=where,
            height=model.input_size[0],
            width=model.input_size[1],
        )
        + (f" {localize(ex.rf.note)}" if ex.rf.note else "")
        + (f" {subset}" if subset else "")
    )
    if ex.images_used < FEW:
        st.info(t("unit.examples.few", n=number(ex.images_used), few=number(FEW)), icon=":material/info:")
    tiles = tile_grid(len(top), K)
    patches = ex.patches(model, unit, size=128)
    for tile, e, patch in zip(tiles, top, patches, strict=True):
        tile.show(np.asarray(patch), f"{number(e.value, 2)} · {e.path.name}")
    c = st.columns([3, 2], vertical_alignment="bottom")
    method = c[0].radio(
        t("unit.attr"),
        list(METHODS),
        key="unit_attr_method",
        format_func={m: method_name(m) for m in METHODS}.get,
        horizontal=True,
        help=t("unit.attr.help"),
    )
    shared = c[1].toggle(t("unit.attr.shared"), value=True, key="unit_attr_shared", help=t("unit.attr.shared.help"))
    paths = tuple(str(e.path) for e in top)
    stamp = hashlib.sha256("|".join(f"{p}:{Path(p).stat().st_mtime_ns}" for p in paths).encode()).hexdigest()
    try:
        with st.spinner(t("unit.attributing")):
            overlays, values = _attribution(
                model, model_key(model), stamp, paths, tuple(e.box for e in top), layer, unit, method, shared
            )
    except Exception as exc:
        show_error(exc)
        return
    raise_key = "unit.attr.raise_lower" if method == "ig" else "unit.attr.raise"
    smoothing = t("unit.attr.one_scale", n=len(top)) if shared else t("unit.attr.per_image")
    box = t("unit.attr.box_patch") if ex.rf.kind == "patch" else t("unit.attr.box_rf")
    value = t("unit.attr.value")
    st.caption(f"{t(raise_key, method=method_name(method))}{smoothing} {box} {value}")
    tiles = tile_grid(len(overlays), 4)
    for tile, im, v, e in zip(tiles, overlays, values, top, strict=True):
        tile.show(np.asarray(im), f"{number(v, 2)} · {e.path.name}")


# --------------------------------------------------------------------------- the page


def _unit_layers(model: LoadedModel) -> tuple[dict[str, LayerInfo], list[str]]:
    layers = renderable_layers(model)
    return layers, block_names(model) or list(layers)


def render() -> None:
    """The Unit page."""
    st.title(t("unit.title"))
    page_intro("unit")
    model = current_model()
    layers, blocks = _unit_layers(model)
    stages = get_stage_map(model)
    if not layers:
        st.info(t("layer.no_spatial", spec=model.spec))
        return
    settings = settings_from_url(suggested_settings(model))
    fallback = default_layer(model, layers)
    if st.query_params.get("layer", fallback) not in layers:
        st.query_params.pop("unit", None)  # a unit of an unknown layer means nothing: one message is enough
    layer = layer_from_url(model, layers, fallback)
    units = channels_of(layers[layer])
    unit = _unit_from_url(units)
    options = blocks if layer in blocks else [*blocks, layer]
    st.session_state["unit_layer"], st.session_state["unit_pick"] = layer, unit
    c = st.columns([3, 1, 1.2], vertical_alignment="bottom")
    c[0].selectbox(
        t("layer.pick"),
        options,
        key="unit_layer",
        on_change=_on_layer,
        format_func={n: layer_option(layers[n], channels_of(layers[n]), stages.stage_of(n)) for n in options}.get,
    )
    c[1].number_input(t("unit.pick", last=units - 1), 0, units - 1, key="unit_pick", on_change=_on_unit)
    c[2].page_link(
        page_ref("layer", "Layer"),
        label=t("unit.all_units", layer=layer),
        icon=":material/grid_view:",
        query_params=link_params(settings, layer=layer, page=unit // PER_PAGE + 1),
    )
    settings_form(settings, "unit", model)
    figure = get_kernel_figure(model, layer)
    if figure is None:
        atlas_offer(model, layer, units, settings)
        cache_note(model, layer, units, settings)
    try:
        if figure is not None:
            _kernel(figure, unit, settings)
        else:
            _visualizations(model, layer, unit, settings)
    except Exception as exc:
        show_error(exc)
    _examples_section(model, layer, unit)
