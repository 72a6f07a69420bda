"""A self-contained HTML summary of a comparison report: the curves, the recommendation, the 2×2 guide, the table.

No JavaScript and no downloads: one file with an inline SVG chart, readable offline and attachable anywhere.
"""

from __future__ import annotations

import html
import math
from typing import Any

_W, _H, _PAD_L, _PAD_R, _PAD_T, _PAD_B = 920, 320, 48, 16, 16, 110
_COLOURS = {"cka": "#1f77b4", "weight": "#d62728", "probe": "#2ca02c"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _chart(report: Any) -> str:
    rows = report.layers
    n = len(rows)
    if not n:
        return ""
    x = lambda i: _PAD_L + (i + 0.5) * (_W - _PAD_L - _PAD_R) / n
    y = lambda v: _PAD_T + (1 - max(0.0, min(1.0, v))) * (_H - _PAD_T - _PAD_B)
    wmax = max([r.weight_change for r in rows if _finite(r.weight_change)] or [1.0]) or 1.0
    parts = [f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="per-layer curves">']
    for v in (0, 0.25, 0.5, 0.75, 1.0):
        parts.append(f'<line x1="{_PAD_L}" x2="{_W - _PAD_R}" y1="{y(v):.1f}" y2="{y(v):.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="{_PAD_L - 6}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end">{v:g}</text>')
    band = [(x(i), y(r.cka_high)) for i, r in enumerate(rows) if _finite(r.cka_high)]
    band += [(x(i), y(r.cka_low)) for i, r in reversed(list(enumerate(rows))) if _finite(r.cka_low)]
    if band:
        pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in band)
        parts.append(f'<polygon points="{pts}" fill="{_COLOURS["cka"]}" opacity="0.15"/>')

    def line(values: list[float | None], colour: str, dash: str = "") -> None:
        pts = [(x(i), y(v)) for i, v in enumerate(values) if _finite(v)]
        if len(pts) > 1:
            d = " ".join(f"{a:.1f},{b:.1f}" for a, b in pts)
            parts.append(f'<polyline points="{d}" fill="none" stroke="{colour}" stroke-width="2" {dash}/>')
        for a, b in pts:
            parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{colour}"/>')

    line([r.cka for r in rows], _COLOURS["cka"])
    line([r.weight_change / wmax if _finite(r.weight_change) else None for r in rows], _COLOURS["weight"])
    line([r.probe_acc for r in rows], _COLOURS["probe"], 'stroke-dasharray="5,3"')
    rec = report.recommendation.freeze_after
    for i, r in enumerate(rows):
        tx, ty = x(i), _H - _PAD_B + 8
        weight = "bold" if r.name == rec else "normal"
        parts.append(
            f'<text x="{tx:.1f}" y="{ty}" font-size="11" font-weight="{weight}" text-anchor="end" '
            f'transform="rotate(-60 {tx:.1f} {ty})">{html.escape(r.name)}</text>'
        )
        if r.name == rec:
            parts.append(
                f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{_PAD_T}" y2="{_H - _PAD_B}" stroke="#555" '
                'stroke-dasharray="2,2"/>'
            )
    parts.append("</svg>")
    legend = (
        f'<p class="legend"><span style="color:{_COLOURS["cka"]}">━ CKA base vs tuned (band: 95 % bootstrap)</span> · '
        f'<span style="color:{_COLOURS["weight"]}">━ relative weight change (÷ max {wmax:.3g})</span> · '
        f'<span style="color:{_COLOURS["probe"]}">┅ base linear-probe accuracy</span> · dashed line: recommended '
        "freeze point</p>"
    )
    return "".join(parts) + legend


def _guide(report: Any) -> str:
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

    m = g.measurements
    why = (
        f"{m.get('images_per_class')} images per class (little data below {m.get('small_below_per_class')}); "
        f"best base probe at {m.get('best_probe_layer')} ({_pct(m.get('best_probe_acc'))}), "
        f"top features {m.get('top_probe_layer')} ({_pct(m.get('top_probe_acc'))})."
    )
    return (
        "<table class='guide'><tr><th></th><th>similar to ImageNet</th><th>different from ImageNet</th></tr>"
        f"<tr><th>little data</th>{td('small', 'similar')}{td('small', 'different')}</tr>"
        f"<tr><th>lots of data</th>{td('large', 'similar')}{td('large', 'different')}</tr></table>"
        f"<p>{html.escape(g.advice)} <small>{html.escape(why)}</small></p>"
    )


def _pct(v: Any) -> str:
    return f"{100 * v:.0f} %" if _finite(v) else "n/a"


def _num(v: Any, fmt: str = ".3f") -> str:
    return format(v, fmt) if _finite(v) else ""


def _table(report: Any) -> str:
    head = (
        "<tr><th>#</th><th>layer</th><th>type</th><th>CKA</th><th>95 % CI</th><th>weight change</th>"
        "<th>probe acc.</th><th>params</th><th>note</th></tr>"
    )
    body = []
    for r in report.layers:
        note = "new head" if r.new_head else ("frozen in this run" if r.frozen_in_tuned else "")
        ci = f"[{_num(r.cka_low)}, {_num(r.cka_high)}]" if _finite(r.cka_low) else ""
        wc = f"{100 * r.weight_change:.2f} %" if _finite(r.weight_change) else ""
        bold = ' style="font-weight:bold"' if r.name == report.recommendation.freeze_after else ""
        probe = _pct(r.probe_acc) if r.probe_acc is not None else ""
        body.append(
            f"<tr{bold}><td>{r.index}</td><td>{html.escape(r.name)}</td><td>{html.escape(r.type)}</td>"
            f"<td>{_num(r.cka)}</td><td>{ci}</td><td>{wc}</td><td>{probe}</td>"
            f"<td>{r.params:,}</td><td>{note}</td></tr>"
        )
    return f"<table class='layers'>{head}{''.join(body)}</table>"


def _png(image: Any) -> str:
    import base64
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _renders(report: Any) -> str:
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


def render_html(report: Any) -> str:
    """The whole report as one HTML page."""
    rec = report.recommendation
    point = rec.freeze_after or "none (train every layer)"
    items = "".join(f"<li>{html.escape(e)}</li>" for e in rec.evidence)
    caveats = "".join(f"<li>{html.escape(c)}</li>" for c in [*rec.caveats, *report.warnings])
    acc = f" · fine-tuned accuracy on these images {_pct(report.tuned_accuracy)}" if report.tuned_accuracy else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Layer Explorer · before and after fine-tuning</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:980px;margin:24px auto;padding:0 12px;color:#222}}
table{{border-collapse:collapse;margin:8px 0}} td,th{{border:1px solid #ccc;padding:3px 7px;font-size:13px}}
table.layers td:nth-child(n+4){{text-align:right}} .box{{background:#f4f8ff;border:1px solid #bcd;padding:10px 14px}}
pre{{background:#f6f6f6;padding:10px;overflow:auto;font-size:12px}} .legend{{font-size:12px}}
</style></head><body>
<h1>Before and after fine-tuning, layer by layer</h1>
<p>Base <b>{html.escape(str(report.base.get("spec")))}</b> vs tuned <b>{html.escape(str(report.tuned.get("spec")))}</b>
on {report.data.get("images_used")} images of {html.escape(str(report.data.get("source")))}
({len(report.data.get("classes", []))} classes, chance {_pct(report.chance)}){acc}.</p>
<div class="box"><h2>Recommendation: freeze up to <code>{html.escape(point)}</code></h2>
<p>{html.escape(rec.reason)}</p>
<p>{rec.trainable:,} trainable, {rec.non_trainable:,} non-trainable of {rec.total:,} parameters.</p></div>
<h2>Per-layer curves</h2>{_chart(report)}
<h2>Where your case sits</h2>{_guide(report)}
{_renders(report)}
<h2>Evidence</h2><ul>{items}</ul>
{f"<h2>Caveats</h2><ul>{caveats}</ul>" if caveats else ""}
<h2>Freeze there in PyTorch</h2><pre>{html.escape(rec.code)}</pre>
<h2>All layers</h2>{_table(report)}
<p><small>{html.escape(str(report.settings.get("cka")))}; {html.escape(str(report.settings.get("pooling")))};
{report.settings.get("n_boot")} bootstrap resamples of minibatches; probes: standardised features, logistic
regression, {report.settings.get("probe_folds")}-fold stratified cross-validation.</small></p>
</body></html>
"""
