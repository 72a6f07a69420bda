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
from explorer.models.freeze import FreezeSummary
from explorer.transfer.advice.guide import GuideCell, why
from explorer.transfer.reporting.report import ComparisonReport, Recommendation
from explorer.transfer.sweeping.prefix import feature_extractor_code
from explorer.transfer.training.linear_head import train_classifier
from explorer.ui.errors import error_message
from explorer.ui.i18n import number, percent, short_number, t
from explorer.ui.links import page_ref
from explorer.ui.messages import localize
from explorer.ui.progress import labelled_progress, steps_of
from explorer.ui.session import model_key
from explorer.ui.widgets.freeze import NONE, freeze_snippet, freeze_summaries
from explorer.ui.widgets.queue import turn

GUIDE_CELLS = {  # (data size, similarity to ImageNet) → the cell's key
    ("small", "similar"): "compare.guide.small_similar",
    ("small", "different"): "compare.guide.small_different",
    ("large", "similar"): "compare.guide.large_similar",
    ("large", "different"): "compare.guide.large_different",
}
FROZEN_STYLE = "color: #9a9a9a; background-color: #f1f1f1"


# --------------------------------------------------------------------------- cached engine calls


def summaries(model: LoadedModel, num_classes: int | None) -> dict[str, FreezeSummary]:
    """Freeze point ('none' or a ladder layer before the head) → its parameter counts, in depth order."""
    with st.spinner(t("compare.freeze.counting")):
        return freeze_summaries(model, num_classes)


@st.cache_data(max_entries=32, show_spinner=False)
def _extractor(_model: LoadedModel, key: tuple[Any, ...], point: str, num_classes: int | None) -> str:
    del key
    return feature_extractor_code(_model, point, num_classes)


def extractor_code(model: LoadedModel, point: str, num_classes: int | None = None) -> str:
    """The linear route's PyTorch code at `point` (cached per model and point)."""
    return _extractor(model, model_key(model), point, num_classes)


def code_for(model: LoadedModel, point: str, num_classes: int | None = None) -> str:
    """The PyTorch snippet that freezes `model` after `point`, with a new head for `num_classes` (cached)."""
    return freeze_snippet(model, point, num_classes)


# --------------------------------------------------------------------------- pieces (plain data, tested)


def count(n: int) -> str:
    return short_number(n)


def keras_summary(s: FreezeSummary) -> str:
    """The three lines Keras prints under a model summary."""
    return t(
        "compare.freeze.keras",
        total=number(s.total),
        trainable=number(s.trainable),
        frozen=number(s.non_trainable),
        buffers=number(s.frozen_buffers),
    )


def _fmt(value: Any, digits: int, significant: bool = False) -> str:
    """A measurement for the table in the session's language ('—' where there is none); `significant`: `digits`
    significant digits (like '{:.2g}'), else `digits` decimals."""
    if not (isinstance(value, (int, float)) and math.isfinite(value)):
        return "—"
    if significant:
        text = f"{value:.{digits}g}"
        if "e" in text:  # scientific: Babel keeps it as it is, with the language's decimal mark
            mantissa, exponent = text.split("e")
            return f"{number(float(mantissa))}e{exponent}"
        return number(float(text))
    return number(value, digits)


def ladder_frame(report: ComparisonReport, point: str) -> pd.DataFrame:
    """One row per ladder block: frozen (at or before `point`), trainable, or the new head; with its measurements
    as display strings ('—' where there is none)."""
    cut = next((r.index for r in report.layers if r.name == point), -1)
    rows = []
    for r in report.layers:
        state = (
            t("compare.freeze.state.head")
            if r.new_head
            else t("compare.freeze.state.frozen")
            if r.index <= cut
            else t("compare.freeze.state.trainable")
            if r.params
            else "—"
        )
        rows.append(
            {
                "layer": r.name,
                "params": int(r.params),
                "state": state,
                "CKA": _fmt(r.cka, 3),
                "95 % interval": f"[{_fmt(r.cka_low, 2)}, {_fmt(r.cka_high, 2)}]",
                "tuned w + base BN": _fmt(r.cka_weights, 3),
                "base w + tuned BN": _fmt(r.cka_stats, 3),
                "Δw RMS": _fmt(r.weight_rms, 2, significant=True),
                "Δw / step budget": _fmt(r.weight_per_step, 2, significant=True),
                "BN shift": _fmt(r.bn_shift, 2),
                "probe %": _fmt(100 * r.probe_acc if r.probe_acc is not None else None, 0),
                "CKA class token": _fmt(r.cka_class_token, 3),
            }
        )
    frame = pd.DataFrame(rows)
    if all(r.cka_class_token is None for r in report.layers):  # a CNN (or no token layer): no such column
        frame = frame.drop(columns="CKA class token")
    return frame


