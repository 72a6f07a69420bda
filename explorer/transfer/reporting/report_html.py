"""A self-contained HTML summary of a comparison report: the curves, the advice, the 2×2 guide, the sweep, the table.

No JavaScript and no downloads: one file with inline SVG charts, readable offline and attachable anywhere. The
per-layer curves are :func:`explorer.transfer.reporting.report.chart_series`, the same the app's plotly chart draws.

Every text the page shows is an English sentence marked with :func:`~explorer.errors.msg`; `translate` (the app's
``explorer.ui.messages.localize`` for the reader's language) turns each one, headings and table headers included,
into the reader's language as it is written out. Without it the page is in English.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from explorer.errors import msg
from explorer.transfer.advice.guide import why
from explorer.transfer.reporting.figures import figure
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
Translate = Callable[[str], str]


def _english(text: str) -> str:
    return text


def _escaper(translate: Translate | None) -> tuple[Translate, Translate]:
    """(translate, translate-then-escape): the reader's language for a plain sentence, and the same made safe for
    HTML (a sentence whose fields already hold HTML is translated and written as it is)."""
    tr = translate or _english
    return tr, lambda text: html.escape(tr(text))


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


def _chart(report: ComparisonReport, translate: Translate | None = None) -> str:
    _, t = _escaper(translate)
    cs = chart_series(report)
    n = len(cs.names)
    if not n:
        return ""
    parts, x, y = _axes(n, t(msg("per-layer curves")))
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
    label = cs.weight_label
    pieces = [
        f'<span style="color:{_COLOURS["cka"]}">━ {t(msg("CKA base vs tuned (band: 95 % interval)"))}</span>',
        f'<span style="color:{_COLOURS["parts"]}">╍ {t(msg("tuned weights + base BN statistics"))} · ┈ '
        f"{t(msg('base weights + tuned BN statistics'))}</span>",
        f'<span style="color:{_COLOURS["weight"]}">━ {t(msg(f"{label} (÷ max {wmax:.3g})"))}</span>',
        f'<span style="color:{_COLOURS["probe"]}">┅ {t(msg("base linear-probe accuracy"))}</span>',
    ]
    if cs.sweep:
        pieces.append(t(msg("sweep: held-out accuracy per route, dashed line: train every layer")))
    pieces.append(t(msg("dashed vertical: recommended freeze point")))
    return "".join(parts) + f'<p class="legend">{" · ".join(pieces)}</p>'


def _guide(report: ComparisonReport, translate: Translate | None = None) -> str:
    _, t = _escaper(translate)
    g = report.recommendation.guide
    cells = {
        ("small", "similar"): msg("Linear classifier on top features"),
        ("small", "different"): msg("Classifier on earlier layers"),
        ("large", "similar"): msg("Fine-tune the top layers"),
        ("large", "different"): msg("Fine-tune most / all layers"),
    }

    def td(size: str, sim: str) -> str:
        here = (size, sim) == (g.size, g.similarity)
        style = ' style="background:#fff3b0;font-weight:bold"' if here else ""
        mark = " " + t(msg("← your case")) if here else ""
        return f"<td{style}>{t(cells[(size, sim)])}{mark}</td>"

    return (
        f"<table class='guide'><tr><th></th><th>{t(msg('similar to ImageNet'))}</th>"
        f"<th>{t(msg('different from ImageNet'))}</th></tr>"
        f"<tr><th>{t(msg('little data'))}</th>{td('small', 'similar')}{td('small', 'different')}</tr>"
        f"<tr><th>{t(msg('lots of data'))}</th>{td('large', 'similar')}{td('large', 'different')}</tr></table>"
        f"<p>{t(g.advice)} <small>{t(why(g))}</small></p>"
    )


def _pct(v: float | None) -> str:
    return f"{100 * v:.0f} %" if v is not None and finite(v) else "n/a"


def _num(v: float | None, fmt: str = ".3f") -> str:
    return format(v, fmt) if finite(v) else ""


_LAYER_COLUMNS = (
    "#", msg("layer"), msg("type"), "CKA", msg("95 % interval"), msg("tuned weights + base BN"),
    msg("base weights + tuned BN"), msg("weight RMS change"), msg("per step budget"), msg("relative"),
    msg("BN mean shift"), msg("probe acc."), msg("params"), msg("note"),
)  # fmt: skip


def _table(report: ComparisonReport, translate: Translate | None = None) -> str:
    _, t = _escaper(translate)
    head = "<tr>" + "".join(f"<th>{t(h)}</th>" for h in _LAYER_COLUMNS) + "</tr>"
    new_head, frozen = t(msg("new head")), t(msg("frozen in this run"))
    body = []
    for r in report.layers:
        note = new_head if r.new_head else (frozen if r.frozen_in_tuned else "")
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
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _renders(report: ComparisonReport, translate: Translate | None = None) -> str:
    """Same-seed visualizations of the same units in both models, side by side (when they were rendered)."""
    if not report.renders:
        return ""
    _, t = _escaper(translate)
    rows = []
    for layer, r in report.renders.items():
        cells = []
        for i, unit in enumerate(r.get("units", [])):
            ratio = figure(r.get("per_unit", [None] * (i + 1))[i])
            caption = t(msg(f"unit {unit} · cross-excitation {ratio:.2f}"))
            cells.append(
                f"<td><img src='{_png(r['base'][i])}' width=96><img src='{_png(r['tuned'][i])}' width=96>"
                f"<br><small>{caption}</small></td>"
            )
        rows.append(f"<tr><th>{html.escape(layer)}</th>{''.join(cells)}</tr>")
    title = t(msg("Same units, same seed: base (left) and tuned (right)"))
    return f"<h2>{title}</h2><table class='renders'>{''.join(rows)}</table>"


def _advice(report: ComparisonReport, translate: Translate | None = None) -> str:
    tr, t = _escaper(translate)
    rec = report.recommendation
    if rec.source == "withheld":
        title = t(msg("No freeze point: the evidence does not allow one"))
    else:
        shown = html.escape(rec.freeze_after) if rec.freeze_after else t(msg("none (train every layer)"))
        point = f"<code>{shown}</code>"  # HTML in the title's field: written as it is
        linear = rec.route == "linear"
        if rec.source == "sweep":
            title = tr(
                msg(f"Measured: freeze up to {point} and train a linear classifier on it")
                if linear
                else msg(f"Measured: freeze up to {point}")
            )
        else:
            title = tr(
                msg(f"Predicted (no sweep has run): freeze up to {point} and train a linear classifier on it")
                if linear
                else msg(f"Predicted (no sweep has run): freeze up to {point}")
            )
    tries = "".join(f"<li>{t(x)}</li>" for x in rec.try_next)
    extra = f"<p>{t(rec.agreement)}</p>" if rec.agreement else ""
    counts = ""
    if rec.source != "withheld":
        n = msg(f"{rec.trainable:,} trainable, {rec.non_trainable:,} non-trainable of {rec.total:,} parameters.")
        counts = f"<p>{t(n)}</p>"
    return (
        f'<div class="box"><h2>{title}</h2><p>{t(rec.reason)}</p>'
        f"{f'<ul>{tries}</ul>' if tries else ''}{extra}{counts}</div>"
    )


def render_html(report: ComparisonReport, *, translate: Translate | None = None) -> str:
    """The whole report as one HTML page; `translate` writes every text in the reader's language (None: English)."""
    tr, t = _escaper(translate)
    rec = report.recommendation
    items = "".join(f"<li>{t(e)}</li>" for e in rec.evidence)
    caveats = "".join(f"<li>{t(c)}</li>" for c in [*rec.caveats, *report.warnings])
    base = f"<b>{html.escape(str(report.base.get('spec')))}</b>"  # HTML in the sentence's fields: kept as it is
    tuned = f"<b>{html.escape(str(report.tuned.get('spec')))}</b>"
    images, classes = report.data.get("images_used"), len(report.data.get("classes", []))
    source, chance = html.escape(str(report.data.get("source"))), _pct(report.chance)
    if report.tuned_accuracy is not None:
        accuracy = _pct(report.tuned_accuracy)
        about = msg(
            f"Base {base} vs tuned {tuned} on {images} images of {source} ({classes} classes, chance {chance}) · "
            f"tuned accuracy on held-out images {accuracy}."
        )
    else:
        about = msg(
            f"Base {base} vs tuned {tuned} on {images} images of {source} ({classes} classes, chance {chance})."
        )
    sweep = sweep_section(report.sweep, box=False, translate=translate) if report.sweep is not None else ""
    code = (
        f"<h2>{t(msg('Freeze there in PyTorch'))}</h2><pre>{html.escape(rec.code)}</pre>"
        if rec.source != "withheld"
        else ""
    )
    folds = report.settings.get("probe_folds")
    probes = msg(f"probes: standardised features, logistic regression, {folds}-fold stratified cross-validation.")
    how = f"{t(str(report.settings.get('cka')))}; {t(str(report.settings.get('pooling')))}; {t(probes)}"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{t(msg("Layer Explorer · before and after fine-tuning"))}</title>
