"""Plotly figures shared by pages: top-k class probabilities, and a fine-tune's live curves."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.transfer.training.runs import JobSnapshot
from explorer.ui.i18n import percent, plotly_separators, t

MAX_POINTS = 1500  # training steps drawn per curve: long runs show every k-th step, so redraws stay fast


def top_figure(preds: list[tuple[str, float]]) -> go.Figure:
    """Top-k probabilities as horizontal bars, the most likely class on top."""
    names = [n for n, _ in preds][::-1]
    probs = [p for _, p in preds][::-1]
    fig = go.Figure(
        go.Bar(
            x=probs,
            y=names,
            orientation="h",
            text=[percent(p, 1) for p in probs],
            textposition="auto",
            marker_color="#4C78A8",
        )
    )
    fig.update_layout(
        height=60 + 44 * len(preds), margin={"l": 10, "r": 10, "t": 10, "b": 10}, separators=plotly_separators()
    )
    fig.update_xaxes(
        range=[0, 1.02], tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%", title_text=t("figures.probability")
    )
    fig.update_yaxes(automargin=True)
    return fig


def progress_figure(snap: JobSnapshot) -> Any:
    """Plotly: per-step training loss and accuracy, each epoch's validation loss and accuracy as markers."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    ends = {s["epoch"]: s["step"] for s in snap.steps}
    xs = [ends.get(e["epoch"], 0) for e in snap.epochs]
    shown = snap.steps[:: max(1, len(snap.steps) // MAX_POINTS)]  # long runs: every k-th step keeps redraws fast
    steps = [s["step"] for s in shown]
    lines = [(t("figures.train_loss"), steps, [s["loss"] for s in shown], "#4C78A8", False, False),
             (t("figures.train_acc"), steps, [s["acc"] for s in shown], "#F58518", True, False),
             (t("figures.val_loss"), xs, [e["val_loss"] for e in snap.epochs], "#1F3F66", False, True),
             (t("figures.val_acc"), xs, [e["val_acc"] for e in snap.epochs], "#B3590E", True, True)]  # fmt: skip
    for name, x, y, colour, right, val in lines:
        style: dict[str, Any] = {"mode": "lines", "line": {"color": colour}}
        if val:
            style = {"mode": "markers+lines", "line": {"dash": "dot", "color": colour},
                     "marker": {"size": 10, "symbol": "diamond", "color": colour}}  # fmt: skip
        fig.add_trace(go.Scatter(x=x, y=y, name=name, **style), secondary_y=right)
    for x in xs:
        fig.add_vline(x=x, line_width=1, line_dash="dot", line_color="#bbbbbb")
    fig.update_xaxes(title_text=t("figures.step_axis"), range=[0, max(snap.total, 1) * 1.03])
    fig.update_yaxes(title_text=t("figures.loss_axis"), rangemode="tozero", secondary_y=False)
    fig.update_yaxes(title_text=t("figures.acc_axis"), range=[0, 1.02], dtick=0.25, tickformat=".0%", secondary_y=True,
                     showgrid=False)  # fmt: skip
    legend = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1}
    fig.update_layout(height=340, margin={"l": 10, "r": 10, "t": 40, "b": 10}, hovermode="x unified", legend=legend,
                      separators=plotly_separators())  # fmt: skip
    return fig