COLUMNS = {  # the ladder table's columns (kept in English in the data) → (header key, help key or None)
    "layer": ("compare.freeze.col.layer", None),
    "state": ("compare.freeze.col.state", None),
    "CKA": ("compare.freeze.col.cka", None),
    "95 % interval": ("compare.freeze.col.interval", "compare.freeze.help.interval"),
    "CKA class token": ("compare.freeze.col.class_token", "compare.freeze.help.class_token"),
    "tuned w + base BN": ("compare.freeze.col.tuned_w", "compare.freeze.help.tuned_w"),
    "base w + tuned BN": ("compare.freeze.col.base_w", "compare.freeze.help.base_w"),
    "Δw RMS": ("compare.freeze.col.dw_rms", "compare.freeze.help.dw_rms"),
    "Δw / step budget": ("compare.freeze.col.dw_budget", "compare.freeze.help.dw_budget"),
    "BN shift": ("compare.freeze.col.bn_shift", "compare.freeze.help.bn_shift"),
    "probe %": ("compare.freeze.col.probe", "compare.freeze.help.probe"),
}


def guide_markdown(guide: GuideCell) -> str:
    """The 2×2 guide as a markdown table with the user's cell highlighted."""

    def cell(size: str, sim: str) -> str:
        text = t(GUIDE_CELLS[(size, sim)])
        mine = (size, sim) == (guide.size, guide.similarity)
        yours = t("compare.guide.yours", text=text)
        return f":orange-background[**{yours}**]" if mine else text

    similar, different = t("compare.guide.similar"), t("compare.guide.different")
    little, lots = t("compare.guide.little"), t("compare.guide.lots")
    return (
        f"| | {similar} | {different} |\n|---|---|---|\n"
        f"| **{little}** | {cell('small', 'similar')} | {cell('small', 'different')} |\n"
        f"| **{lots}** | {cell('large', 'similar')} | {cell('large', 'different')} |"
    )


def guide_why(guide: GuideCell) -> str:
    """What placed the user's case in its cell (one sentence, in the session's language)."""
    return localize(why(guide))


def advice(rec: Recommendation) -> tuple[str, str]:
    """(kind, markdown) of the advice box: 'withheld' (no freeze point: why and what to try), 'sweep' or
    'prediction'."""
    if rec.source == "withheld":
        tries = "".join(f"\n- {localize(line)}" for line in rec.try_next)
        what = "\n\n**" + t("compare.advice.try") + f"**{tries}" if tries else ""
        return "withheld", t("compare.advice.withheld", reason=localize(rec.reason)) + what
    point = f"`{rec.freeze_after}`"
    every = not rec.freeze_after  # nothing frozen: "train every layer", not "freeze up to nothing"
    if rec.source == "sweep":
        if rec.route == "linear":
            key = "compare.advice.measured_linear"
        else:
            key = "compare.advice.measured_all" if every else "compare.advice.measured"
        text = t(key, point=point, reason=localize(rec.reason))
        explained = "\n\n" + t("compare.advice.explanation", text=localize(rec.agreement)) if rec.agreement else ""
        return "sweep", text + explained
    key = "compare.advice.predicted_all" if every else "compare.advice.predicted"
    text = t(key, point=point, reason=localize(rec.reason))
    unstable = next((c for c in rec.caveats if c.startswith("Unstable")), None)
    return "prediction", text + (f"\n\n**{localize(unstable)}**" if unstable else "")


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
            t("compare.train.done", images=number(made["images"]), accuracy=percent(made["accuracy"], 1)),
            icon=":material/check_circle:",
        )
        st.download_button(
            t("compare.train.download"),
            made["bytes"],
            file_name=f"classifier_{point.replace('.', '_')}.safetensors",
            mime="application/octet-stream",
            icon=":material/download:",
            on_click="ignore",
            key=f"{key}_weights",
        )
        return
    if not st.button(
        t("compare.train"),
        key=f"{key}_train_linear",
        type="primary",
        icon=":material/model_training:",
        help=t("compare.train.help", point=point, source=source),
    ):
        return
    progress = labelled_progress(
        st, t("compare.train.features") + "…", lambda d, n, _: t("compare.train.features") + f" · {steps_of(d, n)}"
    )

    try:
        with turn("linear classifier"):
            trained = train_classifier(
                model, source, point, input_size=int(size) if isinstance(size, int) else None, progress=progress
            )
    except ExplorerError as exc:
        st.error(error_message(exc), icon=":material/error:")
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
    """Draw the freeze panel for `point` ('none' or a layer) of `model` given a comparison `report`: the ladder with
    the frozen layers greyed, the counts of the route the advice names, the advice and the 2×2 guide, and the code."""
    classes = len(report.data.get("classes") or []) or None
    table = summaries(model, classes)
    s = table.get(point) or table[NONE]
    rec = report.recommendation
    linear = rec.source == "sweep" and rec.route == "linear" and (rec.freeze_after or NONE) == point
    st.subheader(t("compare.freeze.up_to", point=point) if point != NONE else t("compare.freeze.train_all"))
    left, right = st.columns([1.1, 1], gap="large")
    with left:
        _ladder_table(report, point, key)
    with right:
        _counts(s, rec, point, linear)
        _advice_box(rec, point)
        with st.expander(t("compare.evidence")):
            st.markdown("\n".join(f"- {localize(e)}" for e in [*rec.evidence, *rec.caveats, *report.warnings]))
    _code_section(model, report, point, classes, linear, query=query, key=key)


