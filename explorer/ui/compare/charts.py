"""The Compare page's chart: per block, CKA with its interval and its two BatchNorm parts, probe accuracy, the
scale-aware weight change, and the measured sweep (held-out accuracy at each freeze point, by route).

Plain plotly, no Streamlit, so it is tested (and reusable) on its own. The series are
:func:`explorer.transfer.reporting.report.chart_series`, the same the HTML report draws.
Each layer is also a full-height,
nearly transparent column: clicking anywhere above a layer selects that column's point, and `selected_layer`
turns the selection event Streamlit reports into the layer's name. The generic → specific zones come from the
CKA curve itself (the prefix of blocks whose interval stays above the similarity threshold), not from the
recommendation, which the sweep may put elsewhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.transfer.reporting.report import ChartSeries, ComparisonReport, LayerComparison, chart_series, finite
from explorer.transfer.sweeping.predict import Prediction
from explorer.transfer.sweeping.sweep_report import SweepReport
from explorer.ui.i18n import number, percent, plotly_separators, t
from explorer.ui.messages import localize

COLOURS = {
    "cka": "#1f77b4",
    "weight": "#d62728",
    "probe": "#2ca02c",
    "chosen": "#222222",
    "recommended": "#7f7f7f",
    "parts": "#17becf",
    "finetune": "#9467bd",
    "linear": "#ff7f0e",
    "predicted": "#e377c2",
}
PredictionMarks = tuple[Mapping[str, float], Prediction]  # point → the estimator's score, and the prediction
ZONE_COLOURS = {"generic": "#54A24B", "specific": "#F58518", "head": "#9D9D9D"}
ZONE_LABELS = {"generic": "charts.zone.generic", "specific": "charts.zone.specific", "head": "charts.zone.head"}


@dataclass(frozen=True)
class Zone:
    """A run of consecutive layers [start, end] (ladder indices) of one kind: generic, specific or head."""

    kind: str
    start: int
    end: int


def zones(layers: list[LayerComparison], similar_cka: float = 0.9) -> list[Zone]:
    """Generic (the prefix whose CKA interval stays ≥ `similar_cka`), specific (the rest), head (new heads)."""
    if not layers:
        return []
    kinds = []
    generic = True
    for r in layers:
        if r.new_head:
            kinds.append("head")
            continue
        floor = r.cka_low if finite(r.cka_low) else r.cka
        generic = generic and finite(floor) and floor >= similar_cka
        kinds.append("generic" if generic else "specific")
    out: list[Zone] = []
    for i, kind in enumerate(kinds):
        if out and out[-1].kind == kind and out[-1].end == i - 1:
            out[-1] = Zone(kind, out[-1].start, i)
        else:
            out.append(Zone(kind, i, i))
    return out


def weight_label(label: str) -> str:
    """The weight-change series' name (written by `chart_series` in English) in the session's language."""
    known = {
        "weight change per step budget (RMS change ÷ Σ learning rate)": t("charts.weight.per_step"),
        "weight change (absolute RMS)": t("charts.weight.rms"),
    }
    return known.get(label, label)


def _g(x: float) -> str:
    """`x` with two significant digits (like '{:.2g}'), in the session's language."""
    text = f"{x:.2g}"
    if "e" in text:
        mantissa, exponent = text.split("e")
        return f"{number(float(mantissa))}e{exponent}"
    return number(float(text))


