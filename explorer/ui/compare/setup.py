"""The Compare page's choices: the fine-tuned model, the images, the comparison settings, all kept in the URL.

The URL is the source of truth (a link reopens the view); the session remembers the page's last values for
visits without them (e.g. from the sidebar). Values from a link are checked: files and folders only inside the
app's folders, numbers in range; a bad value gets one warning and the default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from explorer.data import resolve_data
from explorer.data.fence import refusal
from explorer.errors import ExplorerError, msg
from explorer.models import LoadedModel
from explorer.transfer.study import comparison_settings, open_pair
from explorer.transfer.study import data_signature as study_signature
from explorer.transfer.sweeping.sweep import EPOCHS as SWEEP_EPOCHS
from explorer.transfer.training.runs import RunInfo, get_run, list_runs, runs_dir
from explorer.ui.errors import error_message, show_error
from explorer.ui.i18n import number, percent, t
from explorer.ui.paths import allowed_path, fenced_path, fenced_spec
from explorer.ui.session import get_model
from explorer.ui.uploads import save_upload

UPLOAD = "Upload a checkpoint…"
DATA_SOURCES = {"demo:digits": "Demo: handwritten digits", "demo:shapes": "Demo: shapes"}
FOLDER = "A folder on the server"
INPUT_SIZES = (0, 64, 96, 128, 160, 224)  # 0: the tuned model's own input size
DEFAULT_IMAGES = 200
LAST = "cmp_last"  # session_state: the page's last URL state, for visits without it in the URL


# --------------------------------------------------------------------------- URL state


def param(name: str) -> str | None:
    """The URL's value, else this session's last one on this page."""
    value = st.query_params.get(name)
    return value if value is not None else st.session_state.get(LAST, {}).get(name)


def set_param(name: str, value: Any) -> None:
    """Write a value to the URL and to the session's memory (None removes it)."""
    last = st.session_state.setdefault(LAST, {})
    if value is None:
        st.query_params.pop(name, None)
        last.pop(name, None)
        return
    text = str(value)
    last[name] = text
    if st.query_params.get(name) != text:
        st.query_params[name] = text


def from_widget(name: str, key: str) -> None:
    set_param(name, st.session_state[key])


# --------------------------------------------------------------------------- choosing the tuned model


def _run_label(runs: dict[str, RunInfo], value: str) -> str:
    if value == UPLOAD:
        return t("compare.upload_option")
    run = runs.get(value)
    if run is None:
        return Path(value).name
    acc = t("compare.run_val_acc", accuracy=percent(run.val_acc)) if run.val_acc is not None else ""
    return f"{run.name} · {run.data or '?'}{acc} · {run.status}"


def _on_tuned() -> None:
    """The tuned picker changed: a run or checkpoint goes in the URL; 'upload' is remembered in the session only."""
    value = st.session_state["cmp_tuned"]
    for name in ("tfp", "data"):  # another model: its own fingerprint, and by default its own training data
        set_param(name, None)
    if value == UPLOAD:
        st.query_params.pop("tuned", None)
        st.session_state.setdefault(LAST, {})["tuned"] = UPLOAD
    else:
        set_param("tuned", value)


