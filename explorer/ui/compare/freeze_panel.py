"""The freeze panel: a freeze point as a greyed ladder, Keras-style parameter counts, the advice and why (measured,
predicted or withheld), the classic transfer-learning 2×2 guide with the user's case marked, and the PyTorch code
that freezes there.

Counts come from `freeze_table` (one trace for every candidate, cached per model fingerprint and
class count), and each point's code from `freeze_code` (cached per point), so moving the freeze point only
redraws: nothing is traced again for a point seen before.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any

import pandas as pd
import streamlit as st

from explorer.models import LoadedModel
from explorer.transfer.freeze import FreezeSummary, freeze_code, freeze_table
from explorer.transfer.guide import GuideCell, why
from explorer.transfer.report import ComparisonReport, Recommendation
from explorer.ui.common import model_key, page_ref

NONE = "none"  # the freeze point that trains every layer
GUIDE_CELLS = {
    ("small", "similar"): "Linear classifier on the top features",
    ("small", "different"): "Classifier on earlier layers",
    ("large", "similar"): "Fine-tune the top layers",
    ("large", "different"): "Fine-tune most / all layers",
}
FROZEN_STYLE = "color: #9a9a9a; background-color: #f1f1f1"


# --------------------------------------------------------------------------- cached engine calls


@st.cache_data(max_entries=16, show_spinner="Counting parameters for every freeze point…")
def _table(_model: LoadedModel, key: tuple[Any, ...], num_classes: int | None) -> dict[str, FreezeSummary]:
    del key
    return {(s.freeze_after or NONE): s for s in freeze_table(_model, num_classes=num_classes)}


def summaries(model: LoadedModel, num_classes: int | None) -> dict[str, FreezeSummary]:
    """Freeze point ('none' or a ladder layer before the head) → its parameter counts, in depth order."""
    return _table(model, model_key(model), num_classes)


@st.cache_data(max_entries=256, show_spinner=False)
def _code(_model: LoadedModel, key: tuple[Any, ...], point: str, num_classes: int | None) -> str:
    del key
    return freeze_code(_model, None if point == NONE else point, num_classes=num_classes)


def code_for(model: LoadedModel, point: str, num_classes: int | None = None) -> str:
    """The PyTorch snippet that freezes `model` after `point`, with a new head for `num_classes` (cached)."""
    return _code(model, model_key(model), point, num_classes)


# --------------------------------------------------------------------------- pieces (plain data, tested)


def count(n: int) -> str:
    return f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} k" if n >= 1e3 else str(n)


def keras_summary(s: FreezeSummary) -> str:
    """The three lines Keras prints under a model summary."""
    return (
        f"Total params: {s.total:,}\nTrainable params: {s.trainable:,}\nNon-trainable params: {s.non_trainable:,}\n"
        f"+ {s.frozen_buffers:,} BatchNorm statistics frozen"
    )


def _fmt(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, (int, float)) and math.isfinite(value) else "—"


def ladder_frame(report: ComparisonReport, point: str) -> pd.DataFrame:
    """One row per ladder block: frozen (at or before `point`), trainable, or the new head; with its measurements
    as display strings ('—' where there is none)."""
    cut = next((r.index for r in report.layers if r.name == point), -1)
    rows = []
    for r in report.layers:
        state = "new head" if r.new_head else "frozen" if r.index <= cut else "trainable" if r.params else "—"
        rows.append(
            {
                "layer": r.name,
                "params": int(r.params),
                "state": state,
                "CKA": _fmt(r.cka, "{:.3f}"),
                "95 % interval": f"[{_fmt(r.cka_low, '{:.2f}')}, {_fmt(r.cka_high, '{:.2f}')}]",
                "tuned w + base BN": _fmt(r.cka_weights, "{:.3f}"),
                "base w + tuned BN": _fmt(r.cka_stats, "{:.3f}"),
                "Δw RMS": _fmt(r.weight_rms, "{:.2g}"),
                "Δw / step budget": _fmt(r.weight_per_step, "{:.2g}"),
                "BN shift": _fmt(r.bn_shift, "{:.2f}"),
                "probe %": _fmt(100 * r.probe_acc if r.probe_acc is not None else None, "{:.0f}"),
                "CKA class token": _fmt(r.cka_class_token, "{:.3f}"),
            }
        )
    frame = pd.DataFrame(rows)
    if all(r.cka_class_token is None for r in report.layers):  # a CNN (or no token layer): no such column
        frame = frame.drop(columns="CKA class token")
    return frame


HELP = {
    "95 % interval": "Delete-one-image jackknife interval of the CKA, on held-out images",
    "CKA class token": "Token layers: CKA of the class token alone (the CKA column pools the patch tokens)",
    "tuned w + base BN": "CKA with the base of the tuned weights run with the base's BatchNorm statistics",
    "base w + tuned BN": "CKA with the base of the base weights run with the tuned BatchNorm statistics",
    "Δw RMS": "Absolute RMS change of the block's parameters",
    "Δw / step budget": "RMS change ÷ the learning rate summed over the steps: the fraction of the distance Adam "
    "could move each parameter (comparable across blocks of any scale)",
    "BN shift": "RMS over channels of the running mean's shift, in base standard deviations",
    "probe %": "Linear-probe accuracy on the base features (cross-validated)",
}


def guide_markdown(guide: GuideCell) -> str:
    """The 2×2 guide as a markdown table with the user's cell highlighted."""

    def cell(size: str, sim: str) -> str:
        text = GUIDE_CELLS[(size, sim)]
        return f":orange-background[**{text} ← your case**]" if (size, sim) == (guide.size, guide.similarity) else text

    return (
        "| | similar to ImageNet | different from ImageNet |\n|---|---|---|\n"
        f"| **little data** | {cell('small', 'similar')} | {cell('small', 'different')} |\n"
        f"| **lots of data** | {cell('large', 'similar')} | {cell('large', 'different')} |"
    )


