"""The freeze advice: measured by the sweep when one ran, predicted from CKA otherwise, withheld by the gate.

- **Measured** (``source="sweep"``): the sweep's choice, the cheapest option its paired test does not find worse
  than the best (:mod:`explorer.transfer.sweeping.sweep_report`). The representation then *explains* it.
- **Predicted** (``source="prediction"``): with no sweep, the deepest block up to which fine-tuning left every
  block's representation nearly unchanged (debiased CKA with the base ≥ ``similar_cka``, judged by the lower end
  of its 95 % interval). It is computed again on two disjoint halves of the images; halves that disagree by more
  than one block make it *unstable*. It says what training changed, not what freezing would cost.
- **Withheld** (``source="withheld"``): the gate (:mod:`explorer.transfer.advice.gate`) is closed, the tuned model has
  not learned the task or there are too few images, and the page says why and what to try.
The classic 2×2 guide is placed by :mod:`explorer.transfer.advice.guide`; BatchNorm statistics are told apart from
weights by the hybrid models' CKA (:mod:`explorer.transfer.comparison.weights`).
"""

from __future__ import annotations

import dataclasses
import math

from explorer.errors import msg
from explorer.models import LoadedModel
from explorer.models.freeze import freeze_code, freeze_summary
from explorer.transfer.advice.gate import Gate, learned, too_few
from explorer.transfer.advice.guide import GUIDE, GuideCell, place, place_from_sweep, why
from explorer.transfer.comparison.probes import ProbeResult
from explorer.transfer.reporting.figures import figure
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison, Recommendation
from explorer.transfer.sweeping.prefix import linear_route_code
from explorer.transfer.sweeping.sweep_report import SweepReport

__all__ = ["GUIDE", "GuideCell", "Recommendation", "predict", "recommend", "reconsider"]


def _floor(row: LayerComparison) -> float:
    """The CKA value a decision uses: the interval's lower end when there is one."""
    return row.cka_low if math.isfinite(row.cka_low) else row.cka


def body_rows(layers: list[LayerComparison]) -> list[LayerComparison]:
    """The rows a freeze point can be: everything before the classifier (never a layer after it, like SqueezeNet's
    pooling after its convolutional classifier)."""
    with_params = [r for r in layers if r.params]
    end = layers.index(with_params[-1]) if with_params else len(layers)
    return [r for r in layers[:end] if not r.new_head]


def predict(
    layers: list[LayerComparison], similar_cka: float, cka: dict[str, tuple[float, float]] | None = None
) -> tuple[LayerComparison | None, LayerComparison | None]:
    """(deepest block of the unchanged prefix, first changed block) from CKA values (or `cka`: name → (value, low))."""
    deepest = first_changed = None
    for r in body_rows(layers):
        value, low = cka[r.name] if cka is not None else (r.cka, r.cka_low)
        floor = low if math.isfinite(low) else value
        if not math.isfinite(floor):
            continue
        if floor >= similar_cka:
            deepest = r
        else:
            first_changed = r
            break
    return deepest, first_changed


def bn_explanation(layers: list[LayerComparison]) -> str:
    """Which part moved the representation where it changed most: BatchNorm statistics, weights, or both."""
    rows = [
        r
        for r in body_rows(layers)
        if math.isfinite(r.cka) and math.isfinite(r.cka_weights) and math.isfinite(r.cka_stats)
    ]
    if not rows:
        return ""
    r = min(rows, key=lambda row: row.cka)
    drop_w, drop_s = 1 - r.cka_weights, 1 - r.cka_stats
    parts = msg(
        f"at {r.name} (CKA {r.cka:.2f}), tuned weights with the base's BatchNorm statistics read "
        f"{r.cka_weights:.2f} and base weights with the tuned statistics {r.cka_stats:.2f}"
    )
    if drop_s > 2 * max(drop_w, 0.005):
        return msg(f"BatchNorm statistics, not weights, moved the representation most: {parts}.")
    if drop_w > 2 * max(drop_s, 0.005):
        return msg(f"The weights, not the BatchNorm statistics, moved the representation most: {parts}.")
    return msg(f"Weights and BatchNorm statistics both moved the representation: {parts}.")


