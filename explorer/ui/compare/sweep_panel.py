"""The Compare page's freeze sweep: run (or resume) it with progress, and show what it measured and chose.

The sweep needs only the base model and the images, so this section works with no fine-tuned model at all. Its
result is a file in the disk cache keyed by model, images and settings (:func:`store.sweep_path`): every finished
task is written there at once, so a sweep stopped by a click (any click reruns the page) resumes from it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from explorer.models import LoadedModel
from explorer.transfer.report_html import render_sweep_html
from explorer.transfer.settings import FinetuneSettings
from explorer.transfer.sweep import SweepReport, mismatch, sweep, sweep_settings
from explorer.transfer.sweep_tasks import auto_points
from explorer.ui.compare.charts import sweep_figure
from explorer.ui.compare.setup import data_signature
from explorer.ui.compare.store import get_sweep, stored_tasks, sweep_path


def settings_for(cfg: dict[str, int]) -> FinetuneSettings:
    """The FinetuneSettings budget of a sweep from the page's choices (epochs, input px, image cap)."""
    return sweep_settings(cfg["epochs"], input_size=cfg["input"], max_images=cfg["images"] or None)


def path_for(model: LoadedModel, root: Path, cfg: dict[str, int]) -> Path:
    return sweep_path(model.fingerprint, data_signature(str(root)), dict(cfg))


def stored(model: LoadedModel, root: Path, cfg: dict[str, int]) -> SweepReport | None:
    """The finished sweep for these choices, if there is one."""
    report = get_sweep(path_for(model, root, cfg))
    return report if report is not None and report.complete else None


@st.cache_data(ttl=30, show_spinner=False)
def _files_sha256(root: str) -> str | None:
    from explorer.data import open_dataset
    from explorer.transfer.heldout import file_list_sha256

    return file_list_sha256(open_dataset(root))


def refusal(sweep: SweepReport, model: LoadedModel, root: Path, input_size: int | None) -> str | None:
    """Why this stored sweep cannot decide a comparison of `model` on `root` at `input_size` (one sentence)."""
    return mismatch(
        sweep, base_fingerprint=model.fingerprint, data_sha256=_files_sha256(str(root)), input_size=input_size
    )


def _progress(box: Any) -> Any:
    bar = box.progress(0.0, text="Preparing the sweep…")
    last = [0.0]

    def update(done: int, total: int, info: Any = None) -> None:
        now = time.monotonic()
        if done < total and now - last[0] < 0.25:
            return
        last[0] = now
        info = info if isinstance(info, dict) else {}
        if info.get("phase") == "shared":
            what = f"One pass of the base model over every image ({info.get('images')} so far)"
        elif info.get("task"):
            what = f"Training {info.get('task')}"
        else:
            what = "Training"
        bar.progress(min(done / max(total, 1), 1.0), text=f"{what} · {done} of {total}")

    return update


def run(model: LoadedModel, data: str, root: Path, cfg: dict[str, int], box: Any) -> SweepReport:
    """Run (or resume) the sweep in this script run, drawing its progress in `box`."""
    return sweep(model, str(root), settings=settings_for(cfg), out=path_for(model, root, cfg), progress=_progress(box))


VERDICTS = {
    "best": "the most accurate",
    "equivalent": "within the margin of the best",
    "worse": "worse than the best by more than the margin",
    "cannot place": "the data cannot say",
    "not converged": "did not converge: not ranked",
}


def options_frame(report: SweepReport) -> pd.DataFrame:
    """One row per option: what it is, its accuracy with its interval and spread over seeds, cost, and its loss
    against the best with the verdict."""
    chosen = report.chosen
    rows = []
    for o in report.options:
        loss = (
            ""
            if o.status in ("best", "not converged")
            else (f"{100 * o.loss:.1f} [{100 * o.loss_low:.1f}, {100 * o.loss_high:.1f}]")
        )
        rows.append(
            {
                "option": o.label,
                "accuracy": o.accuracy,
                "95 % interval": f"[{100 * o.low:.1f}, {100 * o.high:.1f}] %",
                "SD over seeds": f"{100 * o.seed_sd:.1f} ({o.seeds} seeds)" if o.seeds > 1 else "1 seed",
                "trainable": o.trainable,
                "seconds": o.seconds,
                "loss vs best, points [95 %]": loss,
                "verdict": "chosen" if o is chosen else VERDICTS.get(o.status, o.status),
            }
        )
    return pd.DataFrame(rows)


