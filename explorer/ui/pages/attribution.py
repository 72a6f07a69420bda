"""Attribution page: which parts of an image, at every depth, drive a prediction, and which channels carry it.

One method at a time, its cost shown before it runs; every block with a spatial map from early to late, raw
magnitudes on one colour scale by default (DESIGN §5). The top channels of each layer (gradient × activation)
come with their feature visualizations (fast preset, served from the cache) and link to the Unit page.
The view lives in the URL: ``?method=…&target=…&sample=…&scale=…`` (no target: the predicted class).
Under the maps, two trust panels run on a click (`explorer.trust`): the sanity check (cascading randomization of a
copy of the model: do the maps change when the weights are destroyed?) and "Which layer explains best" (deletion
and insertion curves of each layer's map against random maps on its grid).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np
import streamlit as st
import torch
from PIL import Image, ImageDraw

from explorer import featurevis as fv
from explorer.attribution import (
    COLORMAPS,
    METHODS,
    AttributionResult,
    MethodCost,
    attribute,
    availability,
    method_cost,
    overlay,
    resolve_layers,
)
from explorer.attribution.colour import DEFAULT_CMAP
from explorer.attribution.export import GRID_COLUMNS, fmt, grid_png, magnitudes_csv, magnitudes_json, peak, top_channels
from explorer.cache import Cache
from explorer.data import sample_images
from explorer.featurevis.store import KIND, cache_keys
from explorer.layers import anatomy, layout_of
from explorer.models import LoadedModel
from explorer.trust import (
    BIAS_NOTE,
    DEFAULT_METHODS,
    INPUT_METHODS,
    PASS_BELOW,
    faithfulness,
    sanity_check,
    sanity_cost,
)
from explorer.ui.errors import show_error
from explorer.ui.i18n import language, number, page_intro, percent, t
from explorer.ui.links import page_ref
from explorer.ui.messages import localize
from explorer.ui.progress import progress_callback
from explorer.ui.session import current_model, model_key
from explorer.ui.widgets.figures import top_figure
from explorer.ui.widgets.gallery import PLACEHOLDER_HTML, RenderSettings, link_params
from explorer.ui.widgets.images import SERVED_QUALITY, as_png, image_picker, served
from explorer.ui.widgets.layers import get_kernel_figure, get_pixel_convs
from explorer.ui.widgets.queue import turn
from explorer.ui.widgets.trust_charts import faithfulness_figure, sanity_figure

DEFAULT_METHOD = "gradcam"
AUTO = -1  # target: the predicted class
SCALES = {"shared": "Shared scale", "layer": "Per-layer"}  # values kept in English; shown by _scale_label
AUTO_RUN_MAX = 4.0  # methods costing more forwards than this wait for the Run button
LAYERS_PER_ROW = 3  # in the channels section
FV_PRESET = "fast"
_OPTION_FOR = {"ig": "n_steps", "conductance": "n_steps", "ablation": "grid"}

# --------------------------------------------------------------------------- state: session and URL


def _scale_label(scale: str) -> str:
    return {"shared": t("attribution.scale.shared"), "layer": t("attribution.scale.layer")}.get(scale, scale)


def _sig(x: float, lang: str | None = None) -> str:
    """`fmt` (three significant digits) in the session's language (or `lang`)."""
    return _sig_text(fmt(x), lang or language())


@functools.lru_cache(maxsize=4096)
def _sig_text(text: str, lang: str) -> str:
    """`text` (from `fmt`) written for `lang`; memoized: a page run writes the same few dozen numbers again."""
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{number(float(mantissa), lang=lang)}e{exponent}"
    return number(float(text), lang=lang)


