"""The Compare page: where to freeze the current model (base), measured by the freeze sweep and explained by
comparing it layer by layer with a fine-tuned copy.

One chart over depth (CKA with its interval and BatchNorm parts, scale-aware weight change, probe accuracy,
the sweep's held-out accuracy at each freeze point; generic → specific zones; the advice). Clicking a layer on
it (or picking one in the list under it) sets the freeze point; the freeze panel then shows the parameter counts
and code for that point, and the layer view shows its units, dataset examples and attribution in both models.
The sweep needs no fine-tuned model, and a first visit offers a one-click demo (:mod:`explorer.ui.compare.demo`).
Comparisons and sweeps are cached by (models, data, settings).

URL: `?tuned=RUN|PATH&tfp=FP&data=demo:digits|FOLDER&freeze=LAYER&images=200&input=0&probes=1`, the sweep's
`sw_epochs`, `sw_input`, `sw_images`, plus the render settings (`preset`, `seed`, `steps`, `size`) and the model.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import streamlit as st

from explorer.cache import folder as cache_folder
from explorer.models import LoadedModel
from explorer.transfer.comparison.compare import check_comparable
from explorer.transfer.reporting.report_html import render_html
from explorer.transfer.study import subset_folder, with_renders
from explorer.transfer.training.runs import list_runs
from explorer.ui.compare import sweep_panel, trust_panel
from explorer.ui.compare.charts import comparison_figure, export_config, selected_layer
from explorer.ui.compare.demo import demo_panel
from explorer.ui.compare.freeze_panel import NONE, render_panel, summaries
from explorer.ui.compare.layer import attribution_section, examples_section, spatial, unit_picks, units_section
from explorer.ui.compare.prediction import scores_for_chart
from explorer.ui.compare.setup import (
    UPLOAD,
    choose_data,
    choose_settings,
    choose_sweep_settings,
    choose_tuned,
    from_widget,
    param,
    set_param,
)
from explorer.ui.errors import error_message, show_error
from explorer.ui.i18n import language, number, page_intro, percent, seconds, t
from explorer.ui.messages import localize
from explorer.ui.progress import labelled_progress
from explorer.ui.session import current_model, get_ladder, set_current_model
from explorer.ui.widgets.gallery import RenderSettings, safe_filename, settings_from_url, zip_download

SECTIONS = ("Units", "Examples", "Attribution")


def _section_label(name: str) -> str:
    return {
        "Units": t("compare.section.units"),
        "Examples": t("compare.section.examples"),
        "Attribution": t("compare.section.attribution"),
    }.get(name, name)


# --------------------------------------------------------------------------- the comparison


def _progress(box: Any) -> Any:
    def label(done: int, total: int, info: Any) -> str:
        phase = info.get("phase") if isinstance(info, dict) else None
        what = (
            t("compare.progress.forward", images=number(info.get("images") or 0))
            if phase == "forward"
            else t("compare.progress.probes")
        )
        step = t("compare.progress.step", done=number(done), total=number(total))
        return f"{what} · {step}"

    return labelled_progress(box, t("compare.comparing"), label)


def _comparison(base: LoadedModel, tuned: LoadedModel, data: str, root: Path, settings: dict[str, Any]) -> Any:
    """The cached report, or a button that computes it (with progress and a Stop button)."""
    study = sweep_panel.study(base, data, root)
    report = study.stored_comparison(tuned, settings)
    if report is not None:
        return report
    what = "compare.not_compared_probes" if settings["probes"] else "compare.not_compared"
    st.info(t(what, images=number(settings["max_images"]), data=data), icon=":material/compare:")
    if not st.button(t("compare.run"), key="cmp_run", type="primary", icon=":material/play_arrow:"):
        return None
    left, right = st.columns([6, 1], vertical_alignment="center")
    right.button(
        t("compare.stop"), key="cmp_stop", icon=":material/stop:"
    )  # any click reruns the page, which stops this run
    started = time.perf_counter()
    report = study.compare(tuned, settings, progress=_progress(left))
    st.session_state["cmp_toast"] = t("compare.done", time=seconds(time.perf_counter() - started, 0))
    st.rerun()  # draw the page from the stored report, without the button and the progress bar
    return report


# --------------------------------------------------------------------------- freeze point


def _on_chart_select() -> None:
    """A click on the chart: the selected layer becomes the freeze point (the head cannot be frozen)."""
    layer = selected_layer(st.session_state.get("cmp_chart"), st.session_state.get("cmp_layers", []))
    if layer is None:
        return
    if layer in st.session_state.get("cmp_choices", []):
        set_param("freeze", layer)
    else:
        st.session_state["cmp_notice"] = t("compare.head_not_frozen", layer=layer)


def _freeze_point(report: Any, choices: list[str]) -> str:
    wanted = param("freeze")
    fallback = report.recommendation.freeze_after or NONE
    fallback = fallback if fallback in choices else NONE
    if wanted is not None and wanted not in choices:
        st.warning(
            t("compare.bad_freeze", wanted=repr(wanted), fallback=fallback),
            icon=":material/link_off:",
        )
        wanted = None
    point = wanted or fallback
    set_param("freeze", point)
    return point


def _use_base(spec: str) -> None:
    try:
        set_current_model(spec)
    except Exception as exc:  # the current model stays; say why
        st.session_state["cmp_notice"] = t("compare.could_not_open", spec=spec, error=error_message(exc))


def _link() -> str:
    try:
        base = st.context.url or ""
    except Exception:  # no browser session (tests)
        base = ""
    return f"{base or '/compare'}?{urlencode(st.query_params.to_dict())}"


# --------------------------------------------------------------------------- the page


def _layer_view(
    base: LoadedModel, tuned: LoadedModel, report: Any, layer: str, root: Path, settings: dict[str, Any]
) -> tuple[dict[str, bytes], dict[str, Any]]:
    row = report.layer(layer)
    info = {r.name: r for r in get_ladder(base, "blocks")}.get(layer)
    st.subheader(t("compare.layer_title", layer=layer))
    st.session_state.setdefault("cmp_show", list(SECTIONS))
    show = st.segmented_control(
        t("compare.show"), SECTIONS, selection_mode="multi", key="cmp_show", format_func=_section_label
    )
    if info is None or not spatial(info):
        st.info(t("compare.no_spatial", layer=layer))
        return {}, {}
    files: dict[str, bytes] = {}
    renders: dict[str, Any] = {}
    folder = subset_folder(root, settings["max_images"], settings["seed"], cache_folder("subsets"))
    top, _least, _ = unit_picks(row)
    sections = [
        ("Units", lambda: units_section(base, tuned, row, settings_from_url(RenderSettings(preset="fast")))),
        ("Examples", lambda: (examples_section(base, tuned, folder, layer, top), {})),
        ("Attribution", lambda: (attribution_section(base, tuned, folder, layer), {})),
    ]
    for name, draw in sections:
        if name not in (show or []):
            continue
        st.markdown(f"#### {_section_label(name)}")
        try:
            got, pics = draw()
        except Exception as exc:
            show_error(exc)
            continue
        files.update(got)
        renders.update(pics)
    return files, renders


def _exports(report: Any, fig: Any, layer: str | None, renders: dict[str, Any], stem: str) -> None:
    """CSV, JSON and the one-page HTML report (with `renders`, filled later in this run: it is built on click)."""
    st.subheader(t("compare.export"))
    # Each file is built on click (a callable), not on every run of the page: a warm rerun does no export work. The
    # CSV's header and the HTML report's words are in the reader's language (the JSON keeps the engine's names).
    lang = language()

    def tr(text: str) -> str:
        return localize(text, lang)

    exports = [  # label, data (a callable run on click), suffix, mime, icon, key, help
        (
            t("compare.export.csv"),
            lambda: report.to_csv(translate=tr).encode(),
            "csv",
            "text/csv",
            "table",
            "cmp_csv",
            None,
        ),
        (
            t("compare.export.json"),
            lambda: report.to_json().encode(),
            "json",
            "application/json",
            "data_object",
            "cmp_json",
            None,
        ),
        (
            t("compare.export.html"),
            lambda: render_html(with_renders(report, layer, renders), translate=tr).encode(),
            "html",
            "text/html",
            "description",
            "cmp_html",
            t("compare.export.html.help"),
        ),
    ]
    for col, (label, data, suffix, mime, icon, key, tip) in zip(st.columns(3), exports, strict=True):
        col.download_button(
            label,
            data,
            file_name=f"{stem}.{suffix}",
            mime=mime,
            icon=f":material/{icon}:",
            on_click="ignore",
            key=key,
            help=tip,
        )
    _png_export(fig, stem)
    st.markdown(t("compare.link"))
    st.code(_link(), language="text")


def _png_export(fig: Any, stem: str) -> None:
    """The chart as a PNG built on the server (with kaleido), or where the chart's camera button is without it."""
    try:
        import kaleido  # noqa: F401  # optional dependency: server-side PNG export
    except ImportError:
        st.caption(t("compare.export.png_camera"))
        return
    st.download_button(
        t("compare.export.png"),
        lambda: fig.to_image(format="png", scale=2),
        file_name=f"{stem}.png",
        mime="image/png",
        icon=":material/image:",
        on_click="ignore",
        key="cmp_png",
    )