def guide_why(guide: GuideCell) -> str:
    """What placed the user's case in its cell (one sentence)."""
    return why(guide)


def advice(rec: Recommendation) -> tuple[str, str]:
    """(kind, markdown) of the advice box: 'withheld' (no freeze point: why and what to try), 'sweep' or
    'prediction'."""
    if rec.source == "withheld":
        tries = "".join(f"\n- {t}" for t in rec.try_next)
        return "withheld", f"**No freeze point.** {rec.reason}" + (f"\n\n**What to try**{tries}" if tries else "")
    point = rec.freeze_after or "nothing (train every layer)"
    route = " and train a linear classifier on it" if rec.route == "linear" else ""
    if rec.source == "sweep":
        text = f"**Measured: freeze up to `{point}`{route}.** {rec.reason}"
        if rec.route == "linear":
            text += (
                f" The linear route trains {rec.trainable:,} parameters; the counts beside are those of "
                f"fine-tuning after {point}."
            )
        return "sweep", text + (f"\n\n*Explanation:* {rec.agreement}" if rec.agreement else "")
    text = f"**Predicted (no sweep has run): freeze up to `{point}`.** {rec.reason}"
    unstable = next((c for c in rec.caveats if c.startswith("Unstable")), None)
    return "prediction", text + (f"\n\n**{unstable}**" if unstable else "")


# --------------------------------------------------------------------------- the panel


def finetune_page_available() -> bool:
    return importlib.util.find_spec("explorer.ui.pages.finetune") is not None


def send_to_finetune(point: str, query: dict[str, str]) -> None:
    """Open the Fine-tune page with this freeze point (and the model and data) in its URL."""
    st.switch_page(page_ref("finetune", "Fine-tune"), query_params={**query, "freeze": point})


def render_panel(
    model: LoadedModel, report: ComparisonReport, point: str, *, query: dict[str, str], key: str = "fp"
) -> None:
    """Draw the freeze panel for `point` ('none' or a layer) of `model` given a comparison `report`."""
    table = summaries(model, len(report.data.get("classes") or []) or None)
    s = table.get(point) or table[NONE]
    rec = report.recommendation
    st.subheader(f"Freeze up to {point}" if point != NONE else "Train every layer")
    left, right = st.columns([1.1, 1], gap="large")
    with left:
        df = ladder_frame(report, point)
        styled = df.style.apply(lambda row: [FROZEN_STYLE if row["state"] == "frozen" else ""] * len(row), axis=1)
        st.dataframe(
            styled,
            hide_index=True,
            height=min(35 * (len(df) + 1) + 3, 780),
            key=f"{key}_ladder",
            column_config={
                "params": st.column_config.NumberColumn("params", format="localized"),
                **{k: st.column_config.TextColumn(k, help=v) for k, v in HELP.items()},
            },
        )
    with right:
        c = st.columns(3)
        c[0].metric("Trainable params", count(s.trainable), help=f"{s.trainable:,}")
        c[1].metric("Non-trainable params", count(s.non_trainable), help=f"{s.non_trainable:,}")
        c[2].metric("Total params", count(s.total), help=f"{s.total:,}")
        st.progress(s.trainable_fraction, text=f"{100 * s.trainable_fraction:.1f} % of the parameters train")
        st.code(keras_summary(s), language="text")
        kind, text = advice(rec)
        if kind == "withheld":
            st.warning(text, icon=":material/block:")
        else:
            chosen = (rec.freeze_after or NONE) == point
            box = st.success if chosen else st.info
            box(text + (" *(your choice)*" if chosen else ""), icon=":material/recommend:")
        st.markdown("**Where your case sits** (the classic transfer-learning 2×2 guide, placed from measurements)")
        st.markdown(guide_markdown(rec.guide))
        st.caption(f"{rec.guide.advice} {guide_why(rec.guide)}")
        with st.expander("Evidence and caveats"):
            st.markdown("\n".join(f"- {e}" for e in [*rec.evidence, *rec.caveats, *report.warnings]))
    if rec.route == "linear" and rec.freeze_after == point:
        with st.expander(f"The measured option: a linear classifier on {point} (PyTorch + scikit-learn)"):
            st.code(rec.code, language="python")
    code = code_for(model, point, len(report.data.get("classes") or []) or None)
    st.markdown("**PyTorch: freeze there** (the copy button is at the code's top right)")
    st.code(code, language="python")
    c = st.columns([1, 1, 2], vertical_alignment="center")
    c[0].download_button(
        "Download freeze.py",
        code.encode(),
        file_name=f"freeze_{point.replace('.', '_')}.py",
        mime="text/x-python",
        icon=":material/download:",
        on_click="ignore",
        key=f"{key}_code_download",
    )
    available = finetune_page_available()
    if c[1].button(
        "Fine-tune with this freeze point",
        key=f"{key}_send",
        icon=":material/model_training:",
        disabled=not available,
        type="primary",
    ):
        send_to_finetune(point, query)
    if not available:
        c[2].caption("The Fine-tune page is not part of this app build, so the freeze point cannot be sent there.")