def describe_cost(cost: MethodCost) -> str:
    """`MethodCost.describe()` in the session's language (the same sentence in English)."""
    label = METHODS[cost.method].label
    if not cost.available:
        return t("attribution.cost.unavailable", method=label, reason=localize(cost.reason))
    layers = t("attribution.cost.layers_one") if cost.layers == 1 else t("attribution.cost.layers", n=cost.layers)
    forward = (
        t("attribution.cost.forward_one")
        if cost.forward_calls == 1
        else t("attribution.cost.forward", n=number(cost.forward_calls))
    )
    images = (
        t("attribution.cost.images_one")
        if cost.images_forward == 1
        else t("attribution.cost.images", n=number(cost.images_forward))
    )
    if not cost.backward_calls:
        back = t("attribution.cost.no_backward")
    elif cost.backward_calls == 1:
        back = t("attribution.cost.backward_one")
    else:
        back = t("attribution.cost.backward", n=number(cost.backward_calls))
    return t(
        "attribution.cost.describe",
        method=label,
        layers=layers,
        forward=forward,
        images=images,
        backward=back,
        relative=number(cost.relative, 0),
    )


def _parse_target(text: str | None, model: LoadedModel) -> int | None:
    """A class index from the URL (an index or a class name), AUTO when absent, None when it names nothing."""
    if not text or text == "auto":
        return AUTO
    if text.strip().isdigit():
        return int(text) if int(text) < model.num_classes else None
    lower = [c.lower() for c in model.class_names]
    return lower.index(text.strip().lower()) if text.strip().lower() in lower else None


def _seed_state(model: LoadedModel, samples: dict[str, Any]) -> list[str]:
    """Give each control its value from the URL the first time it is drawn; returns notices about bad values."""
    state, qp, notes = st.session_state, st.query_params, []
    first_sample = "chelsea" if "chelsea" in samples else next(iter(samples), None)
    seeds = {
        "method": ("att_method", lambda v: v if v in METHODS else None, DEFAULT_METHOD),
        "scale": ("att_scale", lambda v: "layer" if v == "per-layer" else v if v in SCALES else None, "shared"),
        "sample": ("att_sample", lambda v: v if v in samples else None, first_sample),
        "target": ("att_target", lambda v: _parse_target(v, model), AUTO),
    }
    for param, (key, parse, default) in seeds.items():
        if key in state:
            continue
        raw = qp.get(param)
        value = parse(raw) if raw is not None else None
        if raw is not None and value is None:
            notes.append(t("attribution.bad_link", param=param, value=repr(raw)))
        state[key] = default if value is None else value
    return notes


def _write_url(**values: Any) -> None:
    """Mirror the view in the URL (None removes a parameter); writes only what changed."""
    qp = st.query_params
    for k, v in values.items():
        if v is None:
            if k in qp:
                del qp[k]
        elif qp.get(k) != str(v):
            qp[k] = str(v)


# --------------------------------------------------------------------------- cached computations


class _Store:
    """A small thread-safe LRU of attribution results shared by every session (results are never mutated)."""

    def __init__(self, size: int) -> None:
        self.size, self.items, self.lock = size, OrderedDict(), threading.Lock()

    def get(self, key: tuple[Any, ...]) -> Any:
        with self.lock:
            if key in self.items:
                self.items.move_to_end(key)
            return self.items.get(key)

    def put(self, key: tuple[Any, ...], value: Any) -> None:
        with self.lock:
            self.items[key] = value
            while len(self.items) > self.size:
                self.items.popitem(last=False)


@st.cache_resource(show_spinner=False)
def _store() -> _Store:
    return _Store(48)


@st.cache_resource(show_spinner=False)
def _memo() -> _Store:
    """What every run of the page would otherwise make again from the same inputs, shared by the sessions: the
    top-5 figure, the token layers, the sanity check's cost (small objects, never mutated)."""
    return _Store(256)


@st.cache_resource(show_spinner=False)
def _tiles() -> _Store:
    """PNG bytes of the channel pictures (cached renders and first-layer kernels) by model and channel, so a rerun
    neither reads the featurevis disk cache nor hashes pixels again (misses are not kept: a later render fills them).
    """
    return _Store(512)