def _hover(r: LayerComparison) -> str:
    bits = [f"<b>{r.name}</b> · {r.type}"]
    if finite(r.cka):
        ci = f" [{number(r.cka_low, 3)}, {number(r.cka_high, 3)}]" if finite(r.cka_low) and finite(r.cka_high) else ""
        bits.append(
            f"CKA {number(r.cka, 3)}{ci}" + (t("charts.hover.patch_tokens") if finite(r.cka_class_token) else "")
        )
    if finite(r.cka_class_token):
        lo, hi = r.cka_class_token_low, r.cka_class_token_high
        ci = f" [{number(lo, 3)}, {number(hi, 3)}]" if finite(lo) and finite(hi) else ""
        bits.append(t("charts.hover.class_token", cka=number(r.cka_class_token, 3)) + ci)
    if finite(r.cka_weights) and finite(r.cka_stats):
        bits.append(t("charts.hover.parts", weights=number(r.cka_weights, 3), stats=number(r.cka_stats, 3)))
    if finite(r.weight_rms):
        step = t("charts.hover.step_budget", share=_g(r.weight_per_step)) if finite(r.weight_per_step) else ""
        bits.append(t("charts.hover.weight_change", rms=_g(r.weight_rms)) + step)
    if finite(r.bn_shift):
        bits.append(t("charts.hover.bn_shift", shift=number(r.bn_shift, 2)))
    if finite(r.probe_acc):
        bits.append(t("charts.hover.probe", accuracy=percent(r.probe_acc, 1)))
    if r.new_head:
        bits.append(t("charts.hover.new_head"))
    elif r.frozen_in_tuned:
        bits.append(t("charts.hover.frozen"))
    hint = t("charts.hover.click") if not r.new_head else t("charts.hover.head_trains")
    bits.append(f"<i>{hint}</i>")
    return "<br>".join(bits)


def _band(fig: go.Figure, cs: ChartSeries) -> None:
    if not any(v is not None for v in cs.cka_high):
        return
    line = {"width": 0}
    fig.add_trace(
        go.Scatter(
            x=cs.names, y=cs.cka_high, mode="lines", line=line, hoverinfo="skip", showlegend=False, connectgaps=True
        ),
        row=1,
        col=1,
        secondary_y=False,
    )
    fig.add_trace(
        go.Scatter(
            x=cs.names,
            y=cs.cka_low,
            mode="lines",
            line=line,
            fill="tonexty",
            fillcolor="rgba(31,119,180,0.2)",
            name=t("charts.cka_interval"),
            hoverinfo="skip",
            connectgaps=True,
        ),
        row=1,
        col=1,
        secondary_y=False,
    )


def _line(
    fig: go.Figure,
    x: list[str],
    y: list[float | None],
    name: str,
    colour: str,
    dash: str = "solid",
    secondary: bool = False,
    size: int = 6,
) -> None:
    if any(v is not None for v in y):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name=name,
                line={"color": colour, "width": 2, "dash": dash},
                marker={"size": size},
                hoverinfo="skip",
            ),
            row=1,
            col=1,
            secondary_y=secondary,
        )


def _sweep(fig: go.Figure, cs: ChartSeries) -> None:
    """Under the curves: the measured held-out accuracy at each freeze point by route, 95 % intervals; 'none'
    (train every layer) as a dashed line."""
    for route, opts in cs.sweep.items():
        y = [o.accuracy if o else None for o in opts]
        plus = [o.high - o.accuracy if o else None for o in opts]
        minus = [o.accuracy - o.low if o else None for o in opts]
        label = t("charts.sweep.finetune") if route == "finetune" else t("charts.sweep.linear")
        fig.add_trace(
            go.Scatter(
                x=cs.names,
                y=y,
                mode="markers+lines",
                name=label,
                connectgaps=True,
                line={"color": COLOURS[route], "width": 1.5, "dash": "dot"},
                marker={"size": 10, "symbol": "square" if route == "finetune" else "triangle-up"},
                error_y={"type": "data", "array": plus, "arrayminus": minus, "width": 4, "color": COLOURS[route]},
                customdata=[[o.trainable, o.low, o.high] if o else [None, None, None] for o in opts],
                hovertemplate="%{x}: %{y:.1%} [%{customdata[1]:.1%}, %{customdata[2]:.1%}]<br>"
                + t("charts.hover.trainable")
                + "<extra>"
                + label
                + "</extra>",
            ),
            row=2,
            col=1,
        )
    if cs.sweep_all is not None:
        o = cs.sweep_all
        fig.add_hline(
            y=o.accuracy,
            row=2,
            col=1,
            line={"color": COLOURS["finetune"], "width": 1.5, "dash": "dash"},
            annotation_text=t(
                "charts.train_all",
                accuracy=percent(o.accuracy, 1),
                low=number(100 * o.low, 1),
                high=number(100 * o.high, 1),
            ),
            annotation_position="bottom left",
            annotation_font={"size": 10, "color": COLOURS["finetune"]},
        )