def _ladder_table(report: ComparisonReport, point: str, key: str) -> None:
    df = ladder_frame(report, point)
    frozen_rows = df["state"] == t("compare.freeze.state.frozen")
    headers = {"params": t("compare.freeze.col.params"), **{k: t(label) for k, (label, _) in COLUMNS.items()}}
    shown = df.rename(columns=headers)  # the columns in the session's language (the data keeps English names)
    styled = shown.style.apply(lambda row: [FROZEN_STYLE if frozen_rows[row.name] else ""] * len(row), axis=1)
    st.dataframe(
        styled,
        hide_index=True,
        height=min(35 * (len(df) + 1) + 3, 780),
        key=f"{key}_ladder",
        column_config={
            headers["params"]: st.column_config.NumberColumn(format="localized"),
            **{
                headers[k]: st.column_config.TextColumn(help=t(tip))
                for k, (_, tip) in COLUMNS.items()
                if tip and k in df.columns
            },
        },
    )


def _counts(s: FreezeSummary, rec: Recommendation, point: str, linear: bool) -> None:
    """The trainable, frozen and total counts of the route the advice names: on the linear route, the frozen network
    up to the point plus one linear layer; else the fine-tune's own counts and its Keras-style summary."""
    c = st.columns(3)
    if linear:
        frozen = s.total - s.trainable
        total = frozen + rec.trainable
        c[0].metric(
            t("compare.freeze.trainable"),
            count(rec.trainable),
            help=t("compare.freeze.trainable.linear", n=number(rec.trainable)),
        )
        c[1].metric(
            t("compare.freeze.non_trainable"),
            count(frozen),
            help=t("compare.freeze.non_trainable.frozen", n=number(frozen)),
        )
        c[2].metric(t("compare.freeze.total"), count(total), help=number(total))
        share = rec.trainable / max(total, 1)
        st.progress(share, text=t("compare.freeze.share_linear", share=percent(share, 2), point=point))
        return
    c[0].metric(t("compare.freeze.trainable"), count(s.trainable), help=number(s.trainable))
    c[1].metric(t("compare.freeze.non_trainable"), count(s.non_trainable), help=number(s.non_trainable))
    c[2].metric(t("compare.freeze.total"), count(s.total), help=number(s.total))
    st.progress(s.trainable_fraction, text=t("compare.freeze.share", share=percent(s.trainable_fraction, 1)))
    st.code(keras_summary(s), language="text")


def _advice_box(rec: Recommendation, point: str) -> None:
    kind, text = advice(rec)
    if kind == "withheld":
        st.warning(text, icon=":material/block:")
    else:
        chosen = (rec.freeze_after or NONE) == point
        box = st.success if chosen else st.info
        mine = " *(" + t("compare.advice.your_choice") + ")*" if chosen else ""
        box(text + mine, icon=":material/recommend:")
    st.markdown(t("compare.guide.title"))
    st.markdown(guide_markdown(rec.guide))
    st.caption(f"{localize(rec.guide.advice)} {guide_why(rec.guide)}")


def _code_section(
    model: LoadedModel,
    report: ComparisonReport,
    point: str,
    classes: int | None,
    linear: bool,
    *,
    query: dict[str, str],
    key: str,
) -> None:
    """The code for the point (the linear route's extractor and classifier, or the fine-tune's freeze), its download,
    and the button that takes the point to the Fine-tune page."""
    rec = report.recommendation
    if linear:
        code = extractor_code(model, point, classes)
        st.markdown(t("compare.code.linear"))
        st.code(code, language="python")
        with st.expander(t("compare.code.sklearn")):
            st.code(rec.code, language="python")
        filename, label = f"classifier_{point.replace('.', '_')}.py", t("compare.code.download_classifier")
        train_action(model, report, point, key)
    else:
        code = code_for(model, point, classes)
        st.markdown(t("compare.code.freeze"))
        st.code(code, language="python")
        filename, label = f"freeze_{point.replace('.', '_')}.py", t("compare.code.download_freeze")
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
        t("compare.send.instead") if linear else t("compare.send"),
        key=f"{key}_send",
        icon=":material/model_training:",
        disabled=not available,
        type="secondary" if linear else "primary",
    ):
        send_to_finetune(point, query)
    if not available:
        c[2].caption(t("compare.send.unavailable"))