@st.cache_data(max_entries=256, show_spinner=False)
def _predict(_model: LoadedModel, key: tuple[Any, ...], digest: str, _image: Any) -> list[tuple[int, float]]:
    """Top-5 (class index, probability), cached by model and image content (class names can repeat)."""
    del key, digest
    with torch.no_grad():
        probs = _model.logits(_model.preprocess(_image)).float().softmax(-1)[0].cpu()
    top = probs.topk(min(5, probs.numel()))
    return list(zip(top.indices.tolist(), top.values.tolist(), strict=True))


@st.cache_data(max_entries=32, show_spinner=False)
def _available(_model: LoadedModel, key: tuple[Any, ...]) -> dict[str, str | None]:
    del key
    return availability(_model)


def _availability(model: LoadedModel, key: tuple[Any, ...]) -> dict[str, str | None]:
    """Why each method cannot run on `model` (None where it can), cached per model."""
    with st.spinner(t("attribution.checking")):
        return _available(model, key)


def method_options(method: str, n_steps: int, grid: int) -> dict[str, int]:
    """The options that matter for `method` (so a Grad-CAM result is not recomputed when IG's steps change)."""
    name = _OPTION_FOR.get(method)
    return {name: {"n_steps": n_steps, "grid": grid}[name]} if name else {}


def cost_caption(cost: MethodCost, problem: str | None) -> str:
    """One short line under a method's name: its passes for this input, or why it cannot run."""
    if problem or not cost.available:
        return f":gray[{localize(problem or cost.reason)}]"
    back = t("attribution.caption.backward", n=number(cost.backward_calls)) if cost.backward_calls else ""
    key = "attribution.caption.passes" if cost.forward_calls + cost.backward_calls > 1 else "attribution.caption.pass"
    return t(key, forward=number(cost.forward_calls), backward=back, relative=number(cost.relative, 0))


def _run(
    model: LoadedModel, image: Image.Image, digest: str, method: str, target: int, layers: list[str],
    options: dict[str, int], *, allowed: bool,
) -> AttributionResult | None:  # fmt: skip
    """The result from the shared store, else computed (with a progress bar) when `allowed`, else None."""
    key = (model_key(model), digest, method, target, tuple(layers), tuple(sorted(options.items())))
    res = _store().get(key)
    if res is not None or not allowed:
        return res
    label = METHODS[method].label
    box = st.container()
    with turn("attribution", box):  # the server's fair queue: heavy work takes its turn, with a visible wait
        if METHODS[method].per_layer_passes:
            base = model.to_tensor01(image).permute(1, 2, 0).cpu()
            draw = progress_callback(box, text=t("attribution.progress.layer", method=label))

            def progress(done: int, total: int, preview: Any = None) -> None:
                pic = None
                if preview is not None:  # (layer, (1, h, w) map): show it over the image on its own scale
                    top = float(preview[1][0].abs().max()) or 1e-12
                    pic = np.asarray(overlay(base, preview[1][0], -top, top, mode="signed"))
                draw(done, total, pic)

            res = attribute(model, image, layers, method, target, progress=progress, **options)
        else:
            with st.spinner(t("attribution.progress.one_pass", method=label)):
                res = attribute(model, image, layers, method, target, **options)
    _store().put(key, res)
    return res


# --------------------------------------------------------------------------- pictures and exports


def legend_html(vmin: float, vmax: float, cmap: str, *, per_layer: bool) -> str:
    """A colour bar with its value range (or, per layer, its relative range) as HTML."""
    stops = ", ".join(f"rgb{tuple(c)}" for c in COLORMAPS[cmap])
    if per_layer:
        top = t("attribution.legend.max")
        ticks = [f"−{top}", "0", f"+{top}"] if vmin < 0 else ["0", top]
    else:
        ticks = [_sig(vmin), "0", _sig(vmax)] if vmin < 0 else ["0", _sig(vmax / 2), _sig(vmax)]
    labels = "".join(f"<span>{t}</span>" for t in ticks)
    return (
        "<div style='max-width:560px;font-size:0.8rem;color:#555'>"
        f"<div style='height:14px;border-radius:3px;background:linear-gradient(to right, {stops})'></div>"
        f"<div style='display:flex;justify-content:space-between'>{labels}</div></div>"
    )