def choose_tuned(base: LoadedModel) -> tuple[LoadedModel, RunInfo | None] | None:
    runs = {r.name: r for r in list_runs()}
    wanted = param("tuned")
    if wanted and wanted not in runs and wanted != UPLOAD:
        run = get_run(wanted)
        if run is not None:
            runs[run.name] = run
        else:
            try:
                fenced_spec(wanted, msg("The link's tuned model"))
            except ExplorerError as exc:
                st.warning(t("compare.not_a_run", error=error_message(exc)), icon=":material/link_off:")
                wanted = None
    options = [*runs, *([wanted] if wanted and wanted not in runs and wanted != UPLOAD else []), UPLOAD]
    value = wanted or (next(iter(runs)) if runs else UPLOAD)
    st.session_state["cmp_tuned"] = value
    st.selectbox(
        t("compare.tuned"),
        options,
        key="cmp_tuned",
        format_func=lambda v: _run_label(runs, v),
        on_change=_on_tuned,
        help=t("compare.tuned.help", folder=runs_dir()),
    )
    if value == UPLOAD:
        st.query_params.pop("tuned", None)
        st.session_state.setdefault(LAST, {})["tuned"] = UPLOAD
        if not runs:
            st.info(t("compare.no_runs", arch=base.arch), icon=":material/info:")
        up = st.file_uploader(t("compare.checkpoint"), type=["safetensors", "pt", "pth", "bin"], key="cmp_upload")
        if up is None:
            return None
        try:
            path = save_upload(up.name, up.getvalue())
        except Exception as exc:
            show_error(exc)
            return None
        set_param("tuned", str(path))
        st.rerun()
    run = runs.get(value)
    path = run.path if run else Path(value)
    try:
        with st.spinner(t("compare.loading_tuned")):
            _, tuned = open_pair(fenced_spec(str(path)), open_model=get_model, base=base)
    except Exception as exc:
        show_error(exc)
        return None
    set_param("tuned", value)
    old = st.query_params.get("tfp")
    if old and not tuned.fingerprint.startswith(old):
        st.warning(
            t("compare.weights_changed", name=Path(value).name, fingerprint=tuned.short_fingerprint, old=old),
            icon=":material/history:",
        )
    set_param("tfp", tuned.fingerprint[:12])
    return tuned, run


# --------------------------------------------------------------------------- data and settings


def choose_data(
    run: RunInfo | None, tuned: LoadedModel | None, *, name: str = "data", key: str = "cmp_data"
) -> tuple[str, Path] | None:
    """The images to compare on: by default those the tuned model was trained on (its run, or its metadata).

    `name` is the URL parameter and `key` the widget (the sweep on its own keeps its images apart, `sw_data`).
    """
    sources = {"demo:digits": t("compare.data.digits"), "demo:shapes": t("compare.data.shapes")}
    meta = tuned.metadata if tuned is not None else {}
    meta_data = meta.get("data") if isinstance(meta.get("data"), dict) else {}
    own = (run.data if run else None) or meta_data.get("source") or None
    if own:
        sources = {own: t("compare.data.own", data=own), **{k: v for k, v in sources.items() if k != own}}
    wanted = param(name) or own or "demo:digits"
    if wanted not in sources and wanted != FOLDER:
        if wanted.startswith("demo:") or allowed_path(wanted, "dir"):
            sources[wanted] = wanted
        else:
            why = refusal(wanted, msg("The link's images"))
            st.warning(t("compare.data.using", why=why, data=own or "demo:digits"), icon=":material/link_off:")
            wanted = own or "demo:digits"
    options = [*sources, FOLDER]
    st.session_state[key] = wanted
    choice = st.selectbox(
        t("compare.data"),
        options,
        key=key,
        format_func=lambda v: t("compare.data.folder") if v == FOLDER else sources.get(v, v),
        on_change=from_widget,
        args=(name, key),
        help=t("compare.data.help"),
    )
    if choice == FOLDER:
        typed = st.text_input(t("compare.folder"), key=f"{key}_folder", placeholder=t("compare.folder.placeholder"))
        if not typed.strip():
            st.info(t("compare.folder.info"), icon=":material/folder:")
            return None
        choice = typed.strip()
    try:
        if not choice.startswith("demo:"):
            choice = str(fenced_path(choice, msg("The folder"), "dir"))
        with st.spinner(t("compare.preparing", data=choice)):
            root = resolve_data(choice)
    except Exception as exc:
        show_error(exc)
        return None
    set_param(name, choice)
    return choice, root


def int_param(name: str, default: int, lo: int, hi: int) -> int:
    text = param(name)
    try:
        value = int(text) if text is not None else default
    except ValueError:
        value = -1
    if not lo <= value <= hi:
        st.warning(
            t("compare.bad_number", name=name, value=repr(text), lo=lo, hi=hi, default=default),
            icon=":material/link_off:",
        )
        value = default
    return value


