"""The freeze-point recommendation and the lecture's 2×2 guide, placed from measurements.

Rule: the deepest block up to which fine-tuning left every block's representation nearly unchanged
(debiased CKA with the base model ≥ ``similar_cka``, judged by the lower end of its bootstrap interval) can stay
frozen: training those blocks bought little. The 2×2 guide (dataset size × similarity to ImageNet) is placed
from the dataset size per class and from where the *base* model's linear probes peak: if its top features
separate the user's classes about as well as any layer, the task is ImageNet-like; if a middle block does
clearly better, it is not. With little data and an ImageNet-like task whose top features already match the
fine-tuned accuracy, the recommendation moves to a linear classifier on the top features.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

SMALL_PER_CLASS = 300  # fewer labelled images per class than this counts as "little data"
TOP_PROBE_MARGIN = 0.03  # top-feature probe within 3 points of the best layer's → "similar to ImageNet"
LINEAR_HEAD_MARGIN = 0.02  # top-feature probe within 2 points of the fine-tuned accuracy → a linear head suffices

GUIDE = {
    ("small", "similar"): "Little data, similar task: train a linear classifier on the top features; freeze the rest.",
    ("small", "different"): "Little data, different task: train a classifier on earlier features, where the "
    "pretrained network's features are still generic; keep the rest frozen.",
    ("large", "similar"): "Lots of data, similar task: fine-tune the top layers, keep the early ones frozen.",
    ("large", "different"): "Lots of data, different task: fine-tune most layers (or all), starting from the "
    "pretrained weights.",
}


@dataclass
class GuideCell:
    """Where the user's case sits in the 2×2 guide, and the measurements that put it there."""

    size: str  # "small" | "large"
    similarity: str  # "similar" | "different"
    advice: str
    measurements: dict[str, Any] = field(default_factory=dict)


@dataclass
class Recommendation:
    """The deepest layer that can stay frozen, why, and what freezing there costs and saves."""

    freeze_after: str | None  # None: train every layer
    reason: str
    evidence: list[str]
    guide: GuideCell
    trainable: int = 0
    non_trainable: int = 0
    total: int = 0
    code: str = ""
    caveats: list[str] = field(default_factory=list)


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{100 * x:.0f} %" if pct else f"{x:.2f}"


def _cka_floor(row: Any) -> float:
    """The CKA value a decision uses: the interval's lower end when there is one."""
    return row.cka_low if math.isfinite(row.cka_low) else row.cka


def recommend(
    base: Any,
    layers: list[Any],
    *,
    n_images: int,
    n_classes: int,
    tuned_accuracy: float | None,
    chance: float,
    tuned_freeze_after: str | None = None,
    similar_cka: float = 0.9,
) -> Recommendation:
    """Pick the freeze point from per-layer comparisons (`LayerComparison` rows in depth order)."""
    from explorer.transfer.freeze import freeze_code, freeze_summary

    body = [r for r in layers if not r.new_head and r.name != _head(layers)]
    candidates = [r for r in body if math.isfinite(r.cka)]
    deepest = None
    first_changed = None
    for r in candidates:
        if _cka_floor(r) >= similar_cka:
            deepest = r
        else:
            first_changed = r
            break

    probed = [r for r in body if r.probe_acc is not None]
    best = max(probed, key=lambda r: r.probe_acc) if probed else None
    top = probed[-1] if probed else None
    per_class = n_images / max(n_classes, 1)
    size = "small" if per_class < SMALL_PER_CLASS else "large"
    similar = best is not None and top is not None and top.probe_acc >= best.probe_acc - TOP_PROBE_MARGIN
    similarity = "similar" if similar else "different"
    third = max(1, len(candidates) // 3)
    late = [r.cka for r in candidates[-third:]]
    guide = GuideCell(
        size=size,
        similarity=similarity,
        advice=GUIDE[(size, similarity)],
        measurements={
            "images": n_images,
            "classes": n_classes,
            "images_per_class": round(per_class, 1),
            "small_below_per_class": SMALL_PER_CLASS,
            "best_probe_layer": best.name if best else None,
            "best_probe_acc": best.probe_acc if best else None,
            "top_probe_layer": top.name if top else None,
            "top_probe_acc": top.probe_acc if top else None,
            "late_cka_mean": sum(late) / len(late) if late else None,
            "chance": chance,
        },
    )

    evidence: list[str] = []
    caveats: list[str] = []
    if deepest is None:
        point = None
        reason = (
            f"Fine-tuning changed the representation from the very first block ({candidates[0].name}: CKA "
            f"{_fmt(candidates[0].cka)}), so no layer is safe to freeze on this evidence: train every layer."
            if candidates
            else "No layer could be measured, so nothing is recommended for freezing."
        )
    else:
        point = deepest.name
        reason = (
            f"Fine-tuning left every block up to {deepest.name} nearly unchanged (CKA with the base model on your "
            f"images ≥ {similar_cka:.2f}, lower end of its 95 % interval), so training those blocks bought little: "
            "keep them frozen"
            + (
                f"; the first block that changed is {first_changed.name} (CKA {_fmt(first_changed.cka)} "
                f"[{_fmt(first_changed.cka_low)}, {_fmt(first_changed.cka_high)}])."
                if first_changed is not None
                else "."
            )
        )
    linear_enough = (
        top is not None and tuned_accuracy is not None and top.probe_acc >= tuned_accuracy - LINEAR_HEAD_MARGIN
    )
    if size == "small" and similar and linear_enough and top.name != point:
        point = top.name
        reason = (
            f"With {per_class:.0f} images per class and a task close to ImageNet, a linear classifier on the "
            f"frozen top features ({top.name}: {_fmt(top.probe_acc, True)} cross-validated) does about as "
            f"well as the fine-tuned model ({_fmt(tuned_accuracy, True)}): freeze everything before the head."
        )
    for r in body:
        bits = [f"CKA {_fmt(r.cka)} [{_fmt(r.cka_low)}, {_fmt(r.cka_high)}]"]
        if r.weight_change is not None:
            bits.append(f"weight change {100 * r.weight_change:.1f} %")
        if r.probe_acc is not None:
            bits.append(f"probe {_fmt(r.probe_acc, True)}")
        if r.frozen_in_tuned:
            bits.append("frozen in this run")
        evidence.append(f"{r.name}: " + ", ".join(bits))
    if best is not None:
        evidence.append(
            f"The base model's features separate your classes best at {best.name} ({_fmt(best.probe_acc, True)}, "
            f"chance {_fmt(chance, True)}); at the top ({top.name}) {_fmt(top.probe_acc, True)}."
        )
    if tuned_accuracy is not None:
        evidence.append(f"The fine-tuned model scores {_fmt(tuned_accuracy, True)} on these images.")
    if tuned_freeze_after:
        caveats.append(
            f"This tuned model was trained with everything up to {tuned_freeze_after} frozen, so those layers read "
            "CKA 1 by construction; fine-tune with nothing frozen to measure how much they would have changed."
        )
    if tuned_accuracy is not None:
        caveats.append("The fine-tuned accuracy is measured on these images, which may include its training images.")
    s = freeze_summary(base, point, num_classes=n_classes)
    return Recommendation(
        freeze_after=point,
        reason=reason,
        evidence=evidence,
        guide=guide,
        trainable=s.trainable,
        non_trainable=s.non_trainable,
        total=s.total,
        code=freeze_code(base, point, num_classes=n_classes),
        caveats=caveats,
    )


def _head(layers: list[Any]) -> str | None:
    """The last row with parameters (the classifier)."""
    with_params = [r for r in layers if r.params]
    return with_params[-1].name if with_params else None