def _cell_caption(res: AttributionResult, name: str, scale: str, rng: tuple[float, float], lang: str) -> str:
    h, w = res.maps[name].shape[1:]
    if scale == "layer":
        return f"{name} · {h}×{w} · " + t("attribution.cell.scale", low=_sig(rng[0], lang), high=_sig(rng[1], lang))
    return f"{name} · {h}×{w} · " + t("attribution.cell.peak", peak=_sig(peak(res, name), lang))


def _token_layers(model: LoadedModel, layers: list[str]) -> list[str]:
    """The layers of `layers` whose output is a token sequence (memoized per model: the layouts come from a trace)."""
    key = ("tokens", model_key(model), tuple(layers))
    found = _memo().get(key)
    if found is None:
        layouts = anatomy(model).layouts
        found = [n for n in layers if (layouts[n] if n in layouts else layout_of(model, n)).tokens]
        _memo().put(key, found)
    return list(found)


@functools.lru_cache(maxsize=4)
def _placeholder(lang: str = "en") -> Image.Image:
    """A grey square saying 'not rendered', one per language (PIL's default font has no accents: ASCII words)."""
    pic = Image.new("RGB", (96, 96), "#eeeeee")
    ImageDraw.Draw(pic).text((48, 48), t("attribution.not_rendered"), fill="#999", anchor="mm", align="center")
    return pic


@functools.lru_cache(maxsize=4)
def _placeholder_shown(lang: str = "en") -> tuple[bytes, str]:
    """`_placeholder` as `st.image` serves it (see `served`), made once per language."""
    return served(as_png(_placeholder(lang)))