def _star(x: str, y: float, hover: str) -> go.Scatter:
    return go.Scatter(
        x=[x],
        y=[y],
        mode="markers",
        name=t("charts.predict.mark"),
        marker={"size": 18, "symbol": "star", "color": COLOURS["predicted"], "line": {"color": "#fff", "width": 1}},
        hovertemplate=hover + "<extra></extra>",
    )


def _score_line(scores: Mapping[str, float], order: list[str]) -> go.Scatter:
    xs = [p for p in order if p in scores]
    return go.Scatter(
        x=xs,
        y=[scores[p] for p in xs],
        mode="lines+markers",
        name=t("charts.predict.scores"),
        line={"color": COLOURS["predicted"], "width": 1.5, "dash": "dot"},
        marker={"size": 5},
        hovertemplate="%{x}: %{y:.1%}<extra>" + t("charts.predict.scores") + "</extra>",
    )


def _predicted(fig: go.Figure, cs: ChartSeries, prediction: PredictionMarks, swept: bool) -> None:
    """The predicted option: starred at its measured accuracy on the sweep's panel; without a sweep, the scores as
    a dotted curve on the top panel (an accuracy, like the probe's) with the predicted point starred."""
    scores, p = prediction
    hover = f"{t('charts.predict.mark')}: {p.point} ({p.route})"
    if swept:
        opts = cs.sweep.get(p.route) or []
        for name, o in zip(cs.names, opts, strict=False):
            if o is not None and name == p.point:
                fig.add_trace(_star(name, o.accuracy, hover + " · %{y:.1%}"), row=2, col=1)
        return
    fig.add_trace(_score_line(scores, cs.names), row=1, col=1, secondary_y=False)
    if p.point in scores and p.point in cs.names:
        fig.add_trace(_star(p.point, scores[p.point], hover + " · %{y:.1%}"), row=1, col=1, secondary_y=False)


def _sweep_range(cs: ChartSeries) -> list[float]:
    lows = [o.low for opts in cs.sweep.values() for o in opts if o] + ([cs.sweep_all.low] if cs.sweep_all else [])
    return [max(0.0, min(lows, default=0.0) - 0.02), 1.005]


def comparison_figure(
    report: ComparisonReport,
    freeze_after: str | None = None,
    *,
    similar_cka: float | None = None,
    height: int = 480,
    prediction: PredictionMarks | None = None,
) -> go.Figure:
    """The per-layer curves of a ComparisonReport, zones shaded, the recommended and chosen freeze points marked;
    with a sweep, a second panel under them: held-out accuracy at each freeze point, on its own scale. With a
    `prediction`: its option starred on the sweep's panel, or (no sweep yet) its scores as a curve with the predicted
    point starred."""
    rows = list(report.layers)
    cs = chart_series(report)
    threshold = similar_cka if similar_cka is not None else float(report.settings.get("similar_cka", 0.9))
    lows = [v for v in cs.cka_low + cs.cka + cs.cka_stats + cs.cka_weights if v is not None]
    bottom, top = min([0.0, *lows]) - 0.02, 1.04
    swept = bool(cs.sweep)
    fig = make_subplots(
        rows=2 if swept else 1,
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.05,
        row_heights=[0.66, 0.34] if swept else None,
        specs=[[{"secondary_y": True}], [{}]] if swept else [[{"secondary_y": True}]],
    )
    fig.add_trace(  # the click targets: one full-height column per layer, carrying the hover text
        go.Bar(
            x=cs.names,
            y=[top - bottom] * len(rows),
            base=[bottom] * len(rows),
            name=t("charts.layer"),
            showlegend=False,
            marker={"color": "rgba(120,120,120,0.06)", "line": {"width": 0}},
            customdata=cs.names,
            hovertext=[_hover(r) for r in rows],
            hovertemplate="%{hovertext}<extra></extra>",
        ),
        row=1,
        col=1,
        secondary_y=False,
    )
    _band(fig, cs)
    _line(fig, cs.names, cs.cka, t("charts.cka"), COLOURS["cka"], size=7)
    _line(fig, cs.names, cs.cka_weights, t("charts.cka_weights"), COLOURS["parts"], "dash", size=4)
    _line(fig, cs.names, cs.cka_stats, t("charts.cka_stats"), COLOURS["parts"], "dot", size=4)
    _line(fig, cs.names, cs.probe, t("charts.probe"), COLOURS["probe"], "dash")
    if cs.probe and any(v is not None for v in cs.probe) and finite(report.chance):
        fig.add_hline(
            y=report.chance,
            row=1,
            col=1,
            line={"color": COLOURS["probe"], "width": 1, "dash": "dot"},
            annotation_text=t("charts.chance"),
            annotation_position="bottom right",
            annotation_font={"size": 10, "color": COLOURS["probe"]},
        )
    _line(fig, cs.names, cs.weight, weight_label(cs.weight_label), COLOURS["weight"], secondary=True)
    if swept:
        _sweep(fig, cs)
    if prediction is not None:
        _predicted(fig, cs, prediction, swept)
    _zones(fig, rows, threshold)
    _marks(fig, report, rows, freeze_after)
    _layout(fig, cs, bottom, top, height + (220 if swept else 0))
    return fig


