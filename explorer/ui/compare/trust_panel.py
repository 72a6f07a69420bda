"""The Compare page's trust section: how far to trust the similarities it shows (issue 24).

- A **calibrated CKA map** of base against tuned, every (layer, layer) pair on the same images, each value measured
  against a permutation null (images shuffled in one model): what depth and width alone would give is removed, so
  a high calibrated value is similarity the data supports (`explorer.trust.cka_map`).
- **Class selectivity per layer**, before and after fine-tuning, on the user's own labels, each with its chance
  level (labels shuffled): the measured generic → specific curve (`explorer.trust.selectivity`).

Heavy (a pass of both models and permutations): computed on a click, in the server's job queue, and kept for the
session per (models, images, size).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from explorer.errors import ExplorerError
from explorer.models import LoadedModel
from explorer.trust import cka_map, selectivity
from explorer.ui.widgets.queue import turn
from explorer.ui.widgets.trust_charts import cka_heatmap, selectivity_figure

CKA_IMAGES = 120
PERMUTATIONS = 100
SELECTIVITY_IMAGES = 300
STATE = "cmp_trust"


def _measure(base: LoadedModel, tuned: LoadedModel, root: Path, size: int | None, box: Any) -> dict[str, Any]:
    bar = box.progress(0.0, text="Calibrated CKA: both models over the images…")

    def step(label: str, share: float, offset: float) -> Any:
        def progress(done: int, total: int, info: Any = None) -> None:
            bar.progress(min(offset + share * done / max(total, 1), 1.0), text=f"{label} · {done} of {total}")

        return progress

    with turn("trust"):
        cmap = cka_map(base, tuned, str(root), max_images=CKA_IMAGES, permutations=PERMUTATIONS, input_size=size,
                       progress=step("Calibrated CKA", 0.5, 0.0))  # fmt: skip
        sel_base = selectivity(base, str(root), max_images=SELECTIVITY_IMAGES, input_size=size,
                               progress=step("Selectivity of the base", 0.25, 0.5))  # fmt: skip
        sel_tuned = selectivity(tuned, str(root), max_images=SELECTIVITY_IMAGES, input_size=size,
                                progress=step("Selectivity of the tuned model", 0.25, 0.75))  # fmt: skip
    bar.empty()
    return {
        "cka": cmap.to_dict(),
        "selectivity": {"base": sel_base.to_dict(units=False), "tuned": sel_tuned.to_dict(units=False)},
    }


def section(base: LoadedModel, tuned: LoadedModel, root: Path, size: int | None) -> None:
    """An expander with the calibrated CKA map and the selectivity curves, measured on a click."""
    key = (base.fingerprint, tuned.fingerprint, str(root), size)
    kept = st.session_state.get(STATE)
    with st.expander(
        "How far to trust these similarities: calibrated CKA and class selectivity", icon=":material/verified:"
    ):
        st.caption(
            "Raw CKA grows with depth and width alone; calibrated against a permutation null (images shuffled in "
            "one model), a value near 0 means 'no more similar than chance', 1 means identical. Selectivity: how "
            "much each layer's units prefer one of your classes (dotted: labels shuffled), before and after "
            "fine-tuning: the measured generic → specific curve."
        )
        if kept is None or kept.get("key") != key:
            if not st.button("Measure (about a minute)", key="cmp_trust_run", icon=":material/play_arrow:"):
                return
            try:
                kept = {"key": key, **_measure(base, tuned, root, size, st)}
            except ExplorerError as exc:
                st.error(str(exc), icon=":material/error:")
                return
            st.session_state[STATE] = kept
        st.plotly_chart(cka_heatmap(kept["cka"], "calibrated"), key="cmp_trust_cka")
        st.plotly_chart(selectivity_figure(kept["selectivity"]), key="cmp_trust_sel")
