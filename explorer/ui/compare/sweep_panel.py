"""The Compare page's freeze sweep: run (or resume) it with progress, and show what it measured and chose.

The sweep needs only the base model and the images, so this section works with no fine-tuned model at all. Its
result is a file in the disk cache keyed by model, images and settings (:func:`store.sweep_path`): every finished
task is written there at once, so a sweep stopped by a click (any click reruns the page) resumes from it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from explorer.data import open_dataset
from explorer.models import LoadedModel
from explorer.transfer.reporting.report_html import render_sweep_html
from explorer.transfer.study import Study, stored_tasks, sweep_budget
from explorer.transfer.sweeping.predict import PredictReport
from explorer.transfer.sweeping.sweep import SweepReport
from explorer.transfer.sweeping.sweep_tasks import auto_points
from explorer.transfer.training.heldout import file_list_sha256
from explorer.ui.compare import prediction
from explorer.ui.compare.charts import prediction_figure, sweep_figure
from explorer.ui.compare.setup import data_signature
from explorer.ui.i18n import language, number, percent, seconds, t
from explorer.ui.messages import localize
from explorer.ui.progress import labelled_progress, steps_of


def study(model: LoadedModel, data: str, root: Path) -> Study:
    """The comparison study of `model` on these images (the engine's service), with the folder's signature cached."""
    return Study(model, data, Path(root), data_signature(str(root)))


@st.cache_data(ttl=30, show_spinner=False)
def files_sha256(root: str) -> str | None:
    """The folder's file-list hash that a sweep records (cached for 30 s: a warm rerun does not read the folder)."""
    return file_list_sha256(open_dataset(root))


def _progress(box: Any) -> Any:
    def label(done: int, total: int, info: Any) -> str:
        info = info if isinstance(info, dict) else {}
        if info.get("phase") == "shared":
            what = t("compare.sweep.progress.shared", images=number(info.get("images") or 0))
        elif info.get("task"):
            what = t("compare.sweep.progress.task", task=info.get("task"))
        else:
            what = t("compare.sweep.progress.training")
        return f"{what} · {steps_of(done, total)}"

    return labelled_progress(box, t("compare.sweep.preparing"), label)


def progress_in(box: Any) -> Any:
    """The sweep's progress bar in `box` (for the demo's sweep too)."""
    return _progress(box)


def verdicts() -> dict[str, str]:
    """An option's status as the table says it, in the session's language."""
    return {
        "best": t("compare.sweep.verdict.best"),
        "equivalent": t("compare.sweep.verdict.equivalent"),
        "worse": t("compare.sweep.verdict.worse"),
        "cannot place": t("compare.sweep.verdict.cannot_place"),
        "not converged": t("compare.sweep.verdict.not_converged"),
    }


COLUMNS = (  # the table's columns (kept in English in the data) → their headers' keys
    ("option", "compare.sweep.col.option"),
    ("accuracy", "compare.sweep.col.accuracy"),
    ("95 % interval", "compare.sweep.col.interval"),
    ("SD over seeds", "compare.sweep.col.sd"),
    ("trainable", "compare.sweep.col.trainable"),
    ("seconds", "compare.sweep.col.seconds"),
    ("loss vs best, points [95 %]", "compare.sweep.col.loss"),
    ("verdict", "compare.sweep.col.verdict"),
)


def options_frame(report: SweepReport) -> pd.DataFrame:
    """One row per option: what it is, its accuracy with its interval and spread over seeds, cost, and its loss
    against the best with the verdict."""
    chosen = report.chosen
    said = verdicts()
    rows = []
    for o in report.options:
        loss = (
            ""
            if o.status in ("best", "not converged")
            else f"{number(100 * o.loss, 1)} [{number(100 * o.loss_low, 1)}, {number(100 * o.loss_high, 1)}]"
        )
        sd = (
            t("compare.sweep.sd", sd=number(100 * o.seed_sd, 1), seeds=o.seeds)
            if o.seeds > 1
            else t("compare.sweep.one_seed")
        )
        rows.append(
            {
                "option": localize(o.label),
                "accuracy": o.accuracy,
                "95 % interval": f"[{number(100 * o.low, 1)}, {number(100 * o.high, 1)}] %",
                "SD over seeds": sd,
                "trainable": o.trainable,
                "seconds": round(float(o.seconds), 1),
                "loss vs best, points [95 %]": loss,
                "verdict": t("compare.sweep.verdict.chosen") if o is chosen else said.get(o.status, o.status),
            }
        )
    return pd.DataFrame(rows)


def predicted(model: LoadedModel, data: str, root: Path, cfg: dict[str, int]) -> PredictReport | None:
    """The freeze prediction for the images and split this sweep uses (stored, or made now in seconds)."""
    return prediction.safe(model, data, root, sweep_budget(cfg))


def show(report: SweepReport, *, key: str, figure: bool, pred: PredictReport | None = None) -> None:
    """The sweep's choice, what it measured for the option predicted before it, table (and curve when there is no
    comparison chart to carry it), and its files."""
    c = report.choice
    if c.point is None:
        tries = "".join(f"\n- {localize(line)}" for line in c.try_next)
        st.warning(t("compare.sweep.no_recommendation", reason=localize(c.reason)) + tries, icon=":material/block:")
    else:
        st.success(t("compare.sweep.measured", reason=localize(c.reason)), icon=":material/verified:")
        if c.test_accuracy is not None:
            st.caption(
                t(
                    "compare.sweep.test_accuracy",
                    accuracy=percent(c.test_accuracy, 1),
                    note=localize(c.test_note),
                    choice=percent(c.choice_accuracy or 0, 1),
                )
            )
    if pred is not None:
        prediction.beside_measured(pred, report)
    if figure:
        st.plotly_chart(sweep_figure(report, prediction=prediction.scores_for_chart(pred)), key=f"{key}_chart")
    headers = {name: t(key) for name, key in COLUMNS}
    fmt = {
        headers["accuracy"]: st.column_config.NumberColumn(format="percent"),
        headers["trainable"]: st.column_config.NumberColumn(format="localized"),
        headers["seconds"]: st.column_config.NumberColumn(format="localized"),
    }
    frame = options_frame(report).rename(columns=headers)  # the data keeps English names; the headers are shown
    st.dataframe(frame, hide_index=True, key=f"{key}_table", column_config=fmt, height=35 * (len(frame) + 1) + 3)
    d = report.data
    scored = d.get("scored_images", d.get("heldout_images"))
    st.caption(
        t(
            "compare.sweep.caption",
            evaluation=localize(report.evaluation),
            images=number(scored) if isinstance(scored, (int, float)) else scored,
            epochs=report.settings.get("epochs"),
            size=report.settings.get("input_size"),
            time=seconds(report.seconds.get("total", 0), 0),
            test=localize(c.test),
        )
    )
    _downloads(report, key)


def _downloads(report: SweepReport, key: str) -> None:
    """The sweep as CSV, JSON and a one-page HTML, each built on click in the reader's language."""
    cols = st.columns(3)
    lang = language()  # the files are built on click, in the reader's language; a warm rerun builds none

    def tr(text: str) -> str:
        return localize(text, lang)

    for col, (label, data, suffix, mime) in zip(
        cols,
        [
            (t("compare.sweep.csv"), lambda: report.to_csv(translate=tr).encode(), "csv", "text/csv"),
            (t("compare.sweep.json"), lambda: report.to_json().encode(), "json", "application/json"),
            (t("compare.sweep.html"), lambda: render_sweep_html(report, translate=tr).encode(), "html", "text/html"),
        ],
        strict=True,
    ):
        col.download_button(
            label,
            data,
            file_name=f"compare.sweep.{suffix}",
            mime=mime,
            on_click="ignore",
            key=f"{key}_{suffix}",
            icon=":material/download:",
        )


def section(
    model: LoadedModel,
    data: str,
    root: Path,
    cfg: dict[str, int],
    *,
    key: str = "sw",
    figure: bool = False,
    pred: PredictReport | None = None,
) -> SweepReport | None:
    """Show the stored sweep for these choices (with what it measured for `pred`, the prediction made before it),
    or `pred` as a prediction and a button that runs (or resumes) the sweep."""
    s = study(model, data, root)
    report = s.stored_sweep(cfg)
    if report is not None:
        show(report, key=key, figure=figure, pred=pred)
        return report
    points = auto_points(model)
    if pred is not None:
        prediction.headline(pred)
        marks = prediction.scores_for_chart(pred)
        if figure and marks is not None:
            body = [p for p in points if p != "none"]
            st.plotly_chart(prediction_figure(marks, body, pred.data.get("chance")), key=f"{key}_predicted")
    done = stored_tasks(s.sweep_file(cfg))
    st.info(
        t(
            "compare.sweep.not_measured",
            n=len(points),
            points=", ".join(t("compare.sweep.point_none") if p == "none" else p for p in points),
            epochs=cfg["epochs"],
            data=data,
        ),
        icon=":material/science:",
    )
    label = t("compare.sweep.resume", n=number(done)) if done else t("compare.sweep.run")
    if not st.button(label, key=f"{key}_run", type="primary", icon=":material/play_arrow:"):
        return None
    left, right = st.columns([6, 1], vertical_alignment="center")
    right.button(t("compare.stop"), key=f"{key}_stop", icon=":material/stop:", help=t("compare.sweep.stop.help"))
    report = s.sweep(cfg, progress=_progress(left))
    st.session_state["cmp_toast"] = t("compare.sweep.done", time=seconds(report.seconds.get("total", 0), 0))
    st.rerun()
    return report
