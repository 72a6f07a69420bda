"""Fine-tune page: choose data and a freeze point, train a copy of the current model with live progress, keep runs.

Training runs in a background thread (:class:`explorer.transfer.runs.TrainingJob`), so the page redraws its progress
every second, other pages stay usable, and Stop ends the run before its next step with the last complete
epoch's checkpoint kept. ``?freeze=LAYER`` preselects the freeze point (the Compare page sends one) and
``?data=demo:NAME`` a demo dataset.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from explorer.data import typical_side
from explorer.layers import fixed_input_size
from explorer.models import LoadedModel
from explorer.transfer.finetune import FinetuneSettings
from explorer.transfer.freeze import FreezeSummary, freeze_code, freeze_table
from explorer.transfer.resume import can_resume, saved_settings
from explorer.transfer.runs import JobSnapshot, TrainingJob, list_runs, read_run
from explorer.transfer.settings import suggested_input_size
from explorer.ui.common import current_model, get_ladder, model_key, show_error
from explorer.ui.i18n import page_intro
from explorer.ui.widgets.dataset_panel import DataSummary, data_section
from explorer.ui.widgets.figures import progress_figure

JOB_KEY = "ft_job"  # session_state: the session's TrainingJob (running or finished)
LRS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


# --------------------------------------------------------------------------- freeze point


def _short(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


@st.cache_data(max_entries=16, show_spinner="Counting parameters for every freeze point…")
def _freeze_table(_model: LoadedModel, key: tuple[Any, ...], num_classes: int | None) -> list[FreezeSummary]:
    del key
    return freeze_table(_model, num_classes=num_classes)


@st.cache_data(max_entries=64, show_spinner=False)
def _freeze_code(_model: LoadedModel, key: tuple[Any, ...], point: str | None, num_classes: int | None) -> str:
    del key
    return freeze_code(_model, point, num_classes=num_classes)


def _pick_freeze(options: list[str]) -> str:
    """The freeze point selectbox, seeded from ``?freeze=`` (a layer name or 'none') and kept in the URL."""
    state = st.session_state
    wanted = st.query_params.get("freeze")
    if wanted and wanted != state.get("_ft_freeze_url"):
        state["_ft_freeze_url"] = wanted
        if wanted in options:
            state["ft_freeze"] = wanted
        else:
            st.warning(f"The link's freeze point {wanted!r} is not a layer of this model; pick one below.")
    if state.get("ft_freeze") not in options:
        state["ft_freeze"] = "none"
    point = st.selectbox(
        "Freeze everything up to and including",
        options,
        key="ft_freeze",
        format_func=lambda p: "none (train every layer)" if p == "none" else p,
        help="Frozen layers keep their weights and their BatchNorm statistics; the rest and a new head train.",
    )
    if st.query_params.get("freeze") != point:
        st.query_params["freeze"] = point
        state["_ft_freeze_url"] = point
    return point


def _freeze_frame(model: LoadedModel, point: str, num_classes: int | None) -> pd.DataFrame:
    rows = get_ladder(model, "blocks")
    names = [r.name for r in rows]
    cut = names.index(point) if point in names else -1
    head = max((i for i, r in enumerate(rows) if r.params > 0), default=-1)
    state = []
    for i, r in enumerate(rows):
        if i == head:
            state.append(f"new head ({num_classes} classes)" if num_classes else "head (retrained)")
        elif i <= cut:
            state.append("frozen")
        else:
            state.append("trains" if r.params else "no parameters")
    output = ["×".join(map(str, r.out_shape)) for r in rows]
    return pd.DataFrame({"layer": names, "state": state, "params": [r.params for r in rows], "output": output,
                         "type": [r.type for r in rows]})  # fmt: skip


def _grey_frozen(row: pd.Series) -> list[str]:
    style = "color: #9a9a9a; background-color: #f1f1f1" if row["state"] == "frozen" else ""
    return [style] * len(row)


def _freeze_section(model: LoadedModel, num_classes: int | None) -> str | None:
    st.subheader("2 · Freeze point")
    table = _freeze_table(model, model_key(model), num_classes)
    by_point = {s.freeze_after or "none": s for s in table}
    point = _pick_freeze(list(by_point))
    s = by_point[point]
    c = st.columns(3)
    c[0].metric("Trainable", _short(s.trainable), help=f"{s.trainable_fraction:.1%} of the parameters")
    c[1].metric("Non-trainable", _short(s.non_trainable), help="Frozen weights; BatchNorm statistics stay fixed too.")
    c[2].metric("Total", _short(s.total), help="With the new head sized for this dataset's classes.")
    st.caption(f"**{s.trainable:,}** trainable ({s.trainable_fraction:.1%}) · **{s.non_trainable:,}** non-trainable · "
               f"**{s.total:,}** total parameters; {s.frozen_buffers:,} BatchNorm statistics frozen.")  # fmt: skip
    df = _freeze_frame(model, point, num_classes)
    st.dataframe(df.style.apply(_grey_frozen, axis=1), hide_index=True, key="ft_ladder",
                 height=min(35 * len(df) + 38, 740), column_config={
                     "params": st.column_config.NumberColumn("params", format="localized"),
                     "state": st.column_config.TextColumn("state", width="medium")})  # fmt: skip
    with st.expander("PyTorch code that freezes here"):
        code = _freeze_code(model, model_key(model), None if point == "none" else point, num_classes)
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
    st.subheader("3 · Settings")
    with st.form("ft_settings", border=True):
        c = st.columns(4)
        epochs = c[0].number_input("Epochs", 1, 200, d.epochs, key="ft_epochs")
        batch = c[1].number_input("Batch size", 1, 1024, d.batch_size, key="ft_batch")
        size_help = (
            f"Starts at your images' own size ({start_size} px here), at most the model's {model.input_size[0]} px: "
            "larger than the images costs time and adds nothing."
        )
        size = c[2].number_input(
            "Image size (px)", 32, 1024, start_size, step=16, key=f"ft_size_{start_size}", help=size_help
        )
        max_images = c[3].number_input("Max images (0 = all)", 0, 10_000_000, 0, step=50, key="ft_max",
                                       help="A class-balanced random subset for a quick run.")  # fmt: skip
        c = st.columns(4)
        lr = c[0].select_slider("Learning rate (new head)", LRS, d.lr, key="ft_lr", format_func=lambda v: f"{v:g}")
        blr = c[1].select_slider("Learning rate (trainable layers)", LRS, d.backbone_lr, key="ft_blr",
                                 format_func=lambda v: f"{v:g}")  # fmt: skip
        val = c[2].slider("Validation fraction", 0.0, 0.5, d.val_fraction, 0.05, key="ft_val")
        seed = c[3].number_input("Seed", 0, 2**31 - 1, d.seed, key="ft_seed")
        c = st.columns(4)
        augment = c[0].selectbox("Augmentation", ["light", "light+flip", "none"], key="ft_augment",
                                 help="light: random 80–100 % crops, ±10 % colour; flips change digits.")  # fmt: skip
        schedule = c[1].selectbox("Schedule", ["cosine", "constant"], key="ft_schedule",
                                  help=f"After a warm-up over the first {d.warmup:.0%} of the steps.")  # fmt: skip
        bn = c[2].selectbox("BatchNorm statistics", ["train", "frozen"], key="ft_bn",
                            format_func=lambda v: "re-estimated on your data" if v == "train" else "kept from the base",
                            help="Trainable BatchNorm layers re-estimate their running statistics on your images, "
                            "or keep the pretrained ones (their scale and shift still train).")  # fmt: skip
        go_ = c[3].form_submit_button("Train", type="primary", icon=":material/model_training:", key="ft_train",
                                      disabled=busy, width="stretch")  # fmt: skip
        st.caption(f"Trains a copy of **`{model.spec}`** with a new head (change the model on the Model page); the "
                   "epoch with the lowest held-out loss is kept, and the held-out split is saved with it.")  # fmt: skip
    if busy:
        st.caption("A run is in progress; stop it or wait for it to finish before starting another.")
    if not go_:
        return None
    if not ready:
        st.error("Choose a dataset that can be used (see above) before training.", icon=":material/error:")
        return None
    return FinetuneSettings(freeze_after=point, epochs=int(epochs), batch_size=int(batch), lr=float(lr),
                            backbone_lr=float(blr), schedule=schedule, augment=augment, val_fraction=float(val), bn=bn,
                            input_size=int(size), max_images=int(max_images) or None, seed=int(seed))  # fmt: skip


def _progress_view(job: TrainingJob, snap: JobSnapshot) -> None:
    epochs = job.settings.epochs
    epoch = snap.steps[-1]["epoch"] if snap.steps else 1
    last = f" · loss {snap.steps[-1]['loss']:.3f}" if snap.steps else ""
    frac = snap.step / snap.total if snap.total else 0.0
    text = f"Epoch {epoch}/{epochs} · step {snap.step}/{snap.total or '…'} · {snap.seconds:.0f} s{last}"
    st.progress(min(frac, 1.0), text=text if snap.total else "Preparing the data and a copy of the model…")
    st.plotly_chart(progress_figure(snap), key="ft_chart")
    if snap.epochs:
        names = {"epoch": "epoch", "train_loss": "train loss", "train_acc": "train acc", "val_loss": "val loss",
                 "val_acc": "val acc", "seconds": "elapsed (s)"}  # fmt: skip
        df = pd.DataFrame(snap.epochs)[list(names)].rename(columns=names)
        fmt = {k: st.column_config.NumberColumn(format="%.3f") for k in ("train loss", "val loss", "elapsed (s)")}
        fmt |= {k: st.column_config.NumberColumn(format="percent") for k in ("train acc", "val acc")}
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
        st.info("Stopping before the next step; the last complete epoch's checkpoint is kept.")
    else:
        st.button("Stop", key="ft_stop", icon=":material/stop_circle:", on_click=job.stop,
                  help="Ends the run before its next step; the last complete epoch's checkpoint stays.")  # fmt: skip
    _progress_view(job, snap)


_live_fragment = st.fragment(run_every=1.0)(_live)


# --------------------------------------------------------------------------- results and runs


def _page_registered(url_path: str) -> bool:
    """Whether st.navigation lists a page at `url_path` (the Compare page may not exist yet)."""
    try:
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        pages = get_script_run_ctx().pages_manager.get_pages().values()  # type: ignore[union-attr]
        return any(p.get("url_pathname") == url_path for p in pages)
    except Exception:  # private API moved: fall back to whether the page module exists
        import importlib.util

        return importlib.util.find_spec(f"explorer.ui.pages.{url_path}") is not None


def _use_as_current(path: Path, name: str) -> None:
    from explorer.ui.common import set_current_model

    try:
        set_current_model(str(path))
    except Exception as exc:
        show_error(exc)
        return
    st.session_state["_ft_flash"] = f"Run **{name}** is now the current model (see the sidebar)."
    st.rerun()


def _compare_with_base(info: Any) -> None:
    """Open the Compare page on this run, with its base as the current model (the Compare page's base)."""
    from explorer.ui.common import page_ref, set_current_model

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
    best = f"epoch {info.metadata.get('best_epoch')}, " if info.metadata.get("best_epoch") else ""
    c[0].metric("Held-out accuracy", f"{m['val_acc']:.1%}" if isinstance(m.get("val_acc"), float) else "—",
                help=f"Of the kept epoch ({best}lowest held-out loss), on images never trained on.")  # fmt: skip
    c[1].metric("Held-out loss", f"{m['val_loss']:.3f}" if isinstance(m.get("val_loss"), float) else "—")
    c[2].metric("Training accuracy", f"{m['train_acc']:.1%}" if isinstance(m.get("train_acc"), float) else "—")
    c[3].metric("Epochs", info.epochs_done, help=f"status: {info.status}")
    more = " …" if len(info.classes) > 8 else ""
    st.markdown(f"Base `{info.base_spec}` · freeze after `{info.freeze_after or 'none'}` · {len(info.classes)} "
                f"classes ({', '.join(info.classes[:8])}{more}) · data `{info.data}`")  # fmt: skip
    st.code(str(info.path), language="text")
    c = st.columns(3)
    c[0].download_button("Download .safetensors", data=info.path.read_bytes, file_name=info.path.name,
                         mime="application/octet-stream", icon=":material/download:", key=f"{key}_dl",
                         on_click="ignore", width="stretch")  # fmt: skip
    compare = _page_registered("compare")
    why = None if compare else "The Compare page is not part of this app yet."
    if c[1].button("Compare with base", key=f"{key}_cmp", icon=":material/compare:", disabled=not compare,
                   width="stretch", help=why):  # fmt: skip
        _compare_with_base(info)
    if c[2].button("Use as current model", key=f"{key}_use", icon=":material/check_circle:", width="stretch"):
        _use_as_current(info.path, info.name)


def _result_section(job: TrainingJob, snap: JobSnapshot) -> None:
    info = read_run(snap.checkpoint, snap.name)
    done = len(snap.epochs)
    if snap.state == "done":
        st.success(f"Run **{snap.name}** finished: {done} epoch(s) in {snap.seconds:.0f} s "
                   f"({snap.images_per_second:.1f} images/s).", icon=":material/check_circle:")  # fmt: skip
    elif snap.state == "stopped" and info is not None:
        st.warning(f"Stopped after {done} complete epoch(s); the checkpoint of epoch {done} is kept and listed below.")
    elif snap.state == "stopped":
        st.warning("Stopped before the first epoch finished, so no checkpoint was saved.")
    else:
        show_error(snap.error or RuntimeError("the run ended without a result"))
        if info is not None:
            st.caption(f"The checkpoint of the last complete epoch ({done}) is kept.")
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
        c[0].markdown(f"**{info.name}** is {info.status} after epoch {info.epochs_done} of {total}.")
        if c[1].button("Resume", key=f"ft_resume_{info.name}", icon=":material/play_circle:", disabled=busy,
                       width="stretch", help="Continue from its last complete epoch with the optimizer state it "
                       "saved, in the same folder and on the same held-out split."):  # fmt: skip
            _resume_run(info)


def _interrupted_notice() -> None:
    """At the top: the runs whose process died (a server restart, a crash) and can resume, so nobody has to find
    them at the bottom of the page."""
    names = [r.name for r in list_runs() if r.status == "interrupted" and can_resume(r.path)]
    if not names:
        return
    which = f"**{names[0]}** was" if len(names) == 1 else f"{len(names)} runs (**{names[0]}**, …) were"
    st.warning(
        f"{which} interrupted: the process training it ended before the last epoch. Every finished epoch is "
        "saved; **Resume** it under [Previous runs](#previous-runs).",
        icon=":material/restart_alt:",
    )


def _runs_section(busy: bool = False) -> None:
    st.subheader("Previous runs")
    runs = list_runs()
    if not runs:
        st.caption("No runs yet. Each run is saved under the app's cache folder and listed here.")
        return
    _resumable(runs, busy)
    df = pd.DataFrame([r.as_row() for r in runs]).drop(columns=["checkpoint"])
    fmt = {k: st.column_config.NumberColumn(format="percent") for k in ("val acc", "train acc")}
    fmt["val loss"] = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(df, hide_index=True, key="ft_runs", height=min(35 * len(df) + 38, 360), column_config=fmt)
    names = [r.name for r in runs]
    pick = st.selectbox("Open a run", names, index=None, key="ft_run_pick", placeholder="Choose a run…",
                        help="Download it, compare it with its base, or make it the current model.")  # fmt: skip
    if pick in names:
        with st.container(border=True):
            _run_panel(runs[names.index(pick)], "ft_run")


# --------------------------------------------------------------------------- the page


def render() -> None:
    """The Fine-tune page."""
    st.title("Fine-tune")
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
            point = _freeze_section(model, len(summary.classes) if summary else None)
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
        st.subheader(f"Training · {job.name}")
        snap = job.snapshot()
        if snap.finished:
            _result_section(job, snap)
        else:
            _live_fragment()
    st.divider()
    _runs_section(job is not None and not job.snapshot().finished)