def _evidence_line(r: LayerComparison) -> str:
    """One block's measurements in one line: its name and CKA, the probe, then the BatchNorm hybrids, the weight
    change and whether the run froze it (each part a template that holds the rest, so the line translates)."""
    rest = msg("frozen in this run") if r.frozen_in_tuned else ""
    if r.weight_rms is not None and r.weight_per_step is not None:
        rest = (
            msg(f"weight RMS change {r.weight_rms:.2g}, {r.weight_per_step:.2g} of the step budget, {rest}")
            if rest
            else msg(f"weight RMS change {r.weight_rms:.2g}, {r.weight_per_step:.2g} of the step budget")
        )
    elif r.weight_rms is not None:
        rest = (
            msg(f"weight RMS change {r.weight_rms:.2g}, {rest}")
            if rest
            else msg(f"weight RMS change {r.weight_rms:.2g}")
        )
    if math.isfinite(r.cka_weights):
        w, st = figure(r.cka_weights), figure(r.cka_stats)
        rest = (
            msg(f"tuned weights + base BN stats {w:.2f}, base weights + tuned BN stats {st:.2f}, {rest}")
            if rest
            else msg(f"tuned weights + base BN stats {w:.2f}, base weights + tuned BN stats {st:.2f}")
        )
    cka, low, high = figure(r.cka), figure(r.cka_low), figure(r.cka_high)
    if r.probe_acc is not None:
        probe = figure(100 * r.probe_acc)
        return (
            msg(f"{r.name}: CKA {cka:.2f} [{low:.2f}, {high:.2f}], probe {probe:.0f} %, {rest}")
            if rest
            else msg(f"{r.name}: CKA {cka:.2f} [{low:.2f}, {high:.2f}], probe {probe:.0f} %")
        )
    return (
        msg(f"{r.name}: CKA {cka:.2f} [{low:.2f}, {high:.2f}], {rest}")
        if rest
        else msg(f"{r.name}: CKA {cka:.2f} [{low:.2f}, {high:.2f}]")
    )


def _evidence(layers: list[LayerComparison], probes: dict[str, ProbeResult | None], chance: float) -> list[str]:
    return [_evidence_line(r) for r in body_rows(layers)]


def _prediction_text(
    deepest: LayerComparison | None, first: LayerComparison | None, body: list[LayerComparison], similar_cka: float
) -> str:
    if deepest is None:
        if not body:
            return msg("No layer could be measured, so nothing is predicted.")
        return msg(
            f"Prediction from CKA: fine-tuning changed the representation from the very first block ({body[0].name}:"
            f" CKA {figure(body[0].cka):.2f}), so no layer looks safe to freeze: train every layer."
        )
    if first is None:
        return msg(
            f"Prediction from CKA (no sweep has run): fine-tuning left every block up to {deepest.name} nearly "
            f"unchanged (CKA with the base on held-out images ≥ {similar_cka:.2f}, lower end of its 95 % interval), "
            "so training those blocks bought little. Run the freeze sweep to measure it."
        )
    cka, low, high = figure(first.cka), figure(first.cka_low), figure(first.cka_high)
    return msg(
        f"Prediction from CKA (no sweep has run): fine-tuning left every block up to {deepest.name} nearly "
        f"unchanged (CKA with the base on held-out images ≥ {similar_cka:.2f}, lower end of its 95 % interval), "
        f"so training those blocks bought little; the first block that changed is {first.name} (CKA {cka:.2f} "
        f"[{low:.2f}, {high:.2f}]). Run the freeze sweep to measure it."
    )


def _index(layers: list[LayerComparison], point: str | None) -> int:
    return next((r.index for r in layers if r.name == point), -1)


def _stability(layers: list[LayerComparison], halves: list[str | None]) -> bool | None:
    if len(halves) != 2:
        return None
    return abs(_index(layers, halves[0]) - _index(layers, halves[1])) <= 1


def _gate(n_images: int, tuned_correct: int | None, tuned_n: int, chance: float, best_probe: float | None) -> Gate:
    few = too_few(n_images, heldout=tuned_correct is not None)
    if not few.open:
        return few
    if tuned_correct is None:
        return Gate(
            False,
            msg(
                "The tuned model's accuracy on held-out images is unknown (see the note on the images), so it cannot "
                "be checked that it learned the task: no freeze point is read from its representation."
            ),
            [
                msg("Compare on the data it was fine-tuned on (fine-tunes made here save their split)."),
                msg("Or run the freeze sweep, which measures every freeze point by itself."),
            ],
        )
    return learned(tuned_correct, tuned_n, chance, best_probe)


def recommend(
    base: LoadedModel,
    layers: list[LayerComparison],
    *,
    n_images: int,
    n_classes: int,
    chance: float,
    tuned_correct: int | None,
    tuned_n: int,
    train_per_class: float | None,
    probes: dict[str, ProbeResult | None],
    halves: list[str | None] | None = None,
    per_class_known: bool = True,
    tuned_freeze_after: str | None = None,
    similar_cka: float = 0.9,
) -> Recommendation:
    """The advice from a comparison's per-layer rows (in depth order), without a sweep: predicted or withheld."""
    guide = place(train_per_class, probes, per_class_known=per_class_known)
    best_probe = max((p.accuracy for p in probes.values() if p is not None), default=None)
    gate = _gate(n_images, tuned_correct, tuned_n, chance, best_probe)
    body = body_rows(layers)
    deepest, first = predict(layers, similar_cka)
    prediction = deepest.name if deepest is not None else "none"
    stable = _stability(layers, halves or [])
    explanation = bn_explanation(layers)
    caveats = []
    if stable is False and halves:
        caveats.append(
            msg(
                f"Unstable: on two disjoint halves of the images the prediction is {halves[0] or 'none'} and "
                f"{halves[1] or 'none'}, more than one block apart; use more images or run the sweep."
            )
        )
    if tuned_freeze_after:
        caveats.append(
            msg(
                f"This tuned model was trained with everything up to {tuned_freeze_after} frozen, so those layers "
                "read CKA 1 by construction; fine-tune with nothing frozen to see how far they would move."
            )
        )
    if gate.open:
        point, source = deepest.name if deepest is not None else None, "prediction"
        reason = _prediction_text(deepest, first, body, similar_cka) + (f" {explanation}" if explanation else "")
    else:
        point, source, reason = None, "withheld", gate.reason
    evidence = _evidence(layers, probes, chance) + ([explanation] if explanation else []) + [why(guide)]
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
        source=source,
        prediction=prediction,
        prediction_halves=list(halves or []),
        stable=stable,
        withheld="" if gate.open else gate.reason,
        try_next=gate.try_next,
    )


