"""The first visit: one button that fine-tunes the current model on the digits demo, compares and sweeps.

So the Compare page never opens empty: a newcomer presses *Run the demo* and, with progress all along, gets a
fine-tuned run (fast settings: 64 px, two epochs), its comparison with the base on the held-out digits, and the
measured freeze sweep; the page then opens on them (their settings go in the URL like any other view).
"""

from __future__ import annotations

import time
from typing import Any

import streamlit as st

from explorer.data import resolve_data
from explorer.models import LoadedModel
from explorer.transfer.compare import compare
from explorer.transfer.finetune import FinetuneSettings, finetune
from explorer.transfer.runs import finish_run, reserve_run
from explorer.ui.common import get_model
from explorer.ui.compare import sweep_panel
from explorer.ui.compare.setup import comparison_settings, data_signature, set_param
from explorer.ui.compare.store import comparison_key, put_report

DATA = "demo:digits"
FINETUNE = FinetuneSettings(input_size=64, epochs=2)  # every layer trainable: the model the comparison reads
COMPARE = {"images": 400, "input": 64, "probes": True}
SWEEP = {"epochs": 2, "input": 64, "images": 0}


def _bar(box: Any, what: str) -> Any:
    bar = box.progress(0.0, text=what)
    last = [0.0]

    def update(done: int, total: int, info: Any = None) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.25:
            return
        last[0] = now
        bar.progress(min(done / max(total, 1), 1.0), text=f"{what} · {done} of {total}")

    return update


def run_demo(base: LoadedModel) -> str:
    """Fine-tune, compare and sweep on the digits demo, storing each result where the page looks; the run's name."""
    root = resolve_data(DATA)
    name, checkpoint = reserve_run("demo-digits", data=DATA)
    with st.status("Running the demo on handwritten digits…", expanded=True) as status:
        status.write("**1 · Fine-tuning** a copy of the model (every layer trainable, 64 px, 2 epochs)")
        state = "failed"
        try:
            result = finetune(base, DATA, FINETUNE, out=checkpoint, progress=_bar(st, "Fine-tuning"))
            state = "done"
        finally:
            finish_run(checkpoint, state)
        status.write(f"Held-out accuracy {100 * result.metadata['metrics']['val_acc']:.1f} %.")
        status.write("**2 · Comparing** base and tuned, block by block, on the held-out digits")
        tuned = get_model(str(checkpoint))
        settings = comparison_settings(COMPARE["images"], COMPARE["input"], COMPARE["probes"])
        report = compare(base, tuned, str(root), progress=_bar(st, "Comparing"), **settings)
        report.data["source"] = DATA
        key = comparison_key(base.fingerprint, tuned.fingerprint, DATA, data_signature(str(root)), settings)
        put_report(key, report)
        status.write("**3 · The freeze sweep**: held-out accuracy at each freeze point, by two routes")
        sweep_panel.run(base, DATA, root, SWEEP, st)
        status.update(label="The demo is ready.", state="complete")
    return name


def demo_panel(base: LoadedModel, *, key: str = "cmp_demo") -> None:
    """The first-visit box: what the demo does, and the button."""
    st.info(
        "**First visit?** *Run the demo* fine-tunes the current model on 1,797 handwritten digits (fast settings), "
        "compares it with the original on digits it never trained on, and measures where to freeze. It takes a "
        "couple of minutes on a laptop CPU, with progress.",
        icon=":material/rocket_launch:",
    )
    if not st.button("Run the demo", key=key, type="primary", icon=":material/play_circle:"):
        return
    name = run_demo(base)
    for param, value in [
        ("tuned", name),
        ("data", DATA),
        ("images", COMPARE["images"]),
        ("input", COMPARE["input"]),
        ("probes", int(COMPARE["probes"])),
        ("sw_epochs", SWEEP["epochs"]),
        ("sw_input", SWEEP["input"]),
        ("sw_images", SWEEP["images"]),
    ]:
        set_param(param, value)
    st.session_state["cmp_toast"] = "The demo is ready: before and after, and the measured sweep."
    st.rerun()
