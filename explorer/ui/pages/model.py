"""Model page: choose a network, see its layer ladder, try it on an image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import streamlit as st
from plotly.subplots import make_subplots

from explorer.layers import LayerInfo
from explorer.models import BUNDLED, CHECKPOINT_SUFFIXES, LoadedModel, ModelError, parse_spec
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, page_intro, plotly_separators, short_number, t
from explorer.ui.messages import localize
from explorer.ui.session import current_model, get_ladder, model_key, set_current_model
from explorer.ui.uploads import checkpoint_arch_hint, save_upload
from explorer.ui.widgets.figures import top_figure
from explorer.ui.widgets.images import image_picker

SOURCES = ["Bundled", "torchvision", "timm", "Upload checkpoint"]
_KIND_TO_SOURCE = {"bundled": "Bundled", "torchvision": "torchvision", "timm": "timm", "file": "Upload checkpoint"}
STAGE_COLOURS = ["#4C78A8", "#F58518", "#54A24B", "#B279A2", "#E45756", "#72B7B2", "#9D755D", "#EECA3B", "#FF9DA6"]


# --------------------------------------------------------------------------- catalogues (cached per process)


@st.cache_data(show_spinner=False)
def torchvision_names() -> list[str]:
    import torchvision.models as tvm  # start-up cost: ~1 s to import; the app imports every page at start

    return sorted(tvm.list_models(module=tvm))


@st.cache_data(show_spinner=False)
def timm_names(pattern: str) -> list[str]:
    import timm  # start-up cost: over a second to import; the app imports every page at start

    return timm.list_models(f"*{pattern.strip()}*" if pattern.strip() else "*")


# --------------------------------------------------------------------------- choosing a model


def _load_and_rerun(spec: str, arch: str | None = None) -> None:
    """Switch to the model, or show why not (the previous model stays selected)."""
    try:
        set_current_model(spec, arch)
    except Exception as exc:
        show_error(exc)
        return
    st.rerun()


def _init_picker(spec: str) -> None:
    """On a session's first run, point the picker at the current model."""
    state = st.session_state
    if "pick_source" in state:
        return
    try:
        kind, name, variant = parse_spec(spec)
    except ModelError:
        return
    state["pick_source"] = _KIND_TO_SOURCE[kind]
    state["pick_untrained"] = variant == "untrained"
    key = {"bundled": "pick_bundled", "torchvision": "pick_tv", "timm": "pick_timm"}.get(kind)
    if key:
        state[key] = name
    if kind == "timm":
        state["pick_timm_filter"] = name


def _stored_upload(up: Any) -> Path | None:
    """Save a newly uploaded checkpoint once per upload and pre-fill the architecture from its metadata."""
    state = st.session_state
    cached = state.get("_upload")
    if cached and cached[0] == up.file_id:
        return Path(cached[1])
    try:
        path = save_upload(up.name, up.getvalue())
    except Exception as exc:
        show_error(exc)
        return None
    state["_upload"] = (up.file_id, str(path))
    hint = checkpoint_arch_hint(path)
    if hint:
        state["pick_arch"] = hint
    return path


def _source_label(source: str) -> str:
    return {"Bundled": t("model.source.bundled"), "Upload checkpoint": t("model.source.upload")}.get(source, source)


def _picker(model: LoadedModel | None) -> None:
    st.subheader(t("model.choose"))
    state = st.session_state
    if model is not None:
        _init_picker(model.spec)
    labels = {s: _source_label(s) for s in SOURCES}
    source = st.radio(t("model.source"), SOURCES, key="pick_source", horizontal=True, format_func=labels.get)
    spec: str | None = None
    arch: str | None = None
    if source == "Bundled":
        state.setdefault("pick_bundled", "efficientnet_lite0")
        spec = "bundled:" + st.selectbox(t("model.model"), list(BUNDLED), key="pick_bundled")
    elif source == "torchvision":
        state.setdefault("pick_tv", "resnet50")
        spec = "torchvision:" + st.selectbox(t("model.model"), torchvision_names(), key="pick_tv")
    elif source == "timm":
        state.setdefault("pick_timm_filter", "resnet")
        pattern = st.text_input(t("model.timm_filter"), key="pick_timm_filter", help=t("model.timm_filter.help"))
        names = timm_names(pattern)
        if names:
            spec = "timm:" + st.selectbox(t("model.timm_matches", n=number(len(names))), names, key="pick_timm")
        else:
            st.info(t("model.timm_none", pattern=repr(pattern)))
    else:
        types = [s.lstrip(".") for s in CHECKPOINT_SUFFIXES]
        up = st.file_uploader(t("model.checkpoint_file"), type=types, key="pick_upload")
        path = _stored_upload(up) if up is not None else None
        arch = st.text_input(
            t("model.arch"), key="pick_arch", placeholder=t("model.arch.placeholder"), help=t("model.arch.help")
        )
        spec = str(path) if path else None
    if source != "Upload checkpoint":
        untrained = st.toggle(t("model.untrained"), key="pick_untrained")
        if spec and untrained:
            spec += ":untrained"
    if st.button(t("model.load"), type="primary", key="load", disabled=spec is None, icon=":material/download:"):
        _load_and_rerun(spec, arch)  # type: ignore[arg-type]
    with st.expander(t("model.spec.expander"), key="pick_spec_box"):
        st.caption(t("model.spec.caption"))
        typed = st.text_input(t("model.spec.label"), key="pick_spec", placeholder="torchvision:resnet50:IMAGENET1K_V2")
        if st.button(t("model.spec.load"), key="load_spec"):
            if typed.strip():
                _load_and_rerun(typed.strip())
            else:
                st.warning(t("model.spec.empty"))


