"""What a comparison produced: per-layer records in depth order, the recommendation, and their exports.

`ComparisonReport.to_json()` / `.to_dict()` (NaN written as null), `.to_csv()` (one row per layer),
`.to_html()` (a self-contained summary) and `.save(path.json)` (all three side by side).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorer.transfer.recommend import Recommendation


@dataclass
class LayerComparison:
    """One ladder block: how much fine-tuning changed it, and how useful its pretrained features are."""

    name: str
    index: int  # position in the ladder (depth order)
    type: str
    stage: int
    channels: int | None
    params: int
    cka: float  # debiased minibatch CKA, base vs tuned activations (1 = same representation up to rotation/scale)
    cka_low: float  # bootstrap interval over minibatches
    cka_high: float
    weight_change: float | None  # ‖W_ft − W_pre‖ / ‖W_pre‖ over the block's parameters; None: no params or new head
    weight_change_channels: list[float] = field(default_factory=list)  # per output channel of its last conv/linear
    probe_acc: float | None = None  # base model features, cross-validated
    probe_std: float | None = None
    frozen_in_tuned: bool = False  # the tuned run kept this block frozen (so CKA 1 and no change are by design)
    new_head: bool = False
    cross_excitation: float | None = None

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        ch = row.pop("weight_change_channels")
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
    tuned_accuracy: float | None = None  # on these images (optimistic if they include its training images)
    chance: float = float("nan")
    warnings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    renders: dict[str, Any] = field(default_factory=dict, repr=False)  # same-seed pictures (not exported to JSON)

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
        """One flat dict per layer (the table the app shows and the CSV holds)."""
        return [row.as_row() for row in self.layers]

    def to_csv(self, path: str | Path | None = None) -> str:
        import csv
        import io

        buf = io.StringIO()
        rows = self.rows()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]) if rows else ["name"])
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if v is None else v) for k, v in r.items()})
        text = buf.getvalue()
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_html(self) -> str:
        from explorer.transfer.report_html import render_html

        return render_html(self)

    def save(self, path: str | Path) -> list[Path]:
        """Write ``path`` (.json) and the HTML summary and CSV beside it; returns the files written."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        html, csv = p.with_suffix(".html"), p.with_suffix(".csv")
        p.write_text(self.to_json())
        html.write_text(self.to_html())
        self.to_csv(csv)
        return [p, html, csv]


_FLOATS = {"cka", "cka_low", "cka_high"}


def _nan(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) else float("nan")


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


def report_from_dict(d: dict[str, Any]) -> ComparisonReport:
    """Rebuild a ComparisonReport from its `to_dict()` (nulls back to NaN where the record holds floats)."""
    from explorer.transfer.recommend import GuideCell

    layers = []
    for row in d["layers"]:
        row = {k: (_nan(v) if k in _FLOATS else v) for k, v in _known(LayerComparison, row).items()}
        layers.append(LayerComparison(**row))
    rec = dict(d["recommendation"])
    rec["guide"] = GuideCell(**_known(GuideCell, rec["guide"]))
    recommendation = Recommendation(**_known(Recommendation, rec))
    rest = _known(ComparisonReport, d)
    rest.update(layers=layers, recommendation=recommendation, chance=_nan(d.get("chance")), renders={})
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
