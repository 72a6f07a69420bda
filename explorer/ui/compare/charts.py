"""The Compare page's chart: every block's CKA (with its interval), weight change and probe accuracy over depth.

Plain plotly, no Streamlit, so it is tested (and reusable) on its own. Each layer is also a full-height,
nearly transparent column: clicking anywhere above a layer selects that column's point, and `selected_layer`
turns the selection event Streamlit reports into the layer's name. The generic → specific zones come from the
CKA curve itself (the prefix of blocks whose interval stays above the similarity threshold), not from the
recommendation, which may move for other reasons (e.g. a linear head on little data).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLOURS = {"cka": "#1f77b4", "weight": "#d62728", "probe": "#2ca02c", "chosen": "#222222", "recommended": "#7f7f7f"}
ZONE_COLOURS = {"generic": "#54A24B", "specific": "#F58518", "head": "#9D9D9D"}
ZONE_LABELS = {"generic": "generic: kept by fine-tuning", "specific": "specific: changed", "head": "new head"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _val(x: Any) -> float | None:
    return float(x) if _finite(x) else None


@dataclass(frozen=True)
class Zone:
    """A run of consecutive layers [start, end] (ladder indices) of one kind: generic, specific or head."""

    kind: str
    start: int
    end: int


def zones(layers: list[Any], similar_cka: float = 0.9) -> list[Zone]:
    """Generic (the prefix whose CKA interval stays ≥ `similar_cka`), specific (the rest), head (new heads)."""
    if not layers:
        return []
    kinds = []
    generic = True
    for r in layers:
        if r.new_head:
            kinds.append("head")
            continue
        floor = r.cka_low if _finite(r.cka_low) else r.cka
        generic = generic and _finite(floor) and floor >= similar_cka
        kinds.append("generic" if generic else "specific")
    out: list[Zone] = []
    for i, kind in enumerate(kinds):
        if out and out[-1].kind == kind and out[-1].end == i - 1:
            out[-1] = Zone(kind, out[-1].start, i)
        else:
            out.append(Zone(kind, i, i))
    return out


def _hover(r: Any) -> str:
    bits = [f"<b>{r.name}</b> · {r.type}"]
    if _finite(r.cka):
        ci = f" [{r.cka_low:.3f}, {r.cka_high:.3f}]" if _finite(r.cka_low) and _finite(r.cka_high) else ""
        bits.append(f"CKA {r.cka:.3f}{ci}")
    if _finite(r.weight_change):
        bits.append(f"weight change {100 * r.weight_change:.2f} %")
    if _finite(r.probe_acc):
        bits.append(f"probe accuracy {100 * r.probe_acc:.1f} %")
    if r.new_head:
        bits.append("new head (retrained for your classes)")
    elif r.frozen_in_tuned:
        bits.append("frozen in this run")
    bits.append("<i>click to freeze up to here</i>" if not r.new_head else "<i>the head always trains</i>")
    return "<br>".join(bits)


def comparison_figure(
    report: Any, freeze_after: str | None = None, *, similar_cka: float | None = None, height: int = 460
) -> go.Figure:
    """The per-layer curves of a ComparisonReport, zones shaded, the recommended and chosen freeze points marked."""
    rows = list(report.layers)
    threshold = similar_cka if similar_cka is not None else float(report.settings.get("similar_cka", 0.9))
    x = [r.name for r in rows]
    cka = [_val(r.cka) for r in rows]
    lows = [_val(r.cka_low) for r in rows]
    highs = [_val(r.cka_high) for r in rows]
    probes = [_val(r.probe_acc) for r in rows]
    weights = [100 * r.weight_change if _finite(r.weight_change) else None for r in rows]
    bottom = min([0.0, *[v for v in lows + cka if v is not None]]) - 0.02
    top = 1.04

    fig = make_subplots(specs=[[{"secondary_y": True}]])
    fig.add_trace(  # the click targets: one full-height column per layer, carrying the hover text
        go.Bar(
            x=x,
            y=[top - bottom] * len(rows),
            base=[bottom] * len(rows),
            name="layer",
            showlegend=False,
            marker={"color": "rgba(120,120,120,0.06)", "line": {"width": 0}},
            customdata=x,
            hovertext=[_hover(r) for r in rows],
            hovertemplate="%{hovertext}<extra></extra>",
        ),
        secondary_y=False,
    )
    if any(v is not None for v in highs):
        fig.add_trace(
            go.Scatter(
                x=x, y=highs, mode="lines", line={"width": 0}, hoverinfo="skip", showlegend=False, connectgaps=True
            ),
            secondary_y=False,
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=lows,
                mode="lines",
                line={"width": 0},
                fill="tonexty",
                fillcolor="rgba(31,119,180,0.2)",
                name="CKA 95 % interval",
                hoverinfo="skip",
                connectgaps=True,
            ),
            secondary_y=False,
        )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=cka,
            mode="lines+markers",
            name="CKA base vs tuned",
            line={"color": COLOURS["cka"], "width": 2},
            marker={"size": 7},
            hoverinfo="skip",
            connectgaps=False,
        ),
        secondary_y=False,
    )
    if any(v is not None for v in probes):
        fig.add_trace(
            go.Scatter(
                x=x,
                y=probes,
                mode="lines+markers",
                name="probe accuracy (base features)",
                line={"color": COLOURS["probe"], "width": 2, "dash": "dash"},
                marker={"size": 6},
                hoverinfo="skip",
            ),
            secondary_y=False,
        )
        if _finite(report.chance):
            fig.add_hline(
                y=report.chance,
                line={"color": COLOURS["probe"], "width": 1, "dash": "dot"},
                annotation_text="chance",
                annotation_position="bottom right",
                annotation_font={"size": 10, "color": COLOURS["probe"]},
            )
    fig.add_trace(
        go.Scatter(
            x=x,
            y=weights,
            mode="lines+markers",
            name="weight change (%)",
            line={"color": COLOURS["weight"], "width": 2},
            marker={"size": 6, "symbol": "diamond"},
            hoverinfo="skip",
        ),
        secondary_y=True,
    )

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
            text=ZONE_LABELS[z.kind],
            font={"size": 11, "color": colour},
        )
    rec = report.recommendation.freeze_after
    index = {r.name: r.index for r in rows}
    marks = []
    if rec in index:
        marks.append((rec, "recommended" if rec != freeze_after else "recommended · chosen", "dash", "recommended"))
    if freeze_after in index and freeze_after != rec:
        marks.append((freeze_after, "your freeze point", "solid", "chosen"))
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
    fig.update_yaxes(title_text="CKA · probe accuracy", range=[bottom, top], secondary_y=False, zeroline=False)
    fig.update_yaxes(
        title_text="relative weight change (%)",
        secondary_y=True,
        rangemode="tozero",
        showgrid=False,
        tickmode="auto",
        nticks=6,
        zeroline=False,
    )
    fig.update_xaxes(title_text="layer, input → output", type="category", tickangle=-45)
    fig.update_layout(
        height=height,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "xanchor": "left", "x": 0},
        hovermode="closest",
        bargap=0.0,
        clickmode="event+select",
        dragmode=False,
    )
    return fig


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