def _zones(fig: go.Figure, rows: list[LayerComparison], threshold: float) -> None:
    for z in zones(rows, threshold):
        colour = ZONE_COLOURS[z.kind]
        fig.add_vrect(x0=z.start - 0.5, x1=z.end + 0.5, fillcolor=colour, opacity=0.10, line_width=0, layer="below")
        fig.add_annotation(
            x=(z.start + z.end) / 2,
            y=1.0,
            xref="x",
            yref="paper",
            yanchor="bottom",
            showarrow=False,
            text=t(ZONE_LABELS[z.kind]),
            font={"size": 11, "color": colour},
        )


def _marks(fig: go.Figure, report: ComparisonReport, rows: list[LayerComparison], chosen: str | None) -> None:
    rec = report.recommendation
    index = {r.name: r.index for r in rows}
    point = rec.freeze_after if rec.source != "withheld" else None
    what = t("charts.mark.measured") if rec.source == "sweep" else t("charts.mark.predicted")
    marks = []
    if point in index:
        label = t("charts.mark.chosen", what=what) if point == chosen else what
        marks.append((point, label, "dash", "recommended"))
    if chosen in index and chosen != point:
        marks.append((chosen, t("charts.mark.yours"), "solid", "chosen"))
    for name, label, dash, colour in marks:
        pos = index[name] + 0.5  # the boundary after the layer: everything left of it stays frozen
        fig.add_vline(x=pos, line={"color": COLOURS[colour], "width": 2, "dash": dash})
        fig.add_annotation(
            x=pos,
            y=0.0,
            xref="x",
            yref="paper",
            yanchor="bottom",
            xanchor="right",
            showarrow=False,
            text=f"{label} ▸",
            font={"size": 11, "color": COLOURS[colour]},
            bgcolor="rgba(255,255,255,0.7)",
        )


def _layout(fig: go.Figure, cs: ChartSeries, bottom: float, top: float, height: int) -> None:
    fig.update_yaxes(
        title_text=t("charts.axis.cka"), range=[bottom, top], secondary_y=False, zeroline=False, row=1, col=1
    )
    if cs.sweep:
        fig.update_yaxes(title_text=t("charts.axis.heldout"), tickformat=".0%", range=_sweep_range(cs), row=2, col=1)
    fig.update_yaxes(
        title_text=weight_label(cs.weight_label).split(" (")[0],
        row=1,
        col=1,
        secondary_y=True,
        rangemode="tozero",
        showgrid=False,
        tickmode="auto",
        nticks=6,
        zeroline=False,
    )
    fig.update_xaxes(type="category", tickangle=-45)
    fig.update_xaxes(title_text=t("charts.axis.layer"), row=2 if cs.sweep else 1, col=1)
    fig.update_layout(
        height=height,
        separators=plotly_separators(),
        margin={"l": 10, "r": 10, "t": 80, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "left", "x": 0, "font": {"size": 11}},
        hovermode="closest",
        bargap=0.0,
        clickmode="event+select",
        dragmode=False,
    )


