"""What a comparison produced: per-layer records in depth order, the recommendation, and their exports.

`ComparisonReport.to_json()` / `.to_dict()` (NaN written as null), `.to_csv()` (one row per layer),
and, in :mod:`explorer.transfer.reporting.report_html`, `render_html(report)` (a self-contained summary) and
`save_report(report, path.json)` (all three side by side). :func:`chart_series`
is the per-layer series the HTML chart and the app's plotly chart both draw, and :func:`finite` the test they
share for a value that can be drawn.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorer.errors import msg
from explorer.transfer.advice.guide import GuideCell
from explorer.transfer.sweeping.sweep_report import SweepOption, SweepReport


@dataclass
class Recommendation:
    """Where to freeze (or why not to say), how that was decided, and what freezing there costs and saves."""

    freeze_after: str | None  # None: train every layer (or nothing decided: see `source`)
    reason: str
    evidence: list[str]
    guide: GuideCell
    trainable: int = 0
    non_trainable: int = 0
    total: int = 0
    code: str = ""
    caveats: list[str] = field(default_factory=list)
    source: str = "prediction"  # "sweep" (measured) | "prediction" (from CKA, no sweep) | "withheld"
    route: str = "finetune"  # "linear": a linear classifier on the pooled output of freeze_after
    prediction: str | None = None  # the CKA prediction on all images ("none": train every layer)
    prediction_halves: list[str | None] = field(default_factory=list)
    stable: bool | None = None  # the two halves agree within one block
    agreement: str = ""  # prediction against the measured sweep
    withheld: str = ""  # why the tuned model's representation gives no advice (the gate)
    try_next: list[str] = field(default_factory=list)


@dataclass
class LayerComparison:
    """One ladder block: how much fine-tuning changed it, and how useful its pretrained features are."""

    name: str
    index: int  # position in the ladder (depth order)
    type: str
    stage: int
    channels: int | None
    params: int
    cka: float  # debiased CKA, base vs tuned activations on the held-out images (1 = same up to rotation/scale)
    cka_low: float  # 95 % interval, delete-one-image jackknife
    cka_high: float
    weight_change: float | None  # ‖W_ft − W_pre‖ / ‖W_pre‖ over the block's parameters; None: no params or new head
    weight_change_channels: list[float] = field(default_factory=list)  # per output channel of its last conv/linear
    probe_acc: float | None = None  # base model features, cross-validated
    probe_std: float | None = None
    frozen_in_tuned: bool = False  # the tuned run kept this block frozen (so CKA 1 and no change are by design)
    new_head: bool = False
    cross_excitation: float | None = None
    cka_weights: float = float("nan")  # CKA with the base of (tuned weights + base BatchNorm statistics)
    cka_stats: float = float("nan")  # CKA with the base of (base weights + tuned BatchNorm statistics)
    cka_halves: list[float] = field(default_factory=list)  # the CKA on each of two disjoint halves of the images
    weight_rms: float | None = None  # absolute RMS change of the block's parameters
    weight_per_step: float | None = None  # weight_rms / Σ learning rate over the steps: the fraction Adam could move
    bn_shift: float | None = None  # RMS over channels of |Δ running mean| / base running std
    bn_scale: float | None = None  # RMS over channels of |ln(tuned std / base std)|
    cka_class_token: float | None = None  # token layers: CKA of the class token alone (patch tokens give `cka`)
    cka_class_token_low: float | None = None
    cka_class_token_high: float | None = None

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        ch = row.pop("weight_change_channels")
        halves = row.pop("cka_halves")
        row["cka_half_a"], row["cka_half_b"] = (halves + [None, None])[:2]
        row["weight_change_channel_median"] = float(np.median(ch)) if ch else None
        row["weight_change_channel_max"] = float(np.max(ch)) if ch else None
        return row


@dataclass
class ComparisonReport:
    """Everything `compare` measured, with the recommendation; JSON, CSV and HTML exports."""

    base: dict[str, Any]
    tuned: dict[str, Any]
    data: dict[str, Any]
    settings: dict[str, Any]
    layers: list[LayerComparison]
    recommendation: Recommendation
    tuned_accuracy: float | None = None  # on held-out images only; None when no image is known to be unseen
    chance: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    renders: dict[str, Any] = field(default_factory=dict, repr=False)  # same-seed pictures (not exported to JSON)
    heldout: dict[str, Any] = field(default_factory=dict)  # status (heldout/different/unknown), note, images
    sweep: SweepReport | None = None  # the measured freeze sweep the recommendation used, if any

    def layer(self, name: str) -> LayerComparison:
        for row in self.layers:
            if row.name == name:
                return row
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("renders", None)
        return _json_safe(d)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ComparisonReport:
        """The report back from `to_dict()` / the JSON export (same-seed renders are not in it)."""
        return report_from_dict(d)

    def rows(self) -> list[dict[str, Any]]:
        """One flat dict per layer (the table the app shows and the CSV holds); every CKA figure carries the
        pooling and input size it was measured with, and which images."""
        where = {
            "cka_pooling": self.settings.get("pooling"),
            "input_px": (self.data.get("input_size") or [None])[0],
            "images": self.heldout.get("status"),
        }
        return [{**row.as_row(), **where} for row in self.layers]

    def to_csv(self, path: str | Path | None = None, *, translate: Callable[[str], str] | None = None) -> str:
        """The rows as CSV (written to `path` too when given); `translate` turns the header row's column names into
        the reader's language (None: English, the column keys themselves)."""
        buf = io.StringIO()
        rows = self.rows()
        keys = list(rows[0]) if rows else ["name"]
        csv.writer(buf).writerow([translate(k) for k in keys] if translate else keys)
        writer = csv.DictWriter(buf, fieldnames=keys)
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text