# --------------------------------------------------------------------------- describing it


def _info(model: LoadedModel) -> None:
    st.subheader(Path(model.spec).name if parse_spec(model.spec)[0] == "file" else model.spec)
    st.caption(localize(model.description))
    params = list(model.module.parameters())
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    c = st.columns(4)
    c[0].metric(
        t("model.params"),
        short_number(total),
        help=t("model.params.help", total=number(total), trainable=number(trainable)),
    )
    c[1].metric(
        t("model.input"),
        "×".join(str(s) for s in model.input_size),
        help=t("model.input.help", size=model.resize_size),
    )
    c[2].metric(t("model.classes"), number(model.num_classes))
    c[3].metric(t("model.device"), str(model.device))
    sep = "; " if number(0.5).startswith("0,") else ", "  # a decimal comma cannot also separate the values
    mean = sep.join(number(m, 3) for m in model.mean)
    std = sep.join(number(s, 3) for s in model.std)
    arch = t("model.fact.arch", arch=model.arch) if model.pretrained else t("model.fact.arch_random", arch=model.arch)
    interpolations = {"bicubic": t("model.interp.bicubic"), "bilinear": t("model.interp.bilinear")}
    facts = [
        t("model.fact.spec", spec=model.spec),
        arch,
        t("model.fact.fingerprint", fingerprint=model.short_fingerprint),
        t(
            "model.fact.preprocessing",
            resize=model.resize_size,
            interpolation=interpolations.get(model.interpolation, model.interpolation),
            height=model.input_size[0],
            width=model.input_size[1],
            mean=mean,
            std=std,
        ),
    ]
    st.markdown("\n".join(f"- {fact}" for fact in facts))
    report = model.load_report
    if report is not None and not report.clean:
        st.warning(t("model.not_fit", summary=localize(report.summary())), icon=":material/warning:")
    elif report is not None and report.resized:
        st.info(t("model.loaded", summary=localize(report.summary())), icon=":material/info:")
    if model.metadata:
        with st.expander(t("model.metadata"), key="model_metadata"):
            st.json(model.metadata, expanded=False)


# --------------------------------------------------------------------------- the ladder


def ladder_frame(rows: list[LayerInfo]) -> pd.DataFrame:
    """The ladder as a table: one row per layer in execution order."""
    df = pd.DataFrame([r.as_row() for r in rows])
    if not df.empty:
        df.insert(df.columns.get_loc("trainable"), "params", df["trainable"] + df["frozen"])
    return df