def _layer_zip(layer: str, files: dict[str, bytes], stem: str) -> None:
    zip_download(
        st, t("compare.zip", layer=layer, n=number(len(files))), files, f"{stem}-{safe_filename(layer)}.zip",
        key="cmp_zip", disabled=not files,
    )  # fmt: skip


def _first_visit(base: LoadedModel, column: Any) -> None:
    """No fine-tuned model yet: (the demo button above, then) the sweep on images of the user's choice."""
    with column:
        data = choose_data(None, None, name="sw_data", key="sw_data")
    if data is None:
        return
    st.subheader(t("compare.sweep_title"))
    cfg = choose_sweep_settings(data[0], base)
    pred = sweep_panel.predicted(base, data[0], data[1], cfg)
    try:
        sweep_panel.section(base, data[0], data[1], cfg, figure=True, pred=pred)
    except Exception as exc:
        show_error(exc)


def _with_sweep(base: LoadedModel, report: Any, data: tuple[str, Path]) -> tuple[Any, dict[str, int]]:
    cfg = choose_sweep_settings(data[0], base)
    study = sweep_panel.study(base, data[0], data[1])
    decided, why = study.decide(report, cfg, files_sha256=lambda: sweep_panel.files_sha256(str(data[1])))
    if why:  # a sweep belongs to its data, model and size: said, never applied silently
        st.warning(t("compare.sweep_not_used", why=localize(why)), icon=":material/block:")
    return decided, cfg


