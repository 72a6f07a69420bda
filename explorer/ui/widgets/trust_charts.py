"""Plotly figures of the trust measures (`explorer.trust`), built from their JSON reports (`to_dict()`), so a page, a
notebook or a saved file draw the same picture: the sanity-check curves, the faithfulness ranking of layers, the
calibrated CKA heatmap and the selectivity curve. Pure functions (their words and numbers in the session's language,
`explorer.ui.i18n`; English outside a Streamlit session)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from explorer.ui.i18n import number, plotly_separators, t

PALETTE = ("#4C78A8", "#F58518", "#54A24B", "#E45756", "#72B7B2", "#B279A2", "#FF9DA6", "#9D755D", "#BAB0AC")
MARGIN = {"l": 10, "r": 10, "t": 40, "b": 10}
LEGEND = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1}


def _num(v: Any) -> float | None:
    return None if v is None else float(v)


def sanity_figure(data: Mapping[str, Any], *, title: str | None = None) -> go.Figure:
    """Spearman (left) and SSIM (right) of each method's maps with its original, after each cascading randomization
    step; the shaded band is the top of the network that the verdict reads, the dotted line the pass threshold."""
    steps = list(data["steps"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(t("charts.sanity.spearman"), "SSIM"),
                        shared_yaxes=True, horizontal_spacing=0.04)  # fmt: skip
    above = t("charts.sanity.hover")
    for i, (name, rec) in enumerate(data["methods"].items()):
        colour = PALETTE[i % len(PALETTE)]
        verdict = t("charts.sanity.pass") if rec.get("passed") else t("charts.sanity.fail")
        for col, key in ((1, "spearman"), (2, "ssim")):
            fig.add_trace(
                go.Scatter(
                    x=steps, y=[_num(v) for v in rec[key]], mode="lines+markers", name=f"{rec['label']} ({verdict})",
                    legendgroup=name, showlegend=col == 1, line={"color": colour, "width": 2}, marker={"size": 5},
                    hovertemplate=f"{rec['label']}<br>{above}<br>{key} %{{y:.2f}}<extra></extra>",
                ),
                row=1, col=col,
            )  # fmt: skip
    top = int(data.get("top_step", 1))
    for col in (1, 2):
        fig.add_vrect(x0=0.5, x1=top + 0.5, fillcolor="#999999", opacity=0.12, line_width=0, row=1, col=col)
    fig.add_hline(y=float(data.get("pass_below", 0.5)), line_dash="dot", line_color="#666666", row=1, col=1)
    fig.update_xaxes(tickangle=-60, type="category", title_text=t("charts.sanity.axis"))
    fig.update_yaxes(range=[-0.3, 1.05], row=1, col=1)
    head = title or t("charts.sanity.title", model=data.get("model", ""), target=data.get("target_name", ""))
    below = {"orientation": "h", "yanchor": "top", "y": -0.42, "xanchor": "left", "x": 0}
    fig.update_layout(height=520, margin={"l": 10, "r": 10, "t": 70, "b": 10}, legend=below,
                      title={"text": head, "x": 0, "font": {"size": 13}}, separators=plotly_separators())  # fmt: skip
    return fig


def faithfulness_figure(data: Mapping[str, Any], *, top: int | None = None) -> go.Figure:
    """Layers ranked by faithfulness score ((insertion − deletion) minus the same for a random map on the layer's
    grid), the best on top; green where the map beats its random baseline on both curves."""
    order = list(data["ranking"])[: top or None]
    layers = data["layers"]
    names = order[::-1]
    scores = [float(layers[n]["score"]) for n in names]
    colours = ["#54A24B" if layers[n].get("beats_random") else "#BAB0AC" for n in names]
    hover = [
        f"{n}<br>"
        + t("charts.faith.hover", deletion=number(layers[n]["deletion"], 3),
            random_deletion=number(layers[n]["random_deletion"], 3), insertion=number(layers[n]["insertion"], 3),
            random_insertion=number(layers[n]["random_insertion"], 3),
            grid="×".join(str(v) for v in layers[n]["grid"]))
        for n in names
    ]  # fmt: skip
    labels = [("+" if s >= 0 else "") + number(s, 3) for s in scores]
    fig = go.Figure(go.Bar(x=scores, y=names, orientation="h", marker_color=colours, hovertext=hover,
                           hoverinfo="text", text=labels, textposition="auto"))  # fmt: skip
    fig.add_vline(x=0, line_color="#666666", line_width=1)
    fig.update_xaxes(title_text=t("charts.faith.axis"))
    fig.update_yaxes(automargin=True, type="category")
    head = t("charts.faith.title", method=data.get("method", ""), images=data.get("images", ""))
    fig.update_layout(height=80 + 24 * len(names), margin=MARGIN, title={"text": head, "x": 0, "font": {"size": 13}},
                      separators=plotly_separators())  # fmt: skip
    return fig


def faithfulness_curves(data: Mapping[str, Any], layers: Sequence[str]) -> go.Figure:
    """Deletion (left) and insertion (right) curves of some layers, each with its random baseline dashed."""
    fr = list(data["fractions"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=(t("charts.faith.deletion"), t("charts.faith.insertion")),
                        shared_yaxes=True, horizontal_spacing=0.04)  # fmt: skip
    for i, n in enumerate(layers):
        colour = PALETTE[i % len(PALETTE)]
        curves = data["layers"][n]["curves"]
        for col, key in ((1, "deletion"), (2, "insertion")):
            fig.add_trace(go.Scatter(x=fr, y=curves[key], name=n, legendgroup=n, showlegend=col == 1,
                                     line={"color": colour}), row=1, col=col)  # fmt: skip
            dotted = {"color": colour, "dash": "dot"}
            random = t("charts.faith.random", layer=n)
            fig.add_trace(go.Scatter(x=fr, y=curves[f"random_{key}"], name=random, legendgroup=n,
                                     showlegend=False, line=dotted), row=1, col=col)  # fmt: skip
    fig.update_xaxes(title_text=t("charts.faith.fraction"), tickformat=".0%")
    fig.update_yaxes(title_text=t("charts.faith.probability"), row=1, col=1)
    fig.update_layout(height=360, margin=MARGIN, legend=LEGEND, separators=plotly_separators())
    return fig


def cka_heatmap(data: Mapping[str, Any], which: str = "calibrated", *, title: str | None = None) -> go.Figure:
    """The CKA map as a heatmap: rows are the layers of A (first at the top), columns the layers of B; `which` is
    'calibrated' or 'raw'. Hover shows both, the critical value τ and the p-value."""
    a, b = list(data["a_layers"]), list(data["b_layers"])
    z = data[which]
    raw, cal, tau, p = data["raw"], data["calibrated"], data["tau"], data["p_values"]
    text = [
        [f"A {a[i]} · B {b[j]}<br>"
         + t("charts.cka_map.hover", raw=number(raw[i][j], 3), calibrated=number(cal[i][j], 3))
         + f"<br>τ {number(tau[i][j], 3)} · p {number(p[i][j], 3)}" for j in range(len(b))]
        for i in range(len(a))
    ]  # fmt: skip
    shown = {"calibrated": t("charts.cka_map.calibrated"), "raw": t("charts.cka_map.raw")}.get(which, which)
    fig = go.Figure(go.Heatmap(z=z, x=b, y=a, zmin=0, zmax=1, colorscale="Viridis", hovertext=text,
                               hoverinfo="text", colorbar={"title": {"text": shown}}))  # fmt: skip
    fig.update_yaxes(autorange="reversed", type="category", title_text=f"A: {data.get('a', '')}", automargin=True)
    fig.update_xaxes(type="category", tickangle=-60, title_text=f"B: {data.get('b', '')}", automargin=True)
    key = "charts.cka_map.title_raw" if which == "raw" else "charts.cka_map.title_calibrated"
    head = title or t(key, images=data.get("images", ""), shuffles=data.get("permutations", ""))
    side = 120 + 22 * max(len(a), len(b))
    fig.update_layout(height=min(900, side), margin=MARGIN, title={"text": head, "x": 0, "font": {"size": 13}},
                      separators=plotly_separators())  # fmt: skip
    return fig


def selectivity_figure(reports: Mapping[str, Mapping[str, Any]]) -> go.Figure:
    """Mean class selectivity of each layer along the depth, one line per model (e.g. {'base': …, 'tuned': …}),
    each with its chance level (labels shuffled) dotted: the measured generic → specific curve."""
    fig = go.Figure()
    for i, (name, rep) in enumerate(reports.items()):
        colour = PALETTE[i % len(PALETTE)]
        rows = rep["layers"]
        x = [r["layer"] for r in rows]
        fig.add_trace(go.Scatter(x=x, y=[_num(r["mean_selectivity"]) for r in rows], mode="lines+markers", name=name,
                                 line={"color": colour, "width": 2}))  # fmt: skip
        shuffled = t("charts.selectivity.shuffled", name=name)
        fig.add_trace(go.Scatter(x=x, y=[_num(r["chance_selectivity"]) for r in rows], mode="lines",
                                 name=shuffled, line={"color": colour, "dash": "dot"}))  # fmt: skip
    fig.update_xaxes(type="category", tickangle=-60, title_text=t("charts.selectivity.axis_x"))
    fig.update_yaxes(range=[0, 1], title_text=t("charts.selectivity.axis_y"))
    fig.update_layout(height=380, margin=MARGIN, legend=LEGEND, separators=plotly_separators())
    return fig
