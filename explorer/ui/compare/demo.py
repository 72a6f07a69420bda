"""The first visit: one button that fine-tunes the current model on the digits demo, compares and sweeps.

So the Compare page never opens empty: a newcomer presses *Run the demo* and, with progress all along, gets a
fine-tuned run (fast settings: 64 px, two epochs), its comparison with the base on the held-out digits, and the
measured freeze sweep; the page then opens on them (their settings go in the URL like any other view).

A finished demo is recorded once for the whole server (:func:`store.put_demo`: the run, the comparison and sweep
settings, when it finished). Any later session that opens Compare without a fine-tuned model of its own in mind
(no ``tuned=`` in its URL or memory), and the tour's Compare steps, open the demo's view with the demo's settings,
whatever the session's own defaults; *Run the demo* stays there to run it again.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import streamlit as st

from explorer.data import resolve_data
from explorer.models import LoadedModel
from explorer.transfer.comparison.compare import compare
from explorer.transfer.study import comparison_key, get_demo, put_demo, put_report
from explorer.transfer.training.finetune import FinetuneSettings, finetune
from explorer.transfer.training.runs import finish_run, get_run, reserve_run
from explorer.ui.compare import sweep_panel
from explorer.ui.compare.setup import comparison_settings, data_signature, param, set_param
from explorer.ui.i18n import number, percent, t
from explorer.ui.progress import labelled_progress
from explorer.ui.session import get_model

DATA = "demo:digits"
FINETUNE = FinetuneSettings(input_size=64, epochs=2)  # every layer trainable: the model the comparison reads
COMPARE = {"images": 400, "input": 64, "probes": True}
SWEEP = {"epochs": 2, "input": 64, "images": 0}


def _bar(box: Any, what: str) -> Any:
    def label(done: int, total: int, info: Any) -> str:
        return t("compare.demo.progress", what=what, done=number(done), total=number(total))

    return labelled_progress(box, what, label)


def run_demo(base: LoadedModel) -> str:
    """Fine-tune, compare and sweep on the digits demo, storing each result where the page looks; the run's name."""
    started = time.time()
    root = resolve_data(DATA)
    name, checkpoint = reserve_run("demo-digits", data=DATA)
    with st.status(t("compare.demo.running"), expanded=True) as status:
        status.write(t("compare.demo.step1", size=FINETUNE.input_size, epochs=number(FINETUNE.epochs)))
        state = "failed"
        try:
            result = finetune(base, DATA, FINETUNE, out=checkpoint, progress=_bar(st, t("compare.demo.finetuning")))
            state = "done"
        finally:
            finish_run(checkpoint, state)
        status.write(t("compare.demo.accuracy", accuracy=percent(result.metadata["metrics"]["val_acc"], 1)))
        status.write(t("compare.demo.step2"))
        tuned = get_model(str(checkpoint))
        settings = comparison_settings(COMPARE["images"], COMPARE["input"], COMPARE["probes"])
        report = compare(base, tuned, str(root), progress=_bar(st, t("compare.demo.comparing")), **settings)
        report.data["source"] = DATA
        key = comparison_key(base.fingerprint, tuned.fingerprint, DATA, data_signature(str(root)), settings)
        put_report(key, report)
        status.write(t("compare.demo.step3"))
        sweep_panel.run(base, DATA, root, SWEEP, st, seeds=1)  # one seed: the demo stays quick
        record_demo(base, name, tuned.fingerprint, started)
        status.update(label=t("compare.demo.ready"), state="complete")
    return name


def record_demo(base: LoadedModel, run: str, tuned_fingerprint: str, started: float) -> dict[str, Any]:
    """Record the finished demo for every later session: its run, data, comparison and sweep settings, when."""
    now = time.time()
    manifest = {
        "run": run,
        "data": DATA,
        "base_spec": base.spec,
        "tuned_fingerprint": tuned_fingerprint,
        "compare": dict(COMPARE),
        "sweep": dict(SWEEP),
        "finetune": {"input_size": FINETUNE.input_size, "epochs": FINETUNE.epochs},
        "finished": now,
        "seconds": round(now - started, 1),
    }
    put_demo(base.fingerprint, manifest)
    return manifest


def stored_demo(base: LoadedModel) -> dict[str, Any] | None:
    """The last finished demo on `base` whose run still exists (a deleted run leaves no demo to show), or None."""
    manifest = get_demo(base.fingerprint)
    if manifest is None or get_run(manifest["run"]) is None:
        return None
    return manifest


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