def selected_layer(event: Any, layers: list[str]) -> str | None:
    """The layer a plotly selection event (Streamlit's PlotlyState or its dict) points at; None when none."""
    if not isinstance(event, Mapping):
        return None
    selection = event.get("selection") or {}
    points = selection.get("points") if isinstance(selection, Mapping) else None
    for point in points or []:
        if not isinstance(point, Mapping):
            continue
        for candidate in (point.get("x"), point.get("customdata")):
            if isinstance(candidate, (list, tuple)) and candidate:
                candidate = candidate[0]
            if isinstance(candidate, str) and candidate in layers:
                return candidate
        index = point.get("point_index", point.get("point_number"))
        if isinstance(index, int) and 0 <= index < len(layers):
            return layers[index]
    return None


def export_config(file_stem: str) -> dict[str, Any]:
    """Plotly's in-browser modebar: a 'download as PNG' button at twice the resolution, named after the view."""
    return {
        "displaylogo": False,
        "toImageButtonOptions": {"format": "png", "filename": file_stem, "scale": 2},
        "modeBarButtonsToRemove": ["lasso2d", "select2d"],
    }


def _over_points(fig: go.Figure, points: list[str], chance: float | None, y_title: str, height: int) -> go.Figure:
    """The shared frame of the charts over freeze points: chance line, category axis in depth order, layout."""
    if chance is not None and finite(chance):
        fig.add_hline(y=chance, line={"color": "#999", "width": 1, "dash": "dot"}, annotation_text=t("charts.chance"))
    fig.update_xaxes(
        type="category", categoryorder="array", categoryarray=points, title_text=t("charts.axis.freeze_point")
    )
    fig.update_yaxes(title_text=y_title, tickformat=".0%")
    fig.update_layout(
        height=height,
        separators=plotly_separators(),
        margin={"l": 10, "r": 10, "t": 40, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0},
    )
    return fig


def prediction_figure(
    prediction: PredictionMarks, points: list[str], chance: float | None, height: int = 340
) -> go.Figure:
    """A prediction alone (no sweep yet): the estimator's score at each freeze point, the predicted point starred."""
    scores, p = prediction
    fig = go.Figure()
    fig.add_trace(_score_line(scores, points))
    if p.point in scores:
        fig.add_trace(_star(p.point, scores[p.point], f"{t('charts.predict.mark')}: {p.point} · %{{y:.1%}}"))
    return _over_points(fig, points, chance, t("charts.axis.predict"), height)


def sweep_figure(sweep: SweepReport, height: int = 380, prediction: PredictionMarks | None = None) -> go.Figure:
    """A sweep alone (no comparison yet): held-out accuracy at each freeze point by route, 95 % intervals, chance;
    with a `prediction`, the scores it was made from (dotted) and the predicted option starred at its measured
    accuracy."""
    points = list(dict.fromkeys(o.point for o in sweep.options))
    fig = go.Figure()
    for route in ("finetune", "linear"):
        opts = [o for o in sweep.options if o.route == route]
        if not opts:
            continue
        label = t("charts.sweep_alone.finetune") if route == "finetune" else t("charts.sweep_alone.linear")
        chosen = sweep.chosen
        fig.add_trace(
            go.Scatter(
                x=[o.point for o in opts],
                y=[o.accuracy for o in opts],
                mode="lines+markers",
                name=label,
                line={"color": COLOURS[route], "width": 2},
                marker={
                    "size": [14 if o is chosen else 8 for o in opts],
                    "symbol": "square" if route == "finetune" else "triangle-up",
                },
                error_y={
                    "type": "data",
                    "array": [o.high - o.accuracy for o in opts],
                    "arrayminus": [o.accuracy - o.low for o in opts],
                    "width": 4,
                },
                customdata=[[o.trainable, o.seconds] for o in opts],
                hovertemplate="%{x}: %{y:.1%}<br>" + t("charts.hover.trainable") + " · %{customdata[1]:.1f} s"
                "<extra></extra>",
            )
        )
    if prediction is not None:
        scores, p = prediction
        fig.add_trace(_score_line(scores, points))
        measured = next((o for o in sweep.options if o.point == p.point and o.route == p.route), None)
        if measured is not None:
            hover = f"{t('charts.predict.mark')}: {localize(measured.label)} · %{{y:.1%}}"
            fig.add_trace(_star(p.point, measured.accuracy, hover))
    return _over_points(fig, points, sweep.chance, t("charts.axis.heldout"), height)