def ladder_figure(rows: list[LayerInfo]) -> go.Figure:
    """Parameters (bars, log scale, coloured by stage) and channels (line, second axis) by execution order."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    x = [r.name for r in rows]
    colours = [STAGE_COLOURS[r.stage % len(STAGE_COLOURS)] for r in rows]
    custom = [[r.type, "×".join(map(str, r.out_shape)), r.stage, r.params_trainable, r.params_frozen] for r in rows]
    fig.add_trace(
        go.Bar(
            x=x,
            y=[max(r.params, 0) or None for r in rows],
            marker_color=colours,
            name=t("model.chart.parameters"),
            customdata=custom,
            hovertemplate="<b>%{x}</b> %{customdata[0]}<br>" + t("model.chart.hover_layer") + "<extra></extra>",
        ),
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=[r.channels for r in rows],
            mode="lines+markers",
            name=t("model.chart.channels"),
            line={"color": "#222222", "width": 2},
            marker={"size": 5 if len(rows) < 80 else 2},
            hovertemplate="<b>%{x}</b><br>" + t("model.chart.hover_channels") + "<extra></extra>",
            connectgaps=True,
        ),
        secondary_y=True,
    )
    start = 0
    for i in range(1, len(rows) + 1):  # shade each stage and label it above the plot
        if i == len(rows) or rows[i].stage != rows[start].stage:
            colour = STAGE_COLOURS[rows[start].stage % len(STAGE_COLOURS)]
            fig.add_vrect(x0=start - 0.5, x1=i - 0.5, fillcolor=colour, opacity=0.08, line_width=0, layer="below")
            fig.add_annotation(
                x=(start + i - 1) / 2,
                y=1.0,
                xref="x",
                yref="paper",
                yanchor="bottom",
                text=t("model.chart.stage", n=rows[start].stage),
                showarrow=False,
                font={"size": 11, "color": colour},
            )
            start = i
    fig.update_yaxes(
        title_text=t("model.chart.params_axis"), type="log", dtick=1, secondary_y=False, showgrid=True, tickformat="~s"
    )
    fig.update_yaxes(
        title_text=t("model.chart.channels_axis"),
        secondary_y=True,
        showgrid=False,
        rangemode="tozero",
        tickmode="auto",
        nticks=6,
    )
    ticks = {} if len(rows) <= 60 else {"tickmode": "array", "tickvals": x[:: max(1, len(x) // 40)]}
    fig.update_xaxes(title_text=t("model.chart.layer_axis"), tickangle=-45, type="category", **ticks)
    fig.update_layout(
        height=440,
        margin={"l": 10, "r": 10, "t": 70, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.1, "xanchor": "right", "x": 1},
        bargap=0.15,
        hovermode="closest",
        separators=plotly_separators(),
    )
    return fig


def _ladder_section(model: LoadedModel) -> None:
    st.subheader(t("model.ladder"))
    full = st.toggle(t("model.ladder.full"), key="ladder_full", bind="query-params")
    view = "full" if full else "blocks"
    rows = get_ladder(model, view)
    df = ladder_frame(rows)
    n_stages = len({r.stage for r in rows})
    caption = "model.ladder.caption_layers" if full else "model.ladder.caption_blocks"
    st.caption(t(caption, n=number(len(rows)), stages=n_stages))
    st.plotly_chart(ladder_figure(rows), key=f"ladder_chart_{view}")
    shown = df.copy()
    if "layout" in shown:  # the two layouts that are words (the others are NCHW 14×14 and the like)
        words = {"no grid": t("model.layout.none"), "vector": t("model.layout.vector")}
        shown["layout"] = shown["layout"].map(lambda v: words.get(v, v))
    st.dataframe(
        shown,
        hide_index=True,
        height=min(35 * (len(df) + 1) + 3, 760),
        column_config={
            "order": st.column_config.NumberColumn("#", width="small"),
            "layer": st.column_config.TextColumn(t("model.col.layer"), width="medium"),
            "type": st.column_config.TextColumn(t("model.col.type")),
            "output": st.column_config.TextColumn(t("model.col.output")),
            "layout": st.column_config.TextColumn(t("model.col.layout")),
            "channels": st.column_config.NumberColumn(t("model.col.channels"), format="localized"),
            "stage": st.column_config.NumberColumn(t("model.col.stage")),
            "params": st.column_config.NumberColumn(t("model.col.params"), format="localized"),
            "trainable": st.column_config.NumberColumn(t("model.col.trainable"), format="localized"),
            "frozen": st.column_config.NumberColumn(t("model.col.frozen"), format="localized"),
        },
        key=f"ladder_table_{view}",
    )
    stem = Path(model.spec).stem if parse_spec(model.spec)[0] == "file" else model.spec.replace(":", "_")
    headers = {c: t(f"model.col.{c}") for c in df.columns if c != "order"}  # the CSV's header in the reader's words
    st.download_button(
        t("model.ladder.csv"),
        lambda: shown.rename(columns=headers).to_csv(index=False).encode(),
        file_name=f"ladder_{stem}_{view}.csv",
        mime="text/csv",
        icon=":material/download:",
        on_click="ignore",
        key=f"ladder_csv_{view}",
    )


# --------------------------------------------------------------------------- try it


@st.cache_data(max_entries=256, show_spinner=False)
def _predict(_model: LoadedModel, key: tuple[Any, ...], digest: str, _image: Any, k: int) -> list[tuple[str, float]]:
    del key, digest
    return _model.predict(_image, k)


def _try_it(model: LoadedModel) -> None:
    st.subheader(t("model.try"))
    left, right = st.columns([1, 2], gap="large")
    with left:
        picked = image_picker("try")
        if picked is None:
            return
    with right:
        try:
            preds = _predict(model, model_key(model), picked.digest, picked.image, 5)
        except Exception as exc:
            show_error(exc)
            return
        st.markdown(t("model.top", k=len(preds), name=picked.sample or picked.name))
        st.plotly_chart(top_figure(preds), key="top5_chart")
        if not model.pretrained:
            st.caption(t("model.random_guesses"))


# --------------------------------------------------------------------------- the page


def render() -> None:
    """The Model page."""
    st.title(t("model.title"))
    page_intro("model")
    try:
        model: LoadedModel | None = current_model()
    except Exception as exc:
        show_error(exc)
        model = None
    left, right = st.columns([2, 3], gap="large")
    with left:
        _picker(model)
    if model is None:
        return
    with right:
        _info(model)
    st.divider()
    try:
        _ladder_section(model)
    except Exception as exc:
        show_error(exc)
    st.divider()
    _try_it(model)
