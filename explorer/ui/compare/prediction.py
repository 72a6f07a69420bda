"""The freeze prediction on the Compare and Fine-tune pages: where to freeze, predicted before any training.

One streamed pass of the base model over a sample of the images
(:func:`explorer.transfer.sweeping.predict.predict_freeze`, the app's estimator only: about 10 s for the digits at
64 px on 2 cores) gives a predicted option, shown at once,
labelled as a prediction, with how often that estimator's prediction landed within the margin of the best measured
option. Once a sweep with the same split exists, the measured choice is the headline and the prediction is one line
beside it (what the sweep measured for the predicted option). A prediction is stored in the disk cache keyed by
model, images and the split settings it shares with the sweep, and computed once for concurrent sessions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import streamlit as st

from explorer.jobs import Flight, shared_work
from explorer.models import LoadedModel
from explorer.transfer.study import get_prediction, prediction_key, put_prediction, sweep_budget
from explorer.transfer.sweeping.predict import (
    DEFAULT_ESTIMATOR,
    MEASURED_CASES,
    MEASURED_WITHIN,
    Prediction,
    PredictReport,
    predict_freeze,
)
from explorer.transfer.sweeping.sweep_report import SweepOption, SweepReport
from explorer.transfer.training.settings import FinetuneSettings
from explorer.ui.compare.setup import data_signature, sweep_defaults
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, percent, t
from explorer.ui.progress import labelled_progress

REDRAW_S = 0.25


def key_for(model: LoadedModel, root: Path, s: FinetuneSettings) -> str:
    """The stored prediction's key: the model, the images, and the split and size it shares with the sweep."""
    settings = {
        "input_size": s.input_size,
        "max_images": s.max_images,
        "seed": s.seed,
        "val_fraction": s.val_fraction,
        "estimator": DEFAULT_ESTIMATOR,
    }
    return prediction_key(model.fingerprint, data_signature(str(root)), settings)


def default_settings(model: LoadedModel, data: str) -> FinetuneSettings:
    """The split and size of the Compare page's default sweep on `data`: another page's prediction is then the one
    the Compare page shows (and the one its sweep is scored against)."""
    return sweep_budget(sweep_defaults(data, model))


def stored(model: LoadedModel, root: Path, s: FinetuneSettings) -> PredictReport | None:
    """The prediction already made for these images and settings, if any (no computation)."""
    return get_prediction(key_for(model, root, s))


def get_or_predict(model: LoadedModel, data: str, root: Path, s: FinetuneSettings, box: Any) -> PredictReport:
    """The stored prediction, or one made now (progress in `box`, then cleared); sessions asking for the same one
    while it runs wait for it instead of computing it again."""
    key = key_for(model, root, s)
    found = get_prediction(key)
    if found is not None:
        return found
    bar = labelled_progress(
        box,
        t("predict.running"),
        lambda d, n, _: t("predict.progress", done=number(d), total=number(n)),
        every_s=REDRAW_S,
    )

    def work(flight: Flight[PredictReport]) -> PredictReport:
        def progress(done: int, total: int, info: Any = None) -> None:
            flight.report(done, total)
            bar(done, total)

        report = predict_freeze(
            model,
            str(root),
            input_size=s.input_size,
            max_images=s.max_images,
            seed=s.seed,
            val_fraction=s.val_fraction,
            estimators=(DEFAULT_ESTIMATOR,),
            progress=progress,
        )
        report.data["source"] = data
        put_prediction(key, report)
        return report

    def watch(flight: Flight[PredictReport]) -> None:
        if flight.total_steps:
            bar(flight.done_steps, flight.total_steps)

    try:
        report, _ = shared_work().run(("predict", key), work, on_wait=watch)
    finally:
        box.empty()
    return report


def safe(model: LoadedModel, data: str, root: Path, s: FinetuneSettings) -> PredictReport | None:
    """`get_or_predict`, or None with the reason shown (a prediction that fails never hides the sweep)."""
    try:
        return get_or_predict(model, data, root, s, st.empty())
    except Exception as exc:
        show_error(exc)
        return None


def option_label(p: Prediction) -> str:
    """The predicted option in the page's language."""
    if p.route == "linear":
        return t("predict.option.linear", point=p.point)
    if p.point == "none":
        return t("predict.option.all")
    return t("predict.option.finetune", point=p.point)


def matching(sweep: SweepReport, p: Prediction) -> SweepOption | None:
    """The sweep's option the prediction names (same point and route), if the sweep measured it."""
    return next((o for o in sweep.options if o.point == p.point and o.route == p.route), None)


def headline(pred: PredictReport, tail: str = "compare") -> None:
    """The prediction alone (no sweep yet): the option, why, how often it held, and what it was computed on;
    `tail`: which page's sentence says where it gets measured ("compare" or "finetune")."""
    p = pred.prediction
    score = pred.scores(DEFAULT_ESTIMATOR).get(p.point)
    d = pred.data
    st.info(
        t(
            "predict.headline",
            option=option_label(p),
            score=percent(score, 1) if score is not None else "–",
            images=number(d.get("images", 0)),
            per_class=number(d.get("images_per_class", 0), 0),
            within=MEASURED_WITHIN,
            cases=MEASURED_CASES,
        )
        + (" " + t("predict.weak", chance=percent(d.get("chance", 0.0), 0)) if p.weak else "")
        + " "
        + (t("predict.tail.finetune") if tail == "finetune" else t("predict.tail.compare")),
        icon=":material/online_prediction:",
    )
    st.caption(t("predict.caption", seconds=number(pred.seconds, 1), size=d.get("input_size")))


def beside_measured(pred: PredictReport, sweep: SweepReport) -> None:
    """One line under the measured choice: what the sweep measured for the option predicted before it."""
    p = pred.prediction
    o = matching(sweep, p)
    best = sweep.best
    if o is None or best is None:
        st.caption(t("predict.vs_sweep.unmeasured", option=option_label(p)))
        return
    same = sweep.chosen is not None and o.key == sweep.chosen.key
    st.caption(
        t(
            "predict.vs_sweep.same" if same else "predict.vs_sweep",
            option=option_label(p),
            accuracy=percent(o.accuracy, 1),
            best=percent(best.accuracy, 1),
            gap=number(100 * (best.accuracy - o.accuracy), 1),
        )
    )


def scores_for_chart(pred: PredictReport | None) -> tuple[dict[str, float], Prediction] | None:
    """(point → the estimator's score, the prediction) for the charts, or None."""
    if pred is None:
        return None
    return pred.scores(DEFAULT_ESTIMATOR), pred.prediction