def _caption(report: Any) -> None:
    acc = (
        t("compare.caption.accuracy", accuracy=percent(report.tuned_accuracy, 1))
        if report.tuned_accuracy is not None
        else t("compare.caption.no_accuracy")
    )
    images = report.data.get("images_used")
    st.caption(
        t(
            "compare.caption",
            images=number(images) if isinstance(images, (int, float)) else images,
            source=report.data.get("source"),
            classes=number(len(report.data.get("classes") or [])),
            accuracy=acc,
            note=localize(report.heldout.get("note", "")),
            pooling=localize(str(report.settings.get("pooling") or "")),
            cka=localize(str(report.settings.get("cka") or "")),
            time=seconds(report.seconds.get("total", 0), 0),
        )
    )


def render() -> None:
    """The Compare page."""
    st.title(t("compare.title"))
    page_intro("compare")
    toast = st.session_state.pop("cmp_toast", None)
    if toast:
        st.toast(toast, icon=":material/check:")
    base = current_model()
    first = not list_runs() and param("tuned") in (None, UPLOAD)
    demo_panel(base, first=first)
    top = st.columns(2, gap="large")
    with top[0]:
        st.markdown(t("compare.base", spec=base.spec, fingerprint=base.short_fingerprint))
        chosen = choose_tuned(base)
    if chosen is None:
        if first:  # with runs, the user is choosing a checkpoint to upload
            _first_visit(base, top[1])
        return
    tuned, run = chosen
    if tuned.fingerprint == base.fingerprint and run and run.base_spec and run.base_spec != base.spec:
        try:  # the current model is this run itself (e.g. "use as current model"): compare it with its base
            base = set_current_model(run.base_spec)
        except Exception as exc:
            show_error(exc)
            return
        st.info(
            t("compare.run_is_current", spec=base.spec),
            icon=":material/swap_horiz:",
        )
    with top[1]:
        data = choose_data(run, tuned)
    if data is None:
        return
    settings = choose_settings(tuned)
    try:
        notes = check_comparable(base, tuned)
    except Exception as exc:
        show_error(exc)
        return
    for note in notes:
        st.warning(localize(note), icon=":material/warning:")
    if run and run.base_spec and run.base_spec != base.spec:
        st.button(
            t("compare.use_base", spec=run.base_spec),
            key="cmp_use_base",
            on_click=_use_base,
            args=(run.base_spec,),
        )
    try:
        report = _comparison(base, tuned, data[0], data[1], settings)
        if report is None:
            st.subheader(t("compare.sweep_title"))
            cfg = choose_sweep_settings(data[0], base)
            pred = sweep_panel.predicted(base, data[0], data[1], cfg)
            sweep_panel.section(base, data[0], data[1], cfg, figure=True, pred=pred)
            return
        report, sweep_cfg = _with_sweep(base, report, data)
    except Exception as exc:
        show_error(exc)
        return
    _page(base, tuned, report, data, settings, sweep_cfg)