# The CSV's column names, marked for the translator (a download in another language translates its header row).
CSV_COLUMNS = (
    msg("name"), msg("index"), msg("type"), msg("stage"), msg("channels"), msg("params"), msg("cka"), msg("cka_low"),
    msg("cka_high"), msg("weight_change"), msg("probe_acc"), msg("probe_std"), msg("frozen_in_tuned"),
    msg("new_head"), msg("cross_excitation"), msg("cka_weights"), msg("cka_stats"), msg("weight_rms"),
    msg("weight_per_step"), msg("bn_shift"), msg("bn_scale"), msg("cka_class_token"), msg("cka_class_token_low"),
    msg("cka_class_token_high"), msg("cka_half_a"), msg("cka_half_b"), msg("weight_change_channel_median"),
    msg("weight_change_channel_max"), msg("cka_pooling"), msg("input_px"), msg("images"),
)  # fmt: skip

_FLOATS = {"cka", "cka_low", "cka_high", "cka_weights", "cka_stats"}


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def report_from_dict(d: dict[str, Any]) -> ComparisonReport:
    """Rebuild a ComparisonReport from its `to_dict()` (nulls back to NaN where the record holds floats)."""
    layers = []
    for row in d["layers"]:
        row = {k: (_nan(v) if k in _FLOATS else v) for k, v in _known(LayerComparison, row).items()}
        layers.append(LayerComparison(**row))
    rec = dict(d["recommendation"])
    rec["guide"] = GuideCell(**_known(GuideCell, rec["guide"]))
    recommendation = Recommendation(**_known(Recommendation, rec))
    rest = _known(ComparisonReport, d)
    sweep = SweepReport.from_dict(d["sweep"]) if isinstance(d.get("sweep"), dict) else None
    rest.update(layers=layers, recommendation=recommendation, chance=_nan(d.get("chance")), renders={}, sweep=sweep)
    return ComparisonReport(**rest)


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _json_safe(obj.item())
    return obj


# --------------------------------------------------------------------------- what the charts draw


def finite(x: object) -> bool:
    """Whether `x` is a number that can be drawn (not None, NaN or infinite)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _value(x: object) -> float | None:
    return float(x) if finite(x) else None  # type: ignore[arg-type]


@dataclass
class ChartSeries:
    """The per-layer curves of a comparison, in ladder order (None where a layer has no value)."""

    names: list[str]
    cka: list[float | None]
    cka_low: list[float | None]
    cka_high: list[float | None]
    cka_weights: list[float | None]  # tuned weights + base BatchNorm statistics
    cka_stats: list[float | None]  # base weights + tuned BatchNorm statistics
    probe: list[float | None]
    weight: list[float | None]  # the scale-aware weight change (see weight_label)
    weight_label: str
    sweep: dict[str, list[SweepOption | None]]  # route → the option measured at each layer
    sweep_all: SweepOption | None  # 'none' (train every layer), drawn as a reference line
    recommended: str | None


def chart_series(report: ComparisonReport) -> ChartSeries:
    """What both charts draw: CKA with its interval and BN parts, probe accuracy, weight change, the sweep."""
    rows = report.layers
    per_step = any(finite(r.weight_per_step) for r in rows)
    weight = [_value(r.weight_per_step if per_step else r.weight_rms) for r in rows]
    label = (
        msg("weight change per step budget (RMS change ÷ Σ learning rate)")
        if per_step
        else msg("weight change (absolute RMS)")
    )
    sweep: dict[str, list[SweepOption | None]] = {}
    sweep_all = None
    if report.sweep is not None:
        for o in report.sweep.options:
            if o.point == "none":
                sweep_all = o if o.route == "finetune" else sweep_all
                continue
            sweep.setdefault(o.route, [None] * len(rows))
            i = next((k for k, r in enumerate(rows) if r.name == o.point), None)
            if i is not None:
                sweep[o.route][i] = o
    rec = report.recommendation
    return ChartSeries(
        names=[r.name for r in rows],
        cka=[_value(r.cka) for r in rows],
        cka_low=[_value(r.cka_low) for r in rows],
        cka_high=[_value(r.cka_high) for r in rows],
        cka_weights=[_value(r.cka_weights) for r in rows],
        cka_stats=[_value(r.cka_stats) for r in rows],
        probe=[_value(r.probe_acc) for r in rows],
        weight=weight,
        weight_label=label,
        sweep=sweep,
        sweep_all=sweep_all,
        recommended=rec.freeze_after if rec.source != "withheld" else None,
    )
