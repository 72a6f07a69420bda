"""The classic transfer-learning 2×2 guide (little/lots of data × similar/different task), placed by measurement.

- **Data size** is the number of *training* images per class (those the model learns from, not every image in the
  folder): little below :data:`SMALL_PER_CLASS`.
- **Similar or different** compares two linear classifiers on the *base* model's features, scored on the same
  images: the top layer's (the features a classic feature extractor uses) and the best layer's. The task counts as
  different when the best layer is significantly better than the top one: the lower end of the 95 % interval of
  their paired accuracy difference is above 0 (per-image differences, t interval). With a sweep, they are its
  linear route, trained on the whole training split; without one, the comparison's probes (same folds), which
  train on fewer images and so starve the top layer's many features (at 287 images the 1,280 pooled features of
  EfficientNet-Lite0 read 88 % on digits, against 95 % trained on 1,437).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from explorer.errors import msg
from explorer.transfer.comparison.probes import ProbeResult
from explorer.transfer.reporting.figures import figure
from explorer.transfer.sweeping.stats import paired_difference
from explorer.transfer.sweeping.sweep_report import SweepOption

SMALL_PER_CLASS = 300  # fewer training images per class than this counts as "little data"

GUIDE = {
    ("small", "similar"): msg(
        "Little data, similar task: train a linear classifier on the top features; freeze the rest."
    ),
    ("small", "different"): msg(
        "Little data, different task: train a classifier on earlier features, where the pretrained network's "
        "features are still generic; keep the rest frozen."
    ),
    ("large", "similar"): msg("Lots of data, similar task: fine-tune the top layers, keep the early ones frozen."),
    ("large", "different"): msg(
        "Lots of data, different task: fine-tune most layers (or all), starting from the pretrained weights."
    ),
}


@dataclass
class GuideCell:
    """Where the user's case sits in the 2×2 guide, and the measurements that put it there."""

    size: str  # "small" | "large"
    similarity: str  # "similar" | "different" | "unknown" (no probes)
    advice: str
    measurements: dict[str, float | int | str | None] = field(default_factory=dict)


def place(
    train_per_class: float | None, probes: dict[str, ProbeResult | None], *, per_class_known: bool = True
) -> GuideCell:
    """The guide's cell from training images per class and the base probes (dict in depth order, body layers)."""
    probed = [(n, p) for n, p in probes.items() if p is not None]
    per_class = train_per_class if train_per_class is not None else float("nan")
    size = "small" if not math.isfinite(per_class) or per_class < SMALL_PER_CLASS else "large"
    m: dict[str, float | int | str | None] = {
        "train_images_per_class": round(per_class, 1) if math.isfinite(per_class) else None,
        "per_class_from": msg("the fine-tune's training split")
        if per_class_known
        else msg("all images compared (split unknown)"),
        "small_below_per_class": SMALL_PER_CLASS,
    }
    if not probed:
        return GuideCell(size, "unknown", msg("Turn the probes on to place your task (similar or different)."), m)
    top_name, top = probed[-1]
    best_name, best = max(probed, key=lambda t: t[1].accuracy)
    diff, low, high = paired_difference(best.correct, top.correct) if best is not top else (0.0, 0.0, 0.0)
    similarity = "different" if math.isfinite(low) and low > 0 else "similar"
    m.update(
        best_probe_layer=best_name,
        best_probe_acc=best.accuracy,
        top_probe_layer=top_name,
        top_probe_acc=top.accuracy,
        probe_gap=diff,
        probe_gap_low=low,
        probe_gap_high=high,
        probe_images=len(top.correct),
        chance=top.chance,
    )
    return GuideCell(size, similarity, GUIDE[(size, similarity)], m)


def place_from_sweep(train_per_class: float, options: list[SweepOption]) -> GuideCell | None:
    """The guide's cell from a sweep's linear route: the top layer's classifier against the best layer's, trained
    on the whole training split and scored on the same held-out images (None without two linear options)."""
    linear = [o for o in options if o.route == "linear" and o.correct]
    if len(linear) < 2:
        return None
    top, best = linear[-1], max(linear, key=lambda o: o.accuracy)
    a = [c == "1" for c in best.correct]
    b = [c == "1" for c in top.correct]
    diff, low, high = paired_difference(a, b) if best is not top else (0.0, 0.0, 0.0)
    size = "small" if train_per_class < SMALL_PER_CLASS else "large"
    similarity = "different" if math.isfinite(low) and low > 0 else "similar"
    m: dict[str, float | int | str | None] = {
        "train_images_per_class": round(train_per_class, 1),
        "per_class_from": msg("the sweep's training split"),
        "small_below_per_class": SMALL_PER_CLASS,
        "best_probe_layer": best.point,
        "best_probe_acc": best.accuracy,
        "top_probe_layer": top.point,
        "top_probe_acc": top.accuracy,
        "probe_gap": diff,
        "probe_gap_low": low,
        "probe_gap_high": high,
        "probe_images": best.heldout,
        "probes_from": msg("the sweep's linear route"),
    }
    return GuideCell(size, similarity, GUIDE[(size, similarity)], m)


def why(cell: GuideCell) -> str:
    """One sentence saying what placed the user's case in its cell."""
    m = cell.measurements

    def pct(v: object) -> str:
        return f"{100 * v:.0f} %" if isinstance(v, (int, float)) and math.isfinite(v) else "n/a"

    per_class, source, small = (
        figure(m.get("train_images_per_class")),
        m.get("per_class_from"),
        m.get("small_below_per_class"),
    )
    if cell.similarity == "unknown":
        return msg(f"{per_class:.1f} training images per class ({source}; 'little data' below {small}).")
    probes = m.get("probes_from") or msg("linear probes on the base features, same folds")
    best, top = m.get("best_probe_layer"), m.get("top_probe_layer")
    best_acc, top_acc = pct(m.get("best_probe_acc")), pct(m.get("top_probe_acc"))
    different = cell.similarity == "different"
    gap, low, high = m.get("probe_gap"), m.get("probe_gap_low"), m.get("probe_gap_high")
    if not (isinstance(gap, float) and math.isfinite(gap)):
        return (
            msg(
                f"{per_class:.1f} training images per class ({source}; 'little data' below {small}); {probes}: best at "
                f"{best} ({best_acc}), top layer {top} ({top_acc}),  → different."
            )
            if different
            else msg(
                f"{per_class:.1f} training images per class ({source}; 'little data' below {small}); {probes}: best at "
                f"{best} ({best_acc}), top layer {top} ({top_acc}),  → similar."
            )
        )
    assert isinstance(low, (int, float)) and isinstance(high, (int, float))  # measured with the gap
    g, lo, hi = 100 * gap, 100 * low, 100 * high
    return (
        msg(
            f"{per_class:.1f} training images per class ({source}; 'little data' below {small}); {probes}: best at "
            f"{best} ({best_acc}), top layer {top} ({top_acc}), best minus top {g:+.1f} points [{lo:+.1f}, {hi:+.1f}]"
            f" → different."
        )
        if different
        else msg(
            f"{per_class:.1f} training images per class ({source}; 'little data' below {small}); {probes}: best at "
            f"{best} ({best_acc}), top layer {top} ({top_acc}), best minus top {g:+.1f} points [{lo:+.1f}, {hi:+.1f}]"
            f" → similar."
        )
    )