def _page(
    base: LoadedModel,
    tuned: LoadedModel,
    report: Any,
    data: tuple[str, Path],
    settings: dict[str, Any],
    sweep_cfg: dict[str, int],
) -> None:
    table = summaries(base, len(report.data.get("classes") or []) or None)
    choices = list(table)
    st.session_state["cmp_choices"] = choices
    st.session_state["cmp_layers"] = [r.name for r in report.layers]
    point = _freeze_point(report, choices)
    notice = st.session_state.pop("cmp_notice", None)
    if notice:
        st.warning(notice, icon=":material/block:")
    st.session_state["cmp_freeze"] = point
    c = st.columns([2, 3], vertical_alignment="bottom")
    c[0].selectbox(
        t("compare.freeze_pick"),
        choices,
        key="cmp_freeze",
        on_change=from_widget,
        args=("freeze", "cmp_freeze"),
        format_func=lambda p: t("compare.freeze_none") if p == NONE else p,
    )
    with c[1]:
        _caption(report)
    pred = sweep_panel.predicted(base, data[0], data[1], sweep_cfg)
    fig = comparison_figure(report, None if point == NONE else point, prediction=scores_for_chart(pred))
    stem = safe_filename(f"compare-{Path(str(report.tuned.get('spec'))).stem}-{data[0]}")
    st.plotly_chart(
        fig, key="cmp_chart", on_select=_on_chart_select, selection_mode=("points",), config=export_config(stem)
    )
    query = {k: v for k, v in st.query_params.to_dict().items() if k in ("model", "arch", "data")}
    render_panel(base, report, point, query=query)
    st.subheader(t("compare.sweep_title_full"))
    try:
        sweep_panel.section(base, data[0], data[1], sweep_cfg, pred=pred)
    except Exception as exc:
        show_error(exc)
    trust_panel.section(base, tuned, data[1], (report.data.get("input_size") or [None])[0])
    layer = None if point == NONE else point
    renders: dict[str, Any] = {}  # filled by the layer view below; the HTML report reads it when downloaded
    _exports(report, fig, layer, renders, stem)
    if layer is None:
        st.info(t("compare.choose_point"))
        return
    files, pics = _layer_view(base, tuned, report, layer, data[1], settings)
    renders.update(pics)
    _layer_zip(layer, files, stem)
