"""Fine-tune page: choose data and a freeze point, train a copy of the current model with live progress, keep runs.

Training runs in a background thread (:class:`explorer.transfer.training.runs.TrainingJob`), so the page redraws its
progress
every second, other pages stay usable, and Stop ends the run before its next step with the last complete
epoch's checkpoint kept. ``?freeze=LAYER`` preselects the freeze point (the Compare page sends one) and
``?data=demo:NAME`` a demo dataset. With images chosen, the freeze chooser offers the freeze prediction (one pass, no
training, :mod:`explorer.ui.compare.prediction`), shown at once when one is stored, with a button that selects it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from explorer.data import resolve_data, typical_side
from explorer.layers import fixed_input_size
from explorer.models import LoadedModel
from explorer.transfer.training.finetune import FinetuneSettings
from explorer.transfer.training.resume import can_resume, saved_settings
from explorer.transfer.training.runs import JobSnapshot, TrainingJob, list_runs, read_run
from explorer.transfer.training.settings import suggested_input_size
from explorer.ui.compare import prediction
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, page_intro, percent, plotly_separators, seconds, short_number, t
from explorer.ui.links import page_ref
from explorer.ui.session import current_model, get_ladder, set_current_model
from explorer.ui.widgets.dataset_panel import DataSummary, data_section
from explorer.ui.widgets.figures import progress_figure
from explorer.ui.widgets.freeze import freeze_snippet, freeze_summaries

JOB_KEY = "ft_job"  # session_state: the session's TrainingJob (running or finished)
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


# --------------------------------------------------------------------------- freeze point


def status_name(status: str) -> str:
    """A run's status (`explorer.transfer.training.runs.STATES`) in the session's language."""
    names = {
        "done": t("finetune.status.done"),
        "running": t("finetune.status.running"),
        "stopped": t("finetune.status.stopped"),
        "interrupted": t("finetune.status.interrupted"),
        "failed": t("finetune.status.failed"),
    }
    return names.get(status, status)


def _pick_freeze(options: list[str]) -> str:
    """The freeze point selectbox, seeded from ``?freeze=`` (a layer name or 'none') and kept in the URL."""
    state = st.session_state
    wanted = st.query_params.get("freeze")
    if wanted and wanted != state.get("_ft_freeze_url"):
        state["_ft_freeze_url"] = wanted
        if wanted in options:
            state["ft_freeze"] = wanted
        else:
            st.warning(t("finetune.bad_freeze", point=repr(wanted)))
    if state.get("ft_freeze") not in options:
        state["ft_freeze"] = "none"
    none = t("finetune.freeze.none")  # labels are made during the run, not when a test asks for them later
    point = st.selectbox(
        t("finetune.freeze"),
        options,
        key="ft_freeze",
        format_func=lambda p: none if p == "none" else p,
        help=t("finetune.freeze.help"),
    )
    if st.query_params.get("freeze") != point:
        st.query_params["freeze"] = point
        state["_ft_freeze_url"] = point
    return point


def _use_predicted(point: str) -> None:
    """'Freeze up to …' under the prediction: select its point (and keep it in the URL)."""
    st.session_state["ft_freeze"] = point
    st.session_state["_ft_freeze_url"] = point
    st.query_params["freeze"] = point


def _predicted(model: LoadedModel, spec: str | None, options: list[str]) -> None:
    """The freeze prediction for the chosen images: shown when stored (the Compare page makes one too), else a
    button that makes it (seconds: one pass, no training); then a button selecting its point."""
    if spec is None:
        st.caption(t("finetune.predict.no_data"))
        return
    root = resolve_data(spec)
    s = prediction.default_settings(model, spec)  # the Compare page's split and size: one prediction for both
    pred = prediction.stored(model, root, s)
    if pred is None:
        if not st.button(
            t("finetune.predict.button"), key="ft_predict", help=t("finetune.predict.help"),
            icon=":material/online_prediction:",
        ):  # fmt: skip
            return
        pred = prediction.safe(model, spec, root, s)
        if pred is None:
            return
    prediction.headline(pred, tail="finetune")
    p = pred.prediction
    if p.route == "linear":
        st.caption(t("finetune.predict.linear_note", point=p.point))
    if p.point in options and st.session_state.get("ft_freeze") != p.point:
        label = t("finetune.predict.use", point=p.point) if p.point != "none" else t("predict.option.all")
        st.button(label, key="ft_use_predicted", on_click=_use_predicted, args=(p.point,), icon=":material/ac_unit:")


def _freeze_frame(model: LoadedModel, point: str, num_classes: int | None) -> pd.DataFrame:
    rows = get_ladder(model, "blocks")
    names = [r.name for r in rows]
    cut = names.index(point) if point in names else -1
    head = max((i for i, r in enumerate(rows) if r.params > 0), default=-1)
    state = []
    for i, r in enumerate(rows):
        if i == head:
            state.append(t("finetune.state.new_head", n=num_classes) if num_classes else t("finetune.state.head"))
        elif i <= cut:
            state.append(t("finetune.state.frozen"))
        else:
            state.append(t("finetune.state.trains") if r.params else t("finetune.state.no_params"))
    output = ["×".join(map(str, r.out_shape)) for r in rows]
    return pd.DataFrame({"layer": names, "state": state, "params": [r.params for r in rows], "output": output,
                         "type": [r.type for r in rows]})  # fmt: skip


def _grey_frozen(row: pd.Series, frozen: str) -> list[str]:
    style = "color: #9a9a9a; background-color: #f1f1f1" if row["state"] == frozen else ""
    return [style] * len(row)


def _freeze_section(model: LoadedModel, num_classes: int | None, spec: str | None = None) -> str | None:
    st.subheader(t("finetune.freeze_point"))
    with st.spinner(t("finetune.counting")):
        by_point = freeze_summaries(model, num_classes)
    try:
        _predicted(model, spec, list(by_point))
    except Exception as exc:  # the chooser below works without it
        show_error(exc)
    point = _pick_freeze(list(by_point))
    s = by_point[point]
    share = percent(s.trainable_fraction, 1)
    c = st.columns(3)
    c[0].metric(t("finetune.trainable"), short_number(s.trainable), help=t("finetune.trainable.help", share=share))
    c[1].metric(t("finetune.non_trainable"), short_number(s.non_trainable), help=t("finetune.non_trainable.help"))
    c[2].metric(t("finetune.total"), short_number(s.total), help=t("finetune.total.help"))
    st.caption(t("finetune.counts", trainable=number(s.trainable), share=share, non_trainable=number(s.non_trainable),
                 total=number(s.total), buffers=number(s.frozen_buffers)))  # fmt: skip
    df = _freeze_frame(model, point, num_classes)
    styled = df.style.apply(_grey_frozen, axis=1, frozen=t("finetune.state.frozen"))
    st.dataframe(styled, hide_index=True, key="ft_ladder", height=min(35 * len(df) + 38, 740), column_config={
                     "layer": st.column_config.TextColumn(t("finetune.col.layer")),
                     "params": st.column_config.NumberColumn(t("finetune.col.params"), format="localized"),
                     "state": st.column_config.TextColumn(t("finetune.col.state"), width="medium"),
                     "output": st.column_config.TextColumn(t("finetune.col.output")),
                     "type": st.column_config.TextColumn(t("finetune.col.type"))})  # fmt: skip
    with st.expander(t("finetune.code"), key="ft_code"):
        code = freeze_snippet(model, point, num_classes)
        st.code(code, language="python")
    return None if point == "none" else point


# --------------------------------------------------------------------------- settings and training


@st.cache_data(max_entries=32, show_spinner=False)
def _data_side(paths: tuple[str, ...]) -> int | None:
    return typical_side(list(paths))


def _start_size(model: LoadedModel, summary: DataSummary | None) -> int:
    """The image size the form starts from: the data's own (e.g. 64 px for the digits), at most the model's."""
    side = _data_side(tuple(p for p, _ in summary.samples)) if summary else None
    return suggested_input_size(model.input_size[0], side, fixed=fixed_input_size(model) is not None)


def _settings_form(
    model: LoadedModel, point: str | None, ready: bool, busy: bool, start_size: int
) -> FinetuneSettings | None:
    """The settings form; returns the settings when Train was pressed. The image size starts at `start_size` (it
    follows the data: a new dataset resets it) unless the user sets it."""
    d = FinetuneSettings()
    mark = plotly_separators()[0]  # the decimal mark: a learning rate is written like 3e-05 or 0.0003

    def rate(v: float) -> str:
        return f"{v:g}".replace(".", mark)

    words = {
        "light": t("finetune.augment.light"),
        "light+flip": t("finetune.augment.flip"),
        "none": t("finetune.augment.none"),
        "cosine": t("finetune.schedule.cosine"),
        "constant": t("finetune.schedule.constant"),
        "train": t("finetune.bn.train"),
        "frozen": t("finetune.bn.frozen"),
    }
    st.subheader(t("finetune.settings"))
    with st.form("ft_settings", border=True):
        c = st.columns(4)
        epochs = c[0].number_input(t("finetune.epochs"), 1, 200, d.epochs, key="ft_epochs")
        batch = c[1].number_input(t("finetune.batch"), 1, 1024, d.batch_size, key="ft_batch")
        size_help = t("finetune.size.help", size=start_size, max=model.input_size[0])
        size = c[2].number_input(
            t("finetune.size"), 32, 1024, start_size, step=16, key=f"ft_size_{start_size}", help=size_help
        )
        max_images = c[3].number_input(t("finetune.max_images"), 0, 10_000_000, 0, step=50, key="ft_max",
                                       help=t("finetune.max_images.help"))  # fmt: skip
        c = st.columns(4)
        lr = c[0].select_slider(t("finetune.lr"), LRS, d.lr, key="ft_lr", format_func=rate)
        blr = c[1].select_slider(t("finetune.blr"), LRS, d.backbone_lr, key="ft_blr", format_func=rate)
        fractions = [round(0.05 * i, 2) for i in range(11)]  # 0 … 50 %, labelled for the language
        start_val = min(fractions, key=lambda f: abs(f - d.val_fraction))
        val = c[2].select_slider(t("finetune.val"), fractions, start_val, key="ft_val", format_func=percent)
        seed = c[3].number_input(t("finetune.seed"), 0, 2**31 - 1, d.seed, key="ft_seed")
        c = st.columns(4)
        augment = c[0].selectbox(t("finetune.augment"), ["light", "light+flip", "none"], key="ft_augment",
                                 format_func=words.get, help=t("finetune.augment.help"))  # fmt: skip
        schedule = c[1].selectbox(t("finetune.schedule"), ["cosine", "constant"], key="ft_schedule",
                                  format_func=words.get,
                                  help=t("finetune.schedule.help", share=percent(d.warmup)))  # fmt: skip
        bn = c[2].selectbox(t("finetune.bn"), ["train", "frozen"], key="ft_bn", format_func=words.get,
                            help=t("finetune.bn.help"))  # fmt: skip
        go_ = c[3].form_submit_button(t("finetune.train"), type="primary", icon=":material/model_training:",
                                      key="ft_train", disabled=busy, width="stretch")  # fmt: skip
        st.caption(t("finetune.trains_copy", spec=model.spec))
    if busy:
        st.caption(t("finetune.busy"))
    if not go_:
        return None
    if not ready:
        st.error(t("finetune.no_data"), icon=":material/error:")
        return None
    return FinetuneSettings(freeze_after=point, epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                            backbone_lr=float(blr), schedule=schedule, augment=augment, val_fraction=float(val), bn=bn,
                            input_size=int(size), max_images=int(max_images) or None, seed=int(seed))  # fmt: skip


def _progress_view(job: TrainingJob, snap: JobSnapshot) -> None:
    epochs = job.settings.epochs
    epoch = snap.steps[-1]["epoch"] if snap.steps else 1
    last = " · " + t("finetune.progress.loss", loss=number(snap.steps[-1]["loss"], 3)) if snap.steps else ""
    frac = snap.step / snap.total if snap.total else 0.0
    text = t("finetune.progress", epoch=epoch, epochs=epochs, step=number(snap.step),
             total=number(snap.total) if snap.total else "…", seconds=seconds(snap.seconds, 0)) + last  # fmt: skip
    st.progress(min(frac, 1.0), text=text if snap.total else t("finetune.preparing"))
    st.plotly_chart(progress_figure(snap), key="ft_chart")
    if snap.epochs:
        names = {"epoch": "epoch", "train_loss": "train loss", "train_acc": "train acc", "val_loss": "val loss",
                 "val_acc": "val acc", "seconds": "elapsed (s)"}  # fmt: skip
        labels = {"epoch": t("finetune.col.epoch"), "train loss": t("finetune.col.train_loss"),
                  "train acc": t("finetune.col.train_acc"), "val loss": t("finetune.col.val_loss"),
                  "val acc": t("finetune.col.val_acc"), "elapsed (s)": t("finetune.col.elapsed")}  # fmt: skip
        df = pd.DataFrame(snap.epochs)[list(names)].rename(columns=names)
        fmt = {
            k: st.column_config.NumberColumn(labels[k], format="%.3f")
            for k in ("train loss", "val loss", "elapsed (s)")
        }
        fmt |= {k: st.column_config.NumberColumn(labels[k], format="percent") for k in ("train acc", "val acc")}
        fmt["epoch"] = st.column_config.NumberColumn(labels["epoch"])
        st.dataframe(df, hide_index=True, key="ft_epochs_table", column_config=fmt)


def _live() -> None:
    """Redrawn every second while the run trains; a full rerun shows the result once it has ended."""
    job: TrainingJob | None = st.session_state.get(JOB_KEY)
    if job is None:
        return
    snap = job.snapshot()
    if snap.finished:
        st.rerun()
    if snap.stop_requested:
        st.info(t("finetune.stopping"))
    else:
        st.button(t("finetune.stop"), key="ft_stop", icon=":material/stop_circle:", on_click=job.stop,
                  help=t("finetune.stop.help"))  # fmt: skip
    _progress_view(job, snap)


_live_fragment = st.fragment(run_every=1.0)(_live)


# --------------------------------------------------------------------------- results and runs


def _page_registered(url_path: str) -> bool:
    """Whether st.navigation lists a page at `url_path` (the Compare page may not exist yet)."""
    try:
        # optional dependency: Streamlit's private script-run API, which may move (the except below falls back)
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        pages = get_script_run_ctx().pages_manager.get_pages().values()  # type: ignore[union-attr]
        return any(p.get("url_pathname") == url_path for p in pages)
    except Exception:  # private API moved: fall back to whether the page module exists
        return importlib.util.find_spec(f"explorer.ui.pages.{url_path}") is not None


def _use_as_current(path: Path, name: str) -> None:
    try:
        set_current_model(str(path))
    except Exception as exc:
        show_error(exc)
        return
    st.session_state["_ft_flash"] = t("finetune.now_current", name=name)
    st.rerun()


def _compare_with_base(info: Any) -> None:
    """Open the Compare page on this run, with its base as the current model (the Compare page's base)."""
    if info.base_spec and current_model().fingerprint != info.base_fingerprint:
        try:
            set_current_model(info.base_spec)
        except Exception as exc:
            show_error(exc)
            return
    st.switch_page(page_ref("compare", "Compare"), query_params={"tuned": info.name})


def _run_panel(info: Any, key: str) -> None:
    """Metrics, checkpoint path and actions (download, compare, use) for one saved run."""
    m = info.metrics
    c = st.columns(4)
    best = t("finetune.best_epoch", n=info.metadata.get("best_epoch")) if info.metadata.get("best_epoch") else ""
    c[0].metric(t("finetune.val_acc"), percent(m["val_acc"], 1) if isinstance(m.get("val_acc"), float) else "—",
                help=t("finetune.val_acc.help", best=best))  # fmt: skip
    c[1].metric(t("finetune.val_loss"), number(m["val_loss"], 3) if isinstance(m.get("val_loss"), float) else "—")
    c[2].metric(t("finetune.train_acc"),
                percent(m["train_acc"], 1) if isinstance(m.get("train_acc"), float) else "—")  # fmt: skip
    c[3].metric(t("finetune.epochs"), info.epochs_done, help=t("finetune.epochs_done.help",
                                                                 status=status_name(info.status)))  # fmt: skip
    more = " …" if len(info.classes) > 8 else ""
    st.markdown(t("finetune.run_facts", base=info.base_spec, point=info.freeze_after or t("finetune.none"),
                  n=len(info.classes), names=", ".join(info.classes[:8]) + more, data=info.data))  # fmt: skip
    st.code(str(info.path), language="text")
    c = st.columns(3)
    c[0].download_button(t("finetune.download"), data=info.path.read_bytes, file_name=info.path.name,
                         mime="application/octet-stream", icon=":material/download:", key=f"{key}_dl",
                         on_click="ignore", width="stretch")  # fmt: skip
    compare = _page_registered("compare")
    why = None if compare else t("finetune.no_compare")
    if c[1].button(t("finetune.compare"), key=f"{key}_cmp", icon=":material/compare:", disabled=not compare,
                   width="stretch", help=why):  # fmt: skip
        _compare_with_base(info)
    if c[2].button(t("finetune.use"), key=f"{key}_use", icon=":material/check_circle:", width="stretch"):
        _use_as_current(info.path, info.name)


def _result_section(job: TrainingJob, snap: JobSnapshot) -> None:
    info = read_run(snap.checkpoint, snap.name)
    done = len(snap.epochs)
    if snap.state == "done":
        st.success(t("finetune.finished", name=snap.name, done=done, seconds=seconds(snap.seconds, 0),
                     speed=number(snap.images_per_second, 1)), icon=":material/check_circle:")  # fmt: skip
    elif snap.state == "stopped" and info is not None:
        st.warning(t("finetune.stopped_after", done=done))
    elif snap.state == "stopped":
        st.warning(t("finetune.stopped_early"))
    else:
        show_error(snap.error or RuntimeError("the run ended without a result"))
        if info is not None:
            st.caption(t("finetune.kept", done=done))
    if snap.steps:
        _progress_view(job, snap)
    if info is not None:
        _run_panel(info, "ft_result")


def _resume_run(info: Any) -> None:
    """Continue an interrupted run in the background, with the same progress view as a new one."""
    try:
        settings = saved_settings(info.settings)
        job = TrainingJob(None, str(info.data), settings, label=info.name, resume_from=info.path).start()
    except Exception as exc:
        show_error(exc)
        return
    st.session_state[JOB_KEY] = job
    st.rerun()


def _resumable(runs: list[Any], busy: bool) -> None:
    """A Resume button for each run that did not end by itself (process died, stopped, failed) and left a state."""
    for info in runs:
        if info.status not in ("interrupted", "stopped", "failed") or not can_resume(info.path):
            continue
        total = info.settings.get("epochs", "?")
        c = st.columns([3, 1], vertical_alignment="center")
        sentence = {
            "interrupted": t("finetune.resumable.interrupted", name=info.name, done=info.epochs_done, total=total),
            "stopped": t("finetune.resumable.stopped", name=info.name, done=info.epochs_done, total=total),
            "failed": t("finetune.resumable.failed", name=info.name, done=info.epochs_done, total=total),
        }
        c[0].markdown(sentence[info.status])
        if c[1].button(t("finetune.resume"), key=f"ft_resume_{info.name}", icon=":material/play_circle:",
                       disabled=busy, width="stretch", help=t("finetune.resume.help")):  # fmt: skip
            _resume_run(info)


def _interrupted_notice() -> None:
    """At the top: the runs whose process died (a server restart, a crash) and can resume, so nobody has to find
    them at the bottom of the page."""
    names = [r.name for r in list_runs() if r.status == "interrupted" and can_resume(r.path)]
    if not names:
        return
    text = (
        t("finetune.interrupted_one", name=names[0])
        if len(names) == 1
        else t("finetune.interrupted_many", n=len(names), name=names[0])
    )
    st.warning(text, icon=":material/restart_alt:")


def _runs_section(busy: bool = False) -> None:
    st.subheader(t("finetune.runs"), anchor="previous-runs")  # the anchor the interrupted notice links to
    runs = list_runs()
    if not runs:
        st.caption(t("finetune.no_runs"))
        return
    _resumable(runs, busy)
    df = pd.DataFrame([r.as_row() for r in runs]).drop(columns=["checkpoint"])
    df["status"] = df["status"].map(status_name)
    df["freeze after"] = df["freeze after"].map(lambda p: t("finetune.none") if p == "none" else p)
    fmt: dict[str, Any] = {
        "run": st.column_config.TextColumn(t("finetune.col.run")),
        "created": st.column_config.TextColumn(t("finetune.col.created")),
        "data": st.column_config.TextColumn(t("finetune.col.data")),
        "freeze after": st.column_config.TextColumn(t("finetune.col.freeze_after")),
        "epochs": st.column_config.NumberColumn(t("finetune.col.epochs")),
        "val acc": st.column_config.NumberColumn(t("finetune.col.val_acc"), format="percent"),
        "val loss": st.column_config.NumberColumn(t("finetune.col.val_loss"), format="%.3f"),
        "train acc": st.column_config.NumberColumn(t("finetune.col.train_acc"), format="percent"),
        "classes": st.column_config.NumberColumn(t("finetune.col.classes")),
        "status": st.column_config.TextColumn(t("finetune.col.status")),
        "base": st.column_config.TextColumn(t("finetune.col.base")),
    }
    st.dataframe(df, hide_index=True, key="ft_runs", height=min(35 * len(df) + 38, 360), column_config=fmt)
    names = [r.name for r in runs]
    pick = st.selectbox(t("finetune.open_run"), names, index=None, key="ft_run_pick",
                        placeholder=t("finetune.open_run.placeholder"), help=t("finetune.open_run.help"))  # fmt: skip
    if pick in names:
        with st.container(border=True):
            _run_panel(runs[names.index(pick)], "ft_run")


# --------------------------------------------------------------------------- the page


def render() -> None:
    """The Fine-tune page."""
    st.title(t("finetune.title"))
    page_intro("finetune")
    flash = st.session_state.pop("_ft_flash", None)
    if flash:
        st.success(flash, icon=":material/check_circle:")
    _interrupted_notice()
    model = current_model()
    left, right = st.columns(2, gap="large")
    with left:
        spec, label, summary = data_section()
    with right:
        try:
            point = _freeze_section(model, len(summary.classes) if summary else None, spec)
        except Exception as exc:
            show_error(exc)
            return
    st.divider()
    job: TrainingJob | None = st.session_state.get(JOB_KEY)
    busy = job is not None and not job.snapshot().finished
    settings = _settings_form(model, point, summary is not None, busy, _start_size(model, summary))
    if settings is not None and spec is not None and not busy:
        try:
            settings.check()
            job = TrainingJob(model, spec, settings, label=f"{label}-{point or 'all'}").start()
        except Exception as exc:
            show_error(exc)
        else:
            st.session_state[JOB_KEY] = job
            st.rerun()  # redraw the form with Train disabled while the run trains
    if job is not None:
        st.subheader(t("finetune.training", name=job.name))
        snap = job.snapshot()
        if snap.finished:
            _result_section(job, snap)
        else:
            _live_fragment()
    st.divider()
    _runs_section(job is not None and not job.snapshot().finished)