<style>{_STYLE}</style></head><body>
<h1>{t(msg("Before and after fine-tuning, layer by layer"))}</h1>
<p>{tr(about)}
{t(str(report.heldout.get("note", "")))}</p>
{_advice(report, translate)}
{sweep}
<h2>{t(msg("Per-layer curves"))}</h2>{_chart(report, translate)}
<h2>{t(msg("Where your case sits: the classic transfer-learning 2×2 guide"))}</h2>{_guide(report, translate)}
{_renders(report, translate)}
<h2>{t(msg("Evidence"))}</h2><ul>{items}</ul>
{f"<h2>{t(msg('Caveats'))}</h2><ul>{caveats}</ul>" if caveats else ""}
{code}
<h2>{t(msg("All layers"))}</h2>{_table(report, translate)}
<p><small>{how}</small></p>
</body></html>
"""


# --------------------------------------------------------------------------- the freeze sweep

_ROUTE_COLOURS = {"finetune": "#9467bd", "linear": "#ff7f0e"}


def sweep_svg(sweep: SweepReport, *, translate: Translate | None = None) -> str:
    """Held-out accuracy against the freeze point, one line per route, 95 % intervals as whiskers."""
    _, t = _escaper(translate)
    points = list(dict.fromkeys(o.point for o in sweep.options))
    n = len(points)
    if not n:
        return ""
    lo = max(0.0, min(o.low for o in sweep.options) - 0.02)  # zoomed: the options differ by a few points
    lo = 0.0 if lo < 0.25 else lo
    x = lambda i: _PAD_L + (i + 0.5) * (_W - _PAD_L - _PAD_R) / n
    y = lambda v: _PAD_T + (1 - (max(lo, min(1.0, v)) - lo) / (1 - lo)) * (_H - _PAD_T - _PAD_B)
    parts = [f'<svg viewBox="0 0 {_W} {_H}" width="100%" role="img" aria-label="{t(msg("freeze sweep"))}">']
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
    pieces = [
        f'<span style="color:{_ROUTE_COLOURS["finetune"]}">━ {t(msg("fine-tune after the point"))}</span>',
        f'<span style="color:{_ROUTE_COLOURS["linear"]}">━ {t(msg("linear classifier on the point"))}</span>',
        t(msg("whiskers: 95 % intervals")),
        t(msg("dotted: chance")),
        t(msg("large dot: recommended")),
    ]
    return "".join(parts) + f'<p class="legend">{" · ".join(pieces)}</p>'


_SWEEP_COLUMNS = (
    msg("point"), msg("route"), msg("accuracy"), msg("95 % interval"), msg("SD over seeds"), msg("trainable"),
    msg("seconds"), msg("loss vs best [95 %]"), msg("verdict"),
)  # fmt: skip


def _sweep_table(sweep: SweepReport, translate: Translate | None = None) -> str:
    _, t = _escaper(translate)
    head = "<tr>" + "".join(f"<th>{t(h)}</th>" for h in _SWEEP_COLUMNS) + "</tr>"
    body = []
    for o in sweep.options:
        bold = ' style="font-weight:bold"' if o is sweep.chosen else ""
        body.append(
            f"<tr{bold}><td>{html.escape(o.point)}</td><td>{o.route}</td><td>{_pct1(o.accuracy)}</td>"
            f"<td>[{_pct1(o.low)}, {_pct1(o.high)}]</td><td>{_pct1(o.seed_sd)}</td><td>{o.trainable:,}</td>"
            f"<td>{o.seconds:.1f}</td><td>{_pts(o.loss)} [{_pts(o.loss_low)}, {_pts(o.loss_high)}]</td>"
            f"<td>{t(o.status)}</td></tr>"
        )
    return f"<table class='layers'>{head}{''.join(body)}</table>"


def _pts(v: float) -> str:
    return f"{100 * v:.1f}" if finite(v) else "n/a"


def _pct1(v: float) -> str:
    return f"{100 * v:.1f} %" if finite(v) else "n/a"


def _measured(sweep: SweepReport) -> str:
    """The sweep box's title: what it recommends."""
    o = sweep.chosen
    if sweep.choice.point is None:
        return msg("No recommendation")
    if o is None:
        return "Measured: "
    return msg(f"Measured: {o.label}")


