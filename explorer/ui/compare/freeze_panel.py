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

from explorer.errors import ExplorerError
from explorer.models import LoadedModel
from explorer.transfer.freeze import FreezeSummary, freeze_code, freeze_table
from explorer.transfer.guide import GuideCell, why
from explorer.transfer.linear_head import train_classifier
from explorer.transfer.prefix import feature_extractor_code
from explorer.transfer.report import ComparisonReport, Recommendation
from explorer.ui.common import model_key, page_ref
from explorer.ui.widgets.queue import turn

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


@st.cache_data(max_entries=32, show_spinner=False)
def _extractor(_model: LoadedModel, key: tuple[Any, ...], point: str, num_classes: int | None) -> str:
    del key
    return feature_extractor_code(_model, point, num_classes)


def extractor_code(model: LoadedModel, point: str, num_classes: int | None = None) -> str:
    """The linear route's PyTorch code at `point` (cached per model and point)."""
    return _extractor(model, model_key(model), point, num_classes)


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


def train_action(model: LoadedModel, report: ComparisonReport, point: str, key: str) -> None:
    """'Train this classifier': fit the measured linear route on every image of the sweep's data, then offer the
    weights in the layout of the code above (a heavy job: it takes its turn in the server's queue)."""
    sweep = report.sweep
    if sweep is None:
        return
    source = str(sweep.data.get("source") or "")
    size = sweep.settings.get("input_size")
    done_key = f"{key}_trained"
    made = st.session_state.get(done_key)
    if made is not None and made.get("point") == point and made.get("source") == source:
        st.success(
            f"**Classifier trained** on {made['images']:,} images: {100 * made['accuracy']:.1f} % by 5-fold "
            "cross-validation (images each fold never trained on). Load it into the code above with "
            "`classifier.load_state_dict(safetensors.torch.load_file('classifier.safetensors'), strict=False)`.",
            icon=":material/check_circle:",
        )
        st.download_button(
            "Download classifier.safetensors",
            made["bytes"],
            file_name=f"classifier_{point.replace('.', '_')}.safetensors",
            mime="application/octet-stream",
            icon=":material/download:",
            on_click="ignore",
            key=f"{key}_weights",
        )
        return
    if not st.button(
        "Train this classifier",
        key=f"{key}_train_linear",
        type="primary",
        icon=":material/model_training:",
        help=f"Fit the linear classifier on {point}'s features of every image of {source} (seconds to minutes).",
    ):
        return
    bar = st.progress(0.0, text="Features of every image…")

    def progress(done: int, total: int, info: Any = None) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"Features of every image · {done} of {total}")

    try:
        with turn("linear classifier"):
            trained = train_classifier(
                model, source, point, input_size=int(size) if isinstance(size, int) else None, progress=progress
            )
    except ExplorerError as exc:
        st.error(str(exc), icon=":material/error:")
        return
    st.session_state[done_key] = {
        "point": point,
        "source": source,
        "images": trained.images,
        "accuracy": trained.accuracy,
        "bytes": trained.to_bytes(),
    }
    st.rerun()


def render_panel(
    model: LoadedModel, report: ComparisonReport, point: str, *, query: dict[str, str], key: str = "fp"
) -> None:
    """Draw the freeze panel for `point` ('none' or a layer) of `model` given a comparison `report`."""
    classes = len(report.data.get("classes") or []) or None
    table = summaries(model, classes)
    s = table.get(point) or table[NONE]
    rec = report.recommendation
    linear = rec.source == "sweep" and rec.route == "linear" and (rec.freeze_after or NONE) == point
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
        if linear:  # the route the advice names drives the counts: the frozen network up to the point + one layer
            frozen = s.total - s.trainable
            total = frozen + rec.trainable
            c[0].metric("Trainable params", count(rec.trainable), help=f"{rec.trainable:,} (the linear classifier)")
            c[1].metric("Non-trainable params", count(frozen), help=f"{frozen:,} (the frozen network)")
            c[2].metric("Total params", count(total), help=f"{total:,}")
            share = rec.trainable / max(total, 1)
            st.progress(share, text=f"{100 * share:.2f} % of the parameters train: a linear classifier on {point}")
        else:
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
    if linear:
        code = extractor_code(model, point, classes)
        st.markdown(
            "**PyTorch: the measured option, a frozen feature extractor and one linear layer** (the copy button is "
            "at the code's top right)"
        )
        st.code(code, language="python")
        with st.expander("The same with scikit-learn's logistic regression (what the sweep fitted)"):
            st.code(rec.code, language="python")
        filename, label = f"classifier_{point.replace('.', '_')}.py", "Download classifier.py"
        train_action(model, report, point, key)
    else:
        code = code_for(model, point, classes)
        st.markdown("**PyTorch: freeze there** (the copy button is at the code's top right)")
        st.code(code, language="python")
        filename, label = f"freeze_{point.replace('.', '_')}.py", "Download freeze.py"
    c = st.columns([1, 1, 2], vertical_alignment="center")
    c[0].download_button(
        label,
        code.encode(),
        file_name=filename,
        mime="text/x-python",
        icon=":material/download:",
        on_click="ignore",
        key=f"{key}_code_download",
    )
    available = finetune_page_available()
    if c[1].button(
        "Fine-tune instead" if linear else "Fine-tune with this freeze point",
        key=f"{key}_send",
        icon=":material/model_training:",
        disabled=not available,
        type="secondary" if linear else "primary",
    ):
        send_to_finetune(point, query)
    if not available:
        c[2].caption("The Fine-tune page is not part of this app build, so the freeze point cannot be sent there.")
