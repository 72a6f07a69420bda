"""The first visit: one button that fine-tunes the current model on the digits demo, compares and sweeps.

So the Compare page never opens empty: a newcomer presses *Run the demo* and, with progress all along, gets a
fine-tuned run (fast settings: 64 px, two epochs), its comparison with the base on the held-out digits, and the
measured freeze sweep; the page then opens on them (their settings go in the URL like any other view).

The pipeline is the engine's (:func:`explorer.transfer.study.run_demo`); this module shows it. A finished demo is
recorded once for the whole server (:func:`explorer.transfer.study.put_demo`: the run, the comparison and sweep
settings, when it finished). Any later session that opens Compare without a fine-tuned model of its own in mind
(no ``tuned=`` in its URL or memory), and the tour's Compare steps, open the demo's view with the demo's settings,
whatever the session's own defaults; *Run the demo* stays there to run it again.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import streamlit as st

from explorer.models import LoadedModel
from explorer.transfer.study import DEMO, stored_demo
from explorer.transfer.study import run_demo as study_run_demo
from explorer.ui.compare import sweep_panel
from explorer.ui.compare.setup import param, set_param
from explorer.ui.i18n import number, percent, t
from explorer.ui.progress import labelled_progress
from explorer.ui.session import get_model

PLAN = DEMO  # what the demo runs (explorer.transfer.study.DemoPlan): the digits, 64 px, two epochs, one seed
DATA = PLAN.data


def _bar(box: Any, what: str) -> Any:
    def label(done: int, total: int, info: Any) -> str:
        return t("compare.demo.progress", what=what, done=number(done), total=number(total))

    return labelled_progress(box, what, label)


def run_demo(base: LoadedModel) -> str:
    """Run the demo (:func:`explorer.transfer.study.run_demo`: fine-tune, compare and sweep, each stored where the
    page looks, then recorded for every later session), its steps told in a status box; the run's name."""
    with st.status(t("compare.demo.running"), expanded=True) as status:

        def on_step(step: str, info: dict[str, Any]) -> None:
            if step == "finetune":
                status.write(t("compare.demo.step1", size=info["input_size"], epochs=number(info["epochs"])))
            elif step == "finetuned":
                status.write(t("compare.demo.accuracy", accuracy=percent(info["accuracy"], 1)))
            elif step == "compare":
                status.write(t("compare.demo.step2"))
            elif step == "sweep":
                status.write(t("compare.demo.step3"))

        def progress_for(step: str) -> Any:
            if step == "sweep":
                return sweep_panel.progress_in(st)
            return _bar(st, t("compare.demo.finetuning") if step == "finetune" else t("compare.demo.comparing"))

        manifest = study_run_demo(base, open_model=get_model, progress_for=progress_for, on_step=on_step, plan=PLAN)
        status.update(label=t("compare.demo.ready"), state="complete")
    return str(manifest["run"])


def demo_query(manifest: dict[str, Any]) -> dict[str, str]:
    """The Compare page's URL parameters that open the demo's view: its run, data, comparison and sweep settings."""
    c, s = manifest["compare"], manifest["sweep"]
    return {
        "tuned": str(manifest["run"]),
        "data": str(manifest.get("data", DATA)),
        "images": str(c["images"]),
        "input": str(c["input"]),
        "probes": str(int(bool(c["probes"]))),
        "sw_epochs": str(s["epochs"]),
        "sw_input": str(s["input"]),
        "sw_images": str(s["images"]),
    }


def open_demo(base: LoadedModel) -> dict[str, Any] | None:
    """On a visit with no fine-tuned model chosen (none in the URL or this session's memory), put the stored demo's
    settings in the URL, so the page shows its comparison, recommendation and sweep; the manifest, or None."""
    if param("tuned") is not None:
        return None
    manifest = stored_demo(base)
    if manifest is not None:
        for name, value in demo_query(manifest).items():
            set_param(name, value)
    return manifest


def _when(manifest: dict[str, Any]) -> str:
    """'finished 2024-05-06 07:08' (or 'finished earlier' when the manifest has no readable date), in the
    session's language."""
    try:
        date = datetime.fromtimestamp(float(manifest["finished"])).strftime("%Y-%m-%d %H:%M")
    except (KeyError, TypeError, ValueError, OverflowError, OSError):
        return t("compare.demo.finished_earlier")
    return t("compare.demo.finished", date=date)


def demo_panel(base: LoadedModel, *, key: str = "cmp_demo", first: bool = True) -> None:
    """The demo's box: on a visit with no fine-tuned model chosen, the stored demo's view (with a button to run it
    again); on a first visit (`first`: no runs at all), what the demo does and the button; otherwise nothing."""
    manifest = open_demo(base) or stored_demo(base)
    showing = manifest is not None and param("tuned") == manifest["run"]
    if showing and manifest is not None:
        st.caption(t("compare.demo.showing", run=manifest["run"], finished=_when(manifest)))
        label = t("compare.demo.again")
    elif first:
        st.info(t("compare.demo.first", digits=number(1797)), icon=":material/rocket_launch:")
        label = t("compare.demo.run")
    else:
        return
    if not st.button(label, key=key, type="primary" if not showing else "secondary", icon=":material/play_circle:"):
        return
    name = run_demo(base)
    manifest = stored_demo(base)
    for param_name, value in (demo_query(manifest) if manifest else {"tuned": name}).items():
        set_param(param_name, value)
    st.session_state["cmp_toast"] = t("compare.demo.toast")
    st.rerun()