def sweep_section(sweep: SweepReport, *, box: bool = True, translate: Translate | None = None) -> str:
    """The sweep as an HTML fragment: the recommendation (unless `box` is False: the page already says it), the
    curve, the table, how it was decided; `translate` writes every text in the reader's language (None: English)."""
    tr, t = _escaper(translate)
    c = sweep.choice
    tries = "".join(f"<li>{t(x)}</li>" for x in c.try_next)
    notes = "".join(f"<li>{t(n)}</li>" for n in sweep.notes)
    d, s = sweep.data, sweep.settings
    test = ""
    if c.test_accuracy is not None:
        held = f"<b>{_pct1(c.test_accuracy)}</b>"  # HTML in the sentence's fields: kept as it is
        note, chose = t(c.test_note), _pct1(c.choice_accuracy or float("nan"))
        test = (
            "<p>"
            + tr(
                msg(
                    f"Accuracy of the choice on images that took no part in choosing it: {held} ({note}); on the "
                    f"images that chose it: {chose}."
                )
            )
            + "</p>"
        )
    head = f'<div class="box"><h2>{t(_measured(sweep))}</h2><p>{t(c.reason)}</p>{test}' + (
        f"<ul>{tries}</ul></div>" if tries else "</div>"
    )
    evaluation, scored, source = sweep.evaluation, d.get("scored_images", d.get("heldout_images")), d.get("source")
    epochs, size, augment, seeds = s.get("epochs"), s.get("input_size"), s.get("augment"), s.get("seeds")
    how = msg(
        f"Scored by {evaluation} on {scored} images of {source}; at most {epochs} epochs with early stopping on an "
        f"inner validation split, {size} px, augmentation {augment}, {seeds} seed(s)."
    )
    decision = msg(f"Decision: {c.test}.")
    return (
        (head if box else "")
        + f"<h2>{t(msg('Accuracy at each freeze point'))}</h2>{sweep_svg(sweep, translate=translate)}"
        + _sweep_table(sweep, translate)
        + f"<p><small>{t(how)} {t(decision)}</small></p>"
        + (f"<ul>{notes}</ul>" if notes else "")
    )


def render_sweep_html(sweep: SweepReport, *, translate: Translate | None = None) -> str:
    """A freeze sweep as one offline HTML page; `translate` writes every text in the reader's language (None:
    English)."""
    tr, t = _escaper(translate)
    spec = f"<b>{html.escape(sweep.base.get('spec', ''))}</b>"  # HTML in the sentence's field: kept as it is
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{t(msg("Layer Explorer · freeze sweep"))}'
        f"</title><style>{_STYLE}</style></head><body><h1>{t(msg('Where to freeze: the measured sweep'))}</h1>"
        f"<p>{tr(msg(f'Base model: {spec}.'))}</p>{sweep_section(sweep, translate=translate)}</body></html>"
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
