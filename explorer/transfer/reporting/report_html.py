"""A self-contained HTML summary of a comparison report: the curves, the advice, the 2×2 guide, the sweep, the table.

No JavaScript and no downloads: one file with inline SVG charts, readable offline and attachable anywhere. The
per-layer curves are :func:`explorer.transfer.reporting.report.chart_series`, the same the app's plotly chart draws.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from pathlib import Path

import numpy as np

from explorer.transfer.advice.guide import why
from explorer.transfer.reporting.report import ChartSeries, ComparisonReport, chart_series, finite
from explorer.transfer.sweeping.sweep_report import SweepReport

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 920, 320, 48, 16, 16, 110
_COLOURS = {"cka": "#1f77b4", "weight": "#d62728", "probe": "#2ca02c", "parts": "#17becf"}
_STYLE = """
body{font-family:system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 12px;color:#222}
table{border-collapse:collapse;margin:8px 0} td,th{border:1px solid #ccc;padding:3px 7px;font-size:13px}
table.layers td:nth-child(n+3){text-align:right} .box{background:#f4f8ff;border:1px solid #bcd;padding:10px 14px}
pre{background:#f6f6f6;padding:10px;overflow:auto;font-size:12px} .legend{font-size:12px}
"""
_Scale = Callable[[float], float]


def _axes(n: int, label: str) -> tuple[list[str], _Scale, _Scale]:
    x = lambda i: _PAD_L + (i + 0.5) * (_W - _PAD_L - _PAD_R) / n
    y = lambda v: _PAD_T + (1 - max(0.0, min(1.0, v))) * (_H - _PAD_T - _PAD_B)
    parts = [f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="{label}">']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
    return parts, x, y


def _line(parts: list[str], x: _Scale, y: _Scale, values: list[float | None], colour: str, dash: str = "") -> None:
    pts = [(x(i), y(v)) for i, v in enumerate(values) if v is not None]
    if len(pts) > 1:
        d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
        parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2" {dash}/>')
    for a, b in pts:
        parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')


def _labels(parts: list[str], x: _Scale, names: list[str], marked: str | None) -> None:
    for i, name in enumerate(names):
        tx, ty = x(i), _H - _PAD_B + 8
        weight = "bold" if name == marked else "normal"
        parts.append(
            f'<text x="{tx:.1f}" y="{ty}" font-size="11" font-weight="{weight}" text-anchor="end" '
            f'transform="rotate(-60 {tx:.1f} {ty})">{html.escape(name)}</text>'
        )
        if name == marked:
            parts.append(
                f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{_PAD_T}" y2="{_H - _PAD_B}" stroke="#555" '
                'stroke-dasharray="2,2"/>'
            )


def _sweep_marks(parts: list[str], x: _Scale, y: _Scale, cs: ChartSeries) -> None:
    for route, opts in cs.sweep.items():
        colour = _ROUTE_COLOURS.get(route, "#555")
        _line(parts, x, y, [o.accuracy if o else None for o in opts], colour, 'stroke-dasharray="1,3"')
        for i, o in enumerate(opts):
            if o is not None:
                parts.append(f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(o.low):.1f}" y2="{y(o.high):.1f}" '
                             f'stroke="{colour}"/>')  # fmt: skip
    if cs.sweep_all is not None:
        v = y(cs.sweep_all.accuracy)
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{v:.1f}" y2="{v:.1f}" '
                     f'stroke="{_ROUTE_COLOURS["finetune"]}" stroke-dasharray="6,4"/>')  # fmt: skip


def _chart(report: ComparisonReport) -> str:
    cs = chart_series(report)
    n = len(cs.names)
    if not n:
        return ""
    parts, x, y = _axes(n, "per-layer curves")
    band = [(x(i), y(v)) for i, v in enumerate(cs.cka_high) if v is not None]
    band += [(x(i), y(v)) for i, v in reversed(list(enumerate(cs.cka_low))) if v is not None]
    if band:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in band)
        parts.append(f'<polygon points="{pts}" fill="{_COLOURS["cka"]}" opacity="0.15"/>')
    wmax = max([v for v in cs.weight if v is not None] or [1.0]) or 1.0
    _line(parts, x, y, cs.cka, _COLOURS["cka"])
    _line(parts, x, y, cs.cka_weights, _COLOURS["parts"], 'stroke-dasharray="8,3"')
    _line(parts, x, y, cs.cka_stats, _COLOURS["parts"], 'stroke-dasharray="2,2"')
    _line(parts, x, y, [v / wmax if v is not None else None for v in cs.weight], _COLOURS["weight"])
    _line(parts, x, y, cs.probe, _COLOURS["probe"], 'stroke-dasharray="5,3"')
    _sweep_marks(parts, x, y, cs)
    _labels(parts, x, cs.names, cs.recommended)
    parts.append("</svg>")
    legend = (
        f'<p class="legend"><span style="color:{_COLOURS["cka"]}">━ CKA base vs tuned (band: 95 % interval)</span> · '
        f'<span style="color:{_COLOURS["parts"]}">╍ tuned weights + base BN statistics · ┈ base weights + tuned BN '
        f'statistics</span> · <span style="color:{_COLOURS["weight"]}">━ {html.escape(cs.weight_label)} (÷ max '
        f'{wmax:.3g})</span> · <span style="color:{_COLOURS["probe"]}">┅ base linear-probe accuracy</span>'
        + (" · sweep: held-out accuracy per route, dashed line: train every layer" if cs.sweep else "")
        + " · dashed vertical: recommended freeze point</p>"
    )
    return "".join(parts) + legend


def _guide(report: ComparisonReport) -> str:
    g = report.recommendation.guide
    cells = {
        ("small", "similar"): "Linear classifier on top features",
        ("small", "different"): "Classifier on earlier layers",
        ("large", "similar"): "Fine-tune the top layers",
        ("large", "different"): "Fine-tune most / all layers",
    }

    def td(size: str, sim: str) -> str:
        here = (size, sim) == (g.size, g.similarity)
        style = ' style="background:#fff3b0;font-weight:bold"' if here else ""
        mark = " ← your case" if here else ""
        return f"<td{style}>{cells[(size, sim)]}{mark}</td>"

    return (
        "<table class='guide'><tr><th></th><th>similar to ImageNet</th><th>different from ImageNet</th></tr>"
        f"<tr><th>little data</th>{td('small', 'similar')}{td('small', 'different')}</tr>"
        f"<tr><th>lots of data</th>{td('large', 'similar')}{td('large', 'different')}</tr></table>"
        f"<p>{html.escape(g.advice)} <small>{html.escape(why(g))}</small></p>"
    )


def _pct(v: float | None) -> str:
    return f"{100 * v:.0f} %" if v is not None and finite(v) else "n/a"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return format(v, fmt) if finite(v) else ""


def _table(report: ComparisonReport) -> str:
    head = (
        "<tr><th>#</th><th>layer</th><th>type</th><th>CKA</th><th>95 % interval</th><th>tuned weights + base BN</th>"
        "<th>base weights + tuned BN</th><th>weight RMS change</th><th>per step budget</th><th>relative</th>"
        "<th>BN mean shift</th><th>probe acc.</th><th>params</th><th>note</th></tr>"
    )
    body = []
    for r in report.layers:
        note = "new head" if r.new_head else ("frozen in this run" if r.frozen_in_tuned else "")
        ci = f"[{_num(r.cka_low)}, {_num(r.cka_high)}]" if finite(r.cka_low) else ""
        wc = f"{100 * r.weight_change:.2f} %" if r.weight_change is not None and finite(r.weight_change) else ""
        bold = ' style="font-weight:bold"' if r.name == report.recommendation.freeze_after else ""
        probe = _pct(r.probe_acc) if r.probe_acc is not None else ""
        body.append(
            f"<tr{bold}><td>{r.index}</td><td>{html.escape(r.name)}</td><td>{html.escape(r.type)}</td>"
            f"<td>{_num(r.cka)}</td><td>{ci}</td><td>{_num(r.cka_weights)}</td><td>{_num(r.cka_stats)}</td>"
            f"<td>{_num(r.weight_rms, '.2g')}</td><td>{_num(r.weight_per_step, '.2g')}</td><td>{wc}</td>"
            f"<td>{_num(r.bn_shift, '.2f')}</td><td>{probe}</td><td>{r.params:,}</td><td>{note}</td></tr>"
        )
    return f"<table class='layers'>{head}{''.join(body)}</table>"


def _png(image: np.ndarray) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _renders(report: ComparisonReport) -> str:
    """Same-seed visualizations of the same units in both models, side by side (when they were rendered)."""
    if not report.renders:
        return ""
    rows = []
    for layer, r in report.renders.items():
        cells = []
        for i, unit in enumerate(r.get("units", [])):
            ratio = r.get("per_unit", [None] * (i + 1))[i]
            cells.append(
                f"<td><img src='{_png(r['base'][i])}' width=96><img src='{_png(r['tuned'][i])}' width=96>"
                f"<br><small>unit {unit} · cross-excitation {_num(ratio, '.2f') or 'n/a'}</small></td>"
            )
        rows.append(f"<tr><th>{html.escape(layer)}</th>{''.join(cells)}</tr>")
    return (
        f"<h2>Same units, same seed: base (left) and tuned (right)</h2><table class='renders'>{''.join(rows)}</table>"
    )


def _advice(report: ComparisonReport) -> str:
    rec = report.recommendation
    if rec.source == "withheld":
        title = "No freeze point: the evidence does not allow one"
    else:
        point = rec.freeze_after or "none (train every layer)"
        kind = "Measured" if rec.source == "sweep" else "Predicted (no sweep has run)"
        title = f"{kind}: freeze up to <code>{html.escape(point)}</code>" + (
            " and train a linear classifier on it" if rec.route == "linear" else ""
        )
    tries = "".join(f"<li>{html.escape(t)}</li>" for t in rec.try_next)
    extra = f"<p>{html.escape(rec.agreement)}</p>" if rec.agreement else ""
    counts = (
        f"<p>{rec.trainable:,} trainable, {rec.non_trainable:,} non-trainable of {rec.total:,} parameters.</p>"
        if rec.source != "withheld"
        else ""
    )
    return (
        f'<div class="box"><h2>{title}</h2><p>{html.escape(rec.reason)}</p>'
        f"{f'<ul>{tries}</ul>' if tries else ''}{extra}{counts}</div>"
    )


def render_html(report: ComparisonReport) -> str:
    """The whole report as one HTML page."""
    rec = report.recommendation
    items = "".join(f"<li>{html.escape(e)}</li>" for e in rec.evidence)
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in [*rec.caveats, *report.warnings])
    acc = (
        f" · tuned accuracy on held-out images {_pct(report.tuned_accuracy)}"
        if report.tuned_accuracy is not None
        else ""
    )
    sweep = sweep_section(report.sweep, box=False) if report.sweep is not None else ""
    code = f"<h2>Freeze there in PyTorch</h2><pre>{html.escape(rec.code)}</pre>" if rec.source != "withheld" else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Layer Explorer · before and after fine-tuning</title>
<style>{_STYLE}</style></head><body>
<h1>Before and after fine-tuning, layer by layer</h1>
<p>Base <b>{html.escape(str(report.base.get("spec")))}</b> vs tuned <b>{html.escape(str(report.tuned.get("spec")))}</b>
on {report.data.get("images_used")} images of {html.escape(str(report.data.get("source")))}
({len(report.data.get("classes", []))} classes, chance {_pct(report.chance)}){acc}.
{html.escape(str(report.heldout.get("note", "")))}</p>
{_advice(report)}
{sweep}
<h2>Per-layer curves</h2>{_chart(report)}
<h2>Where your case sits: the classic transfer-learning 2×2 guide</h2>{_guide(report)}
{_renders(report)}
<h2>Evidence</h2><ul>{items}</ul>
{f"<h2>Caveats</h2><ul>{caveats}</ul>" if caveats else ""}
{code}
<h2>All layers</h2>{_table(report)}
<p><small>{html.escape(str(report.settings.get("cka")))}; {html.escape(str(report.settings.get("pooling")))};
probes: standardised features, logistic regression, {report.settings.get("probe_folds")}-fold stratified
cross-validation.</small></p>
</body></html>
"""


# --------------------------------------------------------------------------- the freeze sweep

_ROUTE_COLOURS = {"finetune": "#9467bd", "linear": "#ff7f0e"}


def sweep_svg(sweep: SweepReport) -> str:
    """Held-out accuracy against the freeze point, one line per route, 95 % intervals as whiskers."""
    points = list(dict.fromkeys(o.point for o in sweep.options))
    n = len(points)
    if not n:
        return ""
    lo = max(0.0, min(o.low for o in sweep.options) - 0.02)  # zoomed: the options differ by a few points
    lo = 0.0 if lo < 0.25 else lo
    x = lambda i: _PAD_L + (i + 0.5) * (_W - _PAD_L - _PAD_R) / n
    y = lambda v: _PAD_T + (1 - (max(lo, min(1.0, v)) - lo) / (1 - lo)) * (_H - _PAD_T - _PAD_B)
    parts = [f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="freeze sweep">']
    for v in np.linspace(lo, 1.0, 5):
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:.0%}</text>')
    if finite(sweep.chance) and sweep.chance >= lo:
        parts.append(
            f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(sweep.chance):.1f}" y2="{y(sweep.chance):.1f}" '
            'stroke="#999" stroke-dasharray="2,3"/>'
        )
    chosen = sweep.chosen
    for route, colour in _ROUTE_COLOURS.items():
        opts = [(points.index(o.point), o) for o in sweep.options if o.route == route]
        if len(opts) > 1:
            d = " ".join(f"{x(i):.1f},{y(o.accuracy):.1f}" for i, o in opts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2"/>')
        for i, o in opts:
            parts.append(
                f'<line x1="{x(i):.1f}" x2="{x(i):.1f}" y1="{y(o.low):.1f}" y2="{y(o.high):.1f}" stroke="{colour}"/>'
            )
            r = 6 if o is chosen else 3
            parts.append(f'<circle cx="{x(i):.1f}" cy="{y(o.accuracy):.1f}" r="{r}" fill="{colour}"/>')
    for i, p in enumerate(points):
        tx, ty = x(i), _H - _PAD_B + 8
        parts.append(
            f'<text x="{tx:.1f}" y="{ty}" font-size="11" text-anchor="end" '
            f'transform="rotate(-60 {tx:.1f} {ty})">{html.escape(p)}</text>'
        )
    parts.append("</svg>")
    legend = (
        f'<p class="legend"><span style="color:{_ROUTE_COLOURS["finetune"]}">━ fine-tune after the point</span> · '
        f'<span style="color:{_ROUTE_COLOURS["linear"]}">━ linear classifier on the point</span> · whiskers: '
        "95 % intervals · dotted: chance · large dot: recommended</p>"
    )
    return "".join(parts) + legend


def _sweep_table(sweep: SweepReport) -> str:
    head = (
        "<tr><th>point</th><th>route</th><th>accuracy</th><th>95 % interval</th><th>SD over seeds</th>"
        "<th>trainable</th><th>seconds</th><th>loss vs best [95 %]</th><th>verdict</th></tr>"
    )
    body = []
    for o in sweep.options:
        bold = ' style="font-weight:bold"' if o is sweep.chosen else ""
        body.append(
            f"<tr{bold}><td>{html.escape(o.point)}</td><td>{o.route}</td><td>{_pct1(o.accuracy)}</td>"
            f"<td>[{_pct1(o.low)}, {_pct1(o.high)}]</td><td>{_pct1(o.seed_sd)}</td><td>{o.trainable:,}</td>"
            f"<td>{o.seconds:.1f}</td><td>{_pts(o.loss)} [{_pts(o.loss_low)}, {_pts(o.loss_high)}]</td>"
            f"<td>{html.escape(o.status)}</td></tr>"
        )
    return f"<table class='layers'>{head}{''.join(body)}</table>"


def _pts(v: float) -> str:
    return f"{100 * v:.1f}" if finite(v) else "n/a"


def _pct1(v: float) -> str:
    return f"{100 * v:.1f} %" if finite(v) else "n/a"


def sweep_section(sweep: SweepReport, *, box: bool = True) -> str:
    """The sweep as an HTML fragment: the recommendation (unless `box` is False: the page already says it), the
    curve, the table, how it was decided."""
    c = sweep.choice
    title = (
        "No recommendation"
        if c.point is None
        else f"Measured: {html.escape(sweep.chosen.label if sweep.chosen else '')}"
    )
    tries = "".join(f"<li>{html.escape(t)}</li>" for t in c.try_next)
    notes = "".join(f"<li>{html.escape(n)}</li>" for n in sweep.notes)
    d = sweep.data
    test = (
        f"<p>Accuracy of the choice on images that took no part in choosing it: <b>{_pct1(c.test_accuracy)}</b> "
        f"({html.escape(c.test_note)}); on the images that chose it: {_pct1(c.choice_accuracy or float('nan'))}.</p>"
        if c.test_accuracy is not None
        else ""
    )
    head = f'<div class="box"><h2>{title}</h2><p>{html.escape(c.reason)}</p>{test}' + (
        f"<ul>{tries}</ul></div>" if tries else "</div>"
    )
    return (
        (head if box else "") + f"<h2>Accuracy at each freeze point</h2>{sweep_svg(sweep)}{_sweep_table(sweep)}"
        f"<p><small>Scored by {html.escape(sweep.evaluation)} on {d.get('scored_images', d.get('heldout_images'))} "
        f"images of {html.escape(str(d.get('source')))}; at most {sweep.settings.get('epochs')} epochs with "
        "early stopping on an inner validation split, "
        f"{sweep.settings.get('input_size')} px, augmentation {sweep.settings.get('augment')}, "
        f"{sweep.settings.get('seeds')} seed(s). Decision: {html.escape(c.test)}.</small></p>"
        f"{f'<ul>{notes}</ul>' if notes else ''}"
    )


def render_sweep_html(sweep: SweepReport) -> str:
    """A freeze sweep as one offline HTML page."""
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Layer Explorer · freeze sweep'
        f"</title><style>{_STYLE}</style></head><body><h1>Where to freeze: the measured sweep</h1>"
        f"<p>Base <b>{html.escape(sweep.base.get('spec', ''))}</b>.</p>{sweep_section(sweep)}</body></html>"
    )


def save_report(report: ComparisonReport, path: str | Path) -> list[Path]:
    """Write ``path`` (.json) and the HTML summary and CSV beside it; returns the files written."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    html, csv = p.with_suffix(".html"), p.with_suffix(".csv")
    p.write_text(report.to_json())
    html.write_text(render_html(report))
    report.to_csv(csv)
    return [p, html, csv]