def _placed(point: str, stage: int) -> str:
    """A freeze point with its stage ('blocks.4.1 (stage 3)'); 'none' said as what it means."""
    return msg("training every layer (nothing frozen)") if point == "none" else msg(f"{point} (stage {stage})")


def _agreement(rec: Recommendation, point: str, layers: list[LayerComparison], sweep: SweepReport) -> str:
    if rec.withheld:
        return msg(f"The CKA prediction is not used: {rec.withheld}")
    stage = {r.name: r.stage for r in layers}
    first = min(stage.values(), default=0) - 1  # 'none' sits before the first stage
    predicted = rec.prediction or "none"
    a, b = stage.get(predicted, first), stage.get(point, first)
    said = msg(f"CKA predicted {_placed(predicted, a)}; the sweep measured {_placed(point, b)}")
    if abs(a - b) <= 1:
        return msg(f"{said}: they agree within one stage.")
    linear = sweep.choice.route == "linear"
    bn = bn_explanation(layers).startswith("BatchNorm")
    if linear and bn:
        because = msg(
            "CKA says how far fine-tuning moved each block, not whether moving it was needed; and a linear "
            "classifier on a frozen layer did as well as fine-tuning, so the change was not needed; and much of the "
            "CKA drop comes from re-estimated BatchNorm statistics, not from learned weights"
        )
    elif linear:
        because = msg(
            "CKA says how far fine-tuning moved each block, not whether moving it was needed; and a linear "
            "classifier on a frozen layer did as well as fine-tuning, so the change was not needed"
        )
    elif bn:
        because = msg(
            "CKA says how far fine-tuning moved each block, not whether moving it was needed; and much of the CKA "
            "drop comes from re-estimated BatchNorm statistics, not from learned weights"
        )
    else:
        because = msg("CKA says how far fine-tuning moved each block, not whether moving it was needed")
    return msg(f"{said}: they disagree by more than one stage, because {because}.")


def reconsider(
    rec: Recommendation, sweep: SweepReport | None, report: ComparisonReport, base: LoadedModel | None = None
) -> Recommendation:
    """`rec` decided by a measured sweep: its choice becomes the advice, the CKA prediction its explanation."""
    if sweep is None or sweep.choice.point is None:
        if sweep is not None:
            return dataclasses.replace(
                rec, caveats=[*rec.caveats, msg(f"The sweep recommends nothing: {sweep.choice.reason}")]
            )
        return rec
    point = sweep.choice.point
    chosen = sweep.chosen
    freeze = None if point == "none" else point
    agreement = _agreement(rec, point, report.layers, sweep)
    per_class = sweep.data.get("images_per_class")
    guide = place_from_sweep(float(per_class), sweep.options) if isinstance(per_class, (int, float)) else None
    out = dataclasses.replace(
        rec,
        freeze_after=freeze,
        source="sweep",
        route=sweep.choice.route or "finetune",
        reason=msg("Measured by the freeze sweep.") + " " + sweep.choice.reason,  # sentences the translator reads apart
        agreement=agreement,
        guide=guide or rec.guide,
        evidence=[e for e in rec.evidence if e != why(rec.guide)] + [why(guide or rec.guide)],
    )
    n_classes = len(report.data.get("classes") or []) or None
    if base is not None:
        s = freeze_summary(base, freeze, num_classes=n_classes)
        out.trainable, out.non_trainable, out.total = s.trainable, s.non_trainable, s.total
        out.code = freeze_code(base, freeze, num_classes=n_classes)
    if chosen is not None and chosen.route == "linear":
        out.trainable = chosen.trainable
        out.total = out.non_trainable + chosen.trainable
        if base is not None and freeze is not None:
            out.code = linear_route_code(base, freeze)
    return out


def with_sweep(
    report: ComparisonReport, sweep: SweepReport | None, base: LoadedModel | None = None
) -> ComparisonReport:
    """`report` with its advice decided by `sweep` (measured) instead of predicted from CKA; `base` (the compared
    base model) recounts parameters and rewrites the code for the measured point."""
    rec = reconsider(report.recommendation, sweep, report, base)
    return dataclasses.replace(report, sweep=sweep, recommendation=rec)