def show(report: SweepReport, *, key: str, figure: bool) -> None:
    """The sweep's choice, table (and curve when there is no comparison chart to carry it), and its files."""
    c = report.choice
    if c.point is None:
        tries = "".join(f"\n- {t}" for t in c.try_next)
        st.warning(f"**No recommendation from the sweep.** {c.reason}{tries}", icon=":material/block:")
    else:
        st.success(f"**Measured:** {c.reason}", icon=":material/verified:")
        if c.test_accuracy is not None:
            st.caption(
                f"On images that took no part in choosing it: **{100 * c.test_accuracy:.1f} %** ({c.test_note}); "
                f"on the images that chose it: {100 * (c.choice_accuracy or 0):.1f} %."
            )
    if figure:
        st.plotly_chart(sweep_figure(report), key=f"{key}_chart")
    fmt = {
        "accuracy": st.column_config.NumberColumn(format="percent"),
        "trainable": st.column_config.NumberColumn(format="localized"),
        "seconds": st.column_config.NumberColumn(format="%.1f"),
    }
    frame = options_frame(report)
    st.dataframe(frame, hide_index=True, key=f"{key}_table", column_config=fmt, height=35 * (len(frame) + 1) + 3)
    d = report.data
    st.caption(
        f"Scored by {report.evaluation} on {d.get('scored_images', d.get('heldout_images'))} images; at most "
        f"{report.settings.get('epochs')} epochs with early stopping on an inner validation split, at "
        f"{report.settings.get('input_size')} px, no augmentation; measured in {report.seconds.get('total', 0):.0f} "
        f"s. Decision: {c.test}."
    )
    cols = st.columns(3)
    for col, (label, data, suffix, mime) in zip(
        cols,
        [
            ("Sweep CSV", report.to_csv().encode(), "csv", "text/csv"),
            ("Sweep JSON", report.to_json().encode(), "json", "application/json"),
            ("Sweep HTML", render_sweep_html(report).encode(), "html", "text/html"),
        ],
        strict=True,
    ):
        col.download_button(
            label,
            data,
            file_name=f"sweep.{suffix}",
            mime=mime,
            on_click="ignore",
            key=f"{key}_{suffix}",
            icon=":material/download:",
        )


def section(
    model: LoadedModel, data: str, root: Path, cfg: dict[str, int], *, key: str = "sw", figure: bool = False
) -> SweepReport | None:
    """Show the stored sweep for these choices, or a button that runs (or resumes) it."""
    path = path_for(model, root, cfg)
    report = get_sweep(path)
    if report is not None and report.complete:
        show(report, key=key, figure=figure)
        return report
    points = auto_points(model)
    done = stored_tasks(path)
    st.info(
        f"Not measured yet: accuracy and cost at {len(points)} freeze points ({', '.join(points)}), by "
        f"fine-tuning after each point and by a linear classifier on it, at most {cfg['epochs']} epochs each "
        f"(early stopping) on {data}.",
        icon=":material/science:",
    )
    label = f"Resume the sweep ({done} tasks already measured)" if done else "Run the freeze sweep"
    if not st.button(label, key=f"{key}_run", type="primary", icon=":material/play_arrow:"):
        return None
    left, right = st.columns([6, 1], vertical_alignment="center")
    right.button("Stop", key=f"{key}_stop", icon=":material/stop:", help="Finished tasks are kept; resume later.")
    report = run(model, data, root, cfg, left)
    st.session_state["cmp_toast"] = f"Sweep measured in {report.seconds.get('total', 0):.0f} s."
    st.rerun()
    return report
