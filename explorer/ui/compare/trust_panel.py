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
from explorer.ui.errors import error_message
from explorer.ui.i18n import t
from explorer.ui.progress import labelled_progress, steps_of
from explorer.ui.widgets.queue import turn
from explorer.ui.widgets.trust_charts import cka_heatmap, selectivity_figure

CKA_IMAGES = 120
PERMUTATIONS = 100
SELECTIVITY_IMAGES = 300
STATE = "cmp_trust"


def _measure(base: LoadedModel, tuned: LoadedModel, root: Path, size: int | None, box: Any) -> dict[str, Any]:
    bar = box.progress(0.0, text=t("compare.trust.starting"))

    def step(label: str, share: float, offset: float) -> Any:
        return labelled_progress(
            box, label, lambda d, n, _: f"{label} · {steps_of(d, n)}", bar=bar, offset=offset, share=share, every_s=0
        )

    with turn("trust"):
        cmap = cka_map(base, tuned, str(root), max_images=CKA_IMAGES, permutations=PERMUTATIONS, input_size=size,
                       progress=step(t("compare.trust.cka"), 0.5, 0.0))  # fmt: skip
        sel_base = selectivity(base, str(root), max_images=SELECTIVITY_IMAGES, input_size=size,
                               progress=step(t("compare.trust.sel_base"), 0.25, 0.5))  # fmt: skip
        sel_tuned = selectivity(tuned, str(root), max_images=SELECTIVITY_IMAGES, input_size=size,
                                progress=step(t("compare.trust.sel_tuned"), 0.25, 0.75))  # fmt: skip
    bar.empty()
    return {
        "cka": cmap.to_dict(),
        "selectivity": {"base": sel_base.to_dict(units=False), "tuned": sel_tuned.to_dict(units=False)},
    }


def section(base: LoadedModel, tuned: LoadedModel, root: Path, size: int | None) -> None:
    """An expander with the calibrated CKA map and the selectivity curves, measured on a click."""
    key = (base.fingerprint, tuned.fingerprint, str(root), size)
    kept = st.session_state.get(STATE)
    with st.expander(t("compare.trust.title"), icon=":material/verified:"):
        st.caption(t("compare.trust.caption"))
        if kept is None or kept.get("key") != key:
            if not st.button(t("compare.trust.measure"), key="cmp_trust_run", icon=":material/play_arrow:"):
                return
            try:
                kept = {"key": key, **_measure(base, tuned, root, size, st)}
            except ExplorerError as exc:
                st.error(error_message(exc), icon=":material/error:")
                return
            st.session_state[STATE] = kept
        st.plotly_chart(cka_heatmap(kept["cka"], "calibrated"), key="cmp_trust_cka")
        names = {"base": t("compare.trust.base"), "tuned": t("compare.trust.tuned")}
        curves = {names.get(k, k): v for k, v in kept["selectivity"].items()}
        st.plotly_chart(selectivity_figure(curves), key="cmp_trust_sel")