def _placeholder_grid(layers: list[str]) -> None:
    """Grey squares where the maps will be, one per layer (HTML: nothing to fetch), while the method runs."""
    for start in range(0, len(layers), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, name in zip(cols, layers[start : start + GRID_COLUMNS], strict=False):
            col.markdown(PLACEHOLDER_HTML, unsafe_allow_html=True)
            col.caption(t("attribution.computing", layer=name))


# --------------------------------------------------------------------------- page sections


def _target_picker(model: LoadedModel, preds: list[tuple[int, float]]) -> int:
    """Show the top-5 and let the user pick the class to explain; returns its index."""
    names, probs = model.class_names, dict(preds)
    if st.session_state.get("att_target", AUTO) not in range(-1, model.num_classes):  # from another model
        st.session_state["att_target"] = AUTO
    st.markdown(t("attribution.top5"))
    items = tuple((names[i], p) for i, p in preds)
    key = ("top5", items, language())
    figure = _memo().get(key)
    if figure is None:  # built once per prediction and language; st.plotly_chart only reads it (to_dict)
        figure = top_figure(list(items))
        _memo().put(key, figure)
    st.plotly_chart(figure, key="att_top5")

    def label(i: int) -> str:
        if i == AUTO:
            return t("attribution.predicted_class", name=names[preds[0][0]])
        return f"{names[i]} ({i})" + (f" · {percent(probs[i], 1)}" if i in probs else "")

    chosen = st.selectbox(
        t("attribution.explain"), [AUTO, *range(model.num_classes)], format_func=label, key="att_target"
    )
    return preds[0][0] if chosen == AUTO else int(chosen)


def _method_picker(
    model: LoadedModel, layers: list[str], target: int
) -> tuple[str, MethodCost, dict[str, int], list[str]]:
    """Method radio (each with its cost for this input, unavailable ones greyed with the reason) and options.

    Returns the method, its cost, its options and the layers to attribute.
    """
    problems = _availability(model, model_key(model))
    radio_box = st.container()  # drawn above the options it depends on
    if not set(st.session_state.get("att_layers", [])) <= set(layers):  # names from another model: start over
        del st.session_state["att_layers"]
    with st.expander(t("attribution.options")):
        steps = st.slider(t("attribution.options.steps"), 2, 128, 32, key="att_steps")
        grid = st.slider(t("attribution.options.grid"), 1, 14, 7, key="att_grid")
        chosen = st.multiselect(t("attribution.options.layers"), layers, default=layers, key="att_layers") or layers
    chosen = [n for n in layers if n in chosen]
    costs = {m: method_cost(model, 1, chosen, m, target, **method_options(m, steps, grid)) for m in METHODS}
    method = radio_box.radio(
        t("attribution.method"),
        list(METHODS),
        key="att_method",
        format_func=lambda m: METHODS[m].label + (t("attribution.method.unavailable") if problems.get(m) else ""),
        captions=[cost_caption(costs[m], problems.get(m)) for m in METHODS],
    )
    return method, costs[method], method_options(method, steps, grid), chosen


def _unit_link(layer: str, unit: int, score: float, lang: str | None = None, page: Any = None) -> None:
    """A link to the Unit page for this channel, with the model and the fast preset (the picture shown here)."""
    params = link_params(RenderSettings(preset=FV_PRESET), layer=layer, unit=unit)
    label = f"#{unit} · {'+' if score >= 0 else ''}{_sig(score, lang)}"
    st.page_link(page or page_ref("unit", "Unit"), label=label, query_params=params)


def _maps_section(res: AttributionResult, model: LoadedModel, scores: dict[str, Any], k: int) -> str:
    """The overlay grid with its colour scale, the scale toggle and the downloads; returns the scale."""
    head, toggle = st.columns([3, 2], vertical_alignment="bottom")
    target = res.target_name()
    about = t("attribution.no_target") if res.method == "activation" else t("attribution.for_target", target=target)
    head.subheader(t("attribution.maps_title", method=METHODS[res.method].label, about=about))
    scale = (
        toggle.segmented_control(t("attribution.scale"), list(SCALES), format_func=_scale_label, key="att_scale")
        or "shared"
    )
    ranges = res.scale(scale, image=0)
    cmap = DEFAULT_CMAP[res.display]
    vmin, vmax = ranges[res.layers[0]]
    what = t("attribution.values.positive") if res.display == "positive" else t("attribution.values.signed")
    if scale == "shared":
        st.caption(t("attribution.shared_caption", n=len(res.layers), low=_sig(vmin), high=_sig(vmax), what=what))
    else:
        st.caption(t("attribution.layer_caption", what=what))
    st.html(legend_html(vmin, vmax, cmap, per_layer=scale == "layer"))
    tokens = _token_layers(model, res.layers)
    if tokens:
        h, w = layout_of(model, tokens[0]).grid or (0, 0)
        st.caption(t("attribution.tokens", n=len(tokens), height=h, width=w))
    # Coloured and encoded once per result and scale (memoized): the JPEG that st.image made of each overlay's PNG
    # on every run, which it now passes on as it is (the same bytes, so the same pixels).
    pics = res.overlay_bytes(scale=scale, fmt="JPEG", quality=SERVED_QUALITY)
    lang = language()
    for start in range(0, len(res.layers), GRID_COLUMNS):
        cols = st.columns(GRID_COLUMNS)
        for col, name in zip(cols, res.layers[start : start + GRID_COLUMNS], strict=False):
            caption = _cell_caption(res, name, scale, ranges[name], lang)
            col.image(pics[name], caption=caption, width="stretch", output_format="JPEG")
    notes = [localize(n) for n in res.notes] + [f"{n}: {localize(why)}" for n, why in res.skipped.items()]
    took = t("attribution.took", time=number(res.seconds, 1))
    st.caption(f"{describe_cost(res.cost)} {took}" + (" " + " ".join(notes) if notes else ""))
    title = t("attribution.grid_title", method=METHODS[res.method].label, target=target, spec=model.spec)
    downloads = [
        (t("attribution.download.grid"), lambda: grid_png(res, scale, title=title), "png", "image/png"),
        (t("attribution.download.json"), lambda: magnitudes_json(res, scale, scores, k), "json", "application/json"),
        (t("attribution.download.csv"), lambda: magnitudes_csv(res), "csv", "text/csv"),
    ]
    row = st.container(horizontal=True)
    for label, data, ext, mime in downloads:
        row.download_button(
            label, data, f"attribution_{res.method}_{scale}.{ext}", mime, key=f"att_dl_{ext}", on_click="ignore",
            icon=":material/download:",
        )  # fmt: skip
    return scale


def _lookup(model: LoadedModel, objectives: list[Any]) -> list[Any]:
    """`fv.lookup` under FV_PRESET (seed 0), with the objectives' cache keys memoized: making them is most of what a
    lookup of pictures not rendered yet costs, and the page asks again on every run."""
    if not objectives:
        return []
    key = ("fv_keys", model_key(model), model.device.type, FV_PRESET, tuple(o.key for o in objectives))
    keys = _memo().get(key)
    if keys is None:
        keys = tuple(cache_keys(model, objectives, fv.get_preset(FV_PRESET), 0))
        _memo().put(key, keys)
    cache = Cache()
    return [cache.get(KIND, k) for k in keys]


def _channels_section(model: LoadedModel, layers: list[str], scores: dict[str, Any], target: str) -> None:
    """Each layer's top channels with their scores, feature visualizations (cache first) and Unit links."""
    st.subheader(t("attribution.channels_title", target=target))
    text, pick = st.columns([4, 1], vertical_alignment="center")
    k = pick.slider(t("attribution.channels_per_layer"), 1, 8, 3, key="att_k")
    text.caption(t("attribution.channels_caption"))
    tops = {n: top_channels(scores, n, k) for n in layers}
    # (layer, channel) → (bytes, output_format) for st.image (see `served`), kept in `_tiles` across runs; or a
    # picture just rendered (an array)
    tiles, where = _tiles(), (*model_key(model), model.device.type, FV_PRESET)  # the device: the render precision
    pics: dict[tuple[str, int], Any] = {}
    for n in layers:
        for c, _ in tops[n]:
            if (hit := tiles.get((*where, n, c))) is not None:
                pics[(n, c)] = hit
    need = [n for n in layers if any((n, c) not in pics for c, _ in tops[n])]
    convs = set(get_pixel_convs(model)) if need else set()
    for n in need:  # a convolution over the colour channels is shown as its kernels (nothing to render)
        figure = get_kernel_figure(model, n) if n in convs else None
        for c, _ in tops[n] if figure is not None else []:
            if (n, c) not in pics:
                pics[(n, c)] = served(as_png(figure.tiles[c]))  # type: ignore[union-attr]
                tiles.put((*where, n, c), pics[(n, c)])
    objs = [(n, c) for n in need for c, _ in tops[n] if (n, c) not in pics]
    objectives = [fv.channel(n, c) for n, c in objs]
    try:
        for key, entry in zip(objs, _lookup(model, objectives), strict=True):
            if entry is not None:
                pics[key] = served(entry.data)  # PNG bytes, as st.image serves them
                tiles.put((*where, *key), pics[key])
    except Exception as exc:
        show_error(exc)
    missing = [i for i, key in enumerate(objs) if key not in pics]
    if missing:
        st.caption(t("attribution.in_cache", n=number(len(objs) - len(missing)), total=number(len(objs))))
        label = t("attribution.render_missing", n=number(len(missing)))
        cheap = model.device.type == "cuda"  # seconds on a GPU; minutes on a CPU, so there it waits for a click
        if cheap or st.button(label, key="att_render", icon=":material/brush:"):
            box = st.container()
            try:
                with turn("render", box):
                    draw = progress_callback(box, text=t("attribution.rendering"))
                    out = fv.render_cached(
                        model, [objectives[i] for i in missing], FV_PRESET,
                        progress=lambda d, t, p=None: draw(d, t, p.images if p is not None else None),
                    )  # fmt: skip
                pics.update({objs[i]: out.images[j] for j, i in enumerate(missing)})
            except Exception as exc:
                show_error(exc)
    lang, unit_page = language(), page_ref("unit", "Unit")
    for start in range(0, len(layers), LAYERS_PER_ROW):
        row = st.columns(LAYERS_PER_ROW)
        for col, name in zip(row, layers[start : start + LAYERS_PER_ROW], strict=False):
            box = col.container(border=True)
            box.markdown(f"**{name}**")
            cells = box.columns(k)
            for cell, (c, score) in zip(cells, tops[name], strict=False):
                with cell:
                    pic = pics.get((name, c))
                    pic = _placeholder_shown(lang) if pic is None else pic
                    data, fmt = pic if isinstance(pic, tuple) else served(as_png(pic))
                    st.image(data, width="stretch", output_format=fmt)  # finished bytes: passed on as they are
                    _unit_link(name, c, score, lang, unit_page)


# --------------------------------------------------------------------------- the page


def render() -> None:
    """The Attribution page."""
    st.title(t("attribution.title"))
    page_intro("attribution")
    model = current_model()
    layers = [r.name for r in resolve_layers(model, "all")]
    samples = sample_images()
    for note in _seed_state(model, samples):
        st.warning(note, icon=":material/link_off:")
    left, mid, right = st.columns([1, 1.2, 1.3], gap="large")
    with left:
        picked = image_picker("att", samples)
        _write_url(sample=picked.sample if picked else None)
        if picked is None:
            return
    image, digest = picked.image, picked.digest
    try:
        with mid:
            target = _target_picker(model, _predict(model, model_key(model), digest, image))
        with right:
            method, cost, options, used = _method_picker(model, layers, target)
    except Exception as exc:
        show_error(exc)
        return
    chosen_target = st.session_state.get("att_target", AUTO)
    _write_url(
        method=method,
        target=None if chosen_target == AUTO else chosen_target,
        scale=st.session_state.get("att_scale") or "shared",
    )
    st.divider()
    if not cost.available:
        st.warning(
            t("attribution.cannot_run", method=METHODS[method].label, reason=localize(cost.reason)),
            icon=":material/block:",
        )
        return
    st.info(describe_cost(cost), icon=":material/speed:")
    pending = st.empty()
    try:
        cheap = cost.relative <= AUTO_RUN_MAX
        res = _run(model, image, digest, method, target, used, options, allowed=False)
        if res is None and cheap:  # computing now: the maps' places show at once, filled when it is done
            with pending.container():
                _placeholder_grid(used)
            res = _run(model, image, digest, method, target, used, options, allowed=True)
        pending.empty()
        if res is None:
            st.caption(t("attribution.slow"))
            if not st.button(
                t("attribution.run", method=METHODS[method].label),
                type="primary",
                key="att_run",
                icon=":material/play_arrow:",
            ):
                return
            res = _run(model, image, digest, method, target, used, options, allowed=True)
        if METHODS[method].scores_are_grad_x_act:
            scores = res.channels  # gradient × activation summed over space, from the same pass
        else:
            scores = _run(model, image, digest, "gradxact", target, used, {}, allowed=True).channels  # type: ignore[union-attr]
    except Exception as exc:
        pending.empty()
        show_error(exc)
        return
    k = int(st.session_state.get("att_k", 3))
    _maps_section(res, model, scores, k)
    st.divider()
    _channels_section(model, res.layers, scores, res.target_name())
    st.divider()
    st.subheader(t("attribution.trust"))
    _sanity_panel(model, image, digest, res.target[0])
    _faithfulness_panel(model, image, digest, method, res.layers, res.target[0])


# --------------------------------------------------------------------------- trust panels


def _trust_run(key: tuple[Any, ...], label: str, compute: Any) -> dict[str, Any]:
    """`compute(progress)` in the job queue with a progress bar (gone when it ends); its JSON kept in the shared
    store."""
    slot = st.empty()
    box = slot.container()
    try:
        with turn("attribution", box):
            draw = progress_callback(box, text=label)
            data = compute(lambda done, total, _info=None: draw(done, total)).to_dict()
    finally:
        slot.empty()
    _store().put(key, data)
    return data


def _sanity_panel(model: LoadedModel, image: Image.Image, digest: str, target: int) -> None:
    """Cascading randomization of a copy of the model (Adebayo et al. 2018), on a click; curves and a verdict per
    method. The expander opens by itself once there is something to show."""
    problems = _availability(model, model_key(model))
    labels = {**INPUT_METHODS, **{m: METHODS[m].label for m in METHODS}}
    usable = [m for m in DEFAULT_METHODS if not problems.get(m if m != "guided_backprop" else "guided_gradcam")]
    chosen = [m for m in st.session_state.get("att_sanity", usable) if m in labels]
    key = ("sanity", model_key(model), digest, target, tuple(chosen))
    data = _store().get(key)
    clicked = bool(st.session_state.get("att_sanity_run"))
    with st.expander(t("attribution.sanity"), expanded=data is not None or clicked):
        methods = st.multiselect(
            t("attribution.sanity.methods"), list(labels), default=usable, format_func=labels.get, key="att_sanity"
        )
        st.caption(t("attribution.sanity.caption", threshold=number(PASS_BELOW)))
        if not methods:
            return
        if data is None:
            slot = st.empty()
            with slot.container():
                cost_key = ("sanity_cost", model_key(model), tuple(methods))
                n = _memo().get(cost_key)
                if n is None:  # the passes of the check (a walk over the model's parameters): once per choice
                    n = sanity_cost(model, methods)
                    _memo().put(cost_key, n)
                st.caption(t("attribution.sanity.cost", n=number(n)))
                if not st.button(t("attribution.sanity.run"), key="att_sanity_run", icon=":material/science:"):
                    return
            slot.empty()
            try:

                def run(cb: Any) -> Any:
                    return sanity_check(model, image, methods, "all", target, progress=cb)

                data = _trust_run(key, t("attribution.sanity.progress"), run)
            except Exception as exc:
                show_error(exc)
                return
        st.plotly_chart(sanity_figure(data), key="att_sanity_chart")
        for rec in data["methods"].values():
            passed, failed = t("charts.sanity.pass"), t("charts.sanity.fail")
            mark = f":green[**{passed}**]" if rec["passed"] else f":red[**{failed}**]"
            st.markdown(f"{mark} · {localize(rec['verdict'])}")
        for name, why in data.get("skipped", {}).items():
            st.caption(t("attribution.sanity.skipped", method=labels.get(name, name), why=why))


def _faithfulness_panel(
    model: LoadedModel, image: Image.Image, digest: str, method: str, layers: list[str], target: int
) -> None:
    """Deletion/insertion areas of every layer's map against random maps on its grid, on a click; a ranking. The
    expander opens by itself once there is something to show."""
    key = ("faithfulness", model_key(model), digest, method, target, tuple(layers))
    data = _store().get(key)
    clicked = bool(st.session_state.get("att_faith_run"))
    with st.expander(t("attribution.faith"), expanded=data is not None or clicked):
        st.caption(t("attribution.faith.caption", method=METHODS[method].label))
        st.caption(t("attribution.faith.bias", note=localize(BIAS_NOTE)))
        if data is None:
            slot = st.empty()
            if not slot.button(t("attribution.faith.run"), key="att_faith_run", icon=":material/leaderboard:"):
                return
            slot.empty()
            try:

                def run(cb: Any) -> Any:
                    return faithfulness(model, image, method, layers, target, progress=cb)

                data = _trust_run(key, t("attribution.faith.progress"), run)
            except Exception as exc:
                show_error(exc)
                return
        best = data["ranking"][0]
        score = float(data["layers"][best]["score"])
        st.markdown(t("attribution.faith.best", layer=best, score=("+" if score >= 0 else "") + number(score, 3)))
        st.plotly_chart(faithfulness_figure(data), key="att_faith_chart")