def choose_settings(tuned: LoadedModel) -> dict[str, Any]:
    images = int_param("images", DEFAULT_IMAGES, 8, 100_000)
    size = int_param("input", 0, 0, 1024)
    size = size if size in INPUT_SIZES else 0
    probes = param("probes") != "0"
    st.session_state.update(cmp_images=images, cmp_input=size, cmp_probes=probes)
    with st.expander(
        t(
            "compare.settings.on" if probes else "compare.settings.off",
            images=number(images),
            size=size or tuned.input_size[0],
        )
    ):
        c = st.columns(3)
        c[0].number_input(
            t("compare.settings.images"),
            8,
            100_000,
            step=50,
            key="cmp_images",
            on_change=from_widget,
            args=("images", "cmp_images"),
            help=t("compare.settings.images.help"),
        )
        c[1].selectbox(
            t("compare.settings.input"),
            INPUT_SIZES,
            key="cmp_input",
            on_change=from_widget,
            args=("input", "cmp_input"),
            format_func=lambda s: f"{s}" if s else t("compare.settings.input.own"),
        )
        c[2].toggle(
            t("compare.settings.probes"),
            key="cmp_probes",
            help=t("compare.settings.probes.help"),
            on_change=lambda: set_param("probes", int(st.session_state["cmp_probes"])),
        )
    for name, value in (("images", images), ("input", size), ("probes", int(probes))):
        set_param(name, value)
    return comparison_settings(images, size, probes)


SWEEP_SIZES = (64, 96, 128, 160, 224)


def sweep_defaults(data: str, model: LoadedModel) -> dict[str, int]:
    """Most epochs (early stopping ends most sooner), input size and image cap of the page's sweep: small inputs for
    the demos, the model's own otherwise."""
    size = 64 if data.startswith("demo:") else int(model.input_size[0])
    return {"epochs": SWEEP_EPOCHS, "input": size if size in SWEEP_SIZES else 224, "images": 0}


def choose_sweep_settings(data: str, model: LoadedModel) -> dict[str, int]:
    """The sweep's budget from the URL (`sw_epochs`, `sw_input`, `sw_images`) with an expander to change it."""
    d = sweep_defaults(data, model)
    epochs = int_param("sw_epochs", d["epochs"], 1, 50)
    size = int_param("sw_input", d["input"], 32, 1024)
    size = size if size in SWEEP_SIZES else d["input"]
    images = int_param("sw_images", d["images"], 0, 1_000_000)
    st.session_state.update(sw_epochs=epochs, sw_input=size, sw_images=images)
    shown = number(images) if images else t("compare.sweep_settings.all")
    with st.expander(t("compare.sweep_settings", epochs=epochs, size=size, images=shown)):
        c = st.columns(3)
        c[0].number_input(
            t("compare.sweep_settings.epochs"),
            1,
            50,
            key="sw_epochs",
            on_change=from_widget,
            args=("sw_epochs", "sw_epochs"),
        )
        c[1].selectbox(
            t("compare.settings.input"),
            SWEEP_SIZES,
            key="sw_input",
            on_change=from_widget,
            args=("sw_input", "sw_input"),
        )
        c[2].number_input(
            t("compare.sweep_settings.images"),
            0,
            1_000_000,
            step=100,
            key="sw_images",
            on_change=from_widget,
            args=("sw_images", "sw_images"),
            help=t("compare.sweep_settings.images.help"),
        )
    for name, value in (("sw_epochs", epochs), ("sw_input", size), ("sw_images", images)):
        set_param(name, value)
    return {"epochs": epochs, "input": size, "images": images}


@st.cache_data(ttl=30, show_spinner=False)
def data_signature(root: str) -> str:
    """The image folder's signature (:func:`explorer.transfer.study.data_signature`), cached for 30 s: a warm rerun
    does not list the folder again."""
    return study_signature(root)
