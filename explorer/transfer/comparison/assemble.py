"""From a comparison's measurements to its report: one row per block, the tuned model's held-out score, the advice.

:mod:`explorer.transfer.comparison.compare` runs the images through the models and measures; this module
assembles what it measured into :class:`~explorer.transfer.reporting.report.LayerComparison` rows (CKA, weight and
BatchNorm change, probes), scores the tuned model on held-out images only, and asks
:mod:`explorer.transfer.advice.recommend` for the advice.
"""

from __future__ import annotations

import torch
from torch import nn

from explorer.errors import msg
from explorer.layers import LayerInfo, execution_order
from explorer.models import LoadedModel
from explorer.models.freeze import frozen_modules
from explorer.transfer.advice.recommend import body_rows, predict, recommend
from explorer.transfer.comparison.cka import LayerCKA
from explorer.transfer.comparison.probes import ProbeResult, chance_level
from explorer.transfer.comparison.weights import block_change, step_budget
from explorer.transfer.reporting.report import ComparisonReport, LayerComparison
from explorer.transfer.training.heldout import HeldOut

Settings = dict[str, int | float | bool | str | None]


def _frozen_blocks(base: LoadedModel, tuned: LoadedModel, rows: list[LayerInfo], order: list[str]) -> set[str]:
    point = tuned.metadata.get("freeze_after")
    frozen = set(frozen_modules(tuned, point)) if point else set()
    out = set()
    for r in rows:
        inside = [n for n in order if (n == r.name or n.startswith(r.name + ".")) and _stateful(base.module, n)]
        if inside and all(n in frozen for n in inside):
            out.add(r.name)
    return out


def layer_rows(
    base: LoadedModel,
    tuned: LoadedModel,
    rows: list[LayerInfo],
    ckas: dict[str, LayerCKA],
    probes: dict[str, ProbeResult | None],
) -> list[LayerComparison]:
    order = execution_order(base.module, base.input_size)
    frozen = _frozen_blocks(base, tuned, rows, order)
    budget = step_budget(tuned.metadata)
    head = tuned.metadata.get("head")
    out = []
    for i, r in enumerate(rows):
        c, pr = ckas[r.name], probes.get(r.name)
        lr_sum = budget.get("head" if r.name == head else "body")
        ch = block_change(base.module, tuned.module, r.name, order, lr_sum if r.name not in frozen else None)
        out.append(
            LayerComparison(
                name=r.name,
                index=i,
                type=r.type,
                stage=r.stage,
                channels=r.channels,
                params=r.params,
                cka=c.value,
                cka_low=c.low,
                cka_high=c.high,
                weight_change=ch.relative,
                weight_change_channels=ch.channels,
                probe_acc=pr.accuracy if pr else None,
                probe_std=pr.std if pr else None,
                frozen_in_tuned=r.name in frozen,
                new_head=ch.new_head,
                cka_weights=c.weights,
                cka_stats=c.stats,
                cka_halves=[h[0] for h in c.halves],
                weight_rms=ch.rms,
                weight_per_step=ch.per_step,
                bn_shift=ch.bn_shift,
                bn_scale=ch.bn_scale,
            )
        )
    return out


def half_predictions(layers: list[LayerComparison], ckas: dict[str, LayerCKA], similar: float) -> list[str | None]:
    k = min((len(c.halves) for c in ckas.values()), default=0)
    out: list[str | None] = []
    for h in range(k):
        deepest, _ = predict(layers, similar, {n: c.halves[h] for n, c in ckas.items()})
        out.append(deepest.name if deepest is not None else "none")
    return out


def tuned_score(
    tuned: LoadedModel, classes: list[str], held: HeldOut, logits: torch.Tensor, labels: torch.Tensor
) -> tuple[int | None, int]:
    """(correct, images) of the tuned model on these images; None when they may include its training images."""
    if list(tuned.class_names) != classes or held.status == "unknown":
        return None, 0
    return int((logits.argmax(1) == labels).sum()), int(labels.numel())


def build_report(
    base: LoadedModel,
    tuned: LoadedModel,
    source: str,
    classes: list[str],
    held: HeldOut,
    layers: list[LayerComparison],
    probe_res: dict[str, ProbeResult | None],
    ckas: dict[str, LayerCKA],
    logits: torch.Tensor,
    labels: torch.Tensor,
    similar_cka: float,
    notes: list[str],
    settings: Settings,
    input_size: int | None,
) -> ComparisonReport:
    """The report of a comparison: rows, the tuned model's held-out score, the advice, and how it was measured."""
    correct, n_scored = tuned_score(tuned, classes, held, logits, labels)
    chance = chance_level(labels.numpy())
    per_class = held.train_images / max(len(classes), 1) if held.train_images else None
    body = [r.name for r in body_rows(layers)]  # the top layer is the last one before the classifier
    rec = recommend(
        base,
        layers,
        n_images=int(labels.numel()),
        n_classes=len(classes),
        chance=chance,
        tuned_correct=correct,
        tuned_n=n_scored,
        train_per_class=per_class,
        per_class_known=held.status == "heldout",
        probes={n: probe_res.get(n) for n in body if n in probe_res},
        halves=half_predictions(layers, ckas, similar_cka),
        tuned_freeze_after=tuned.metadata.get("freeze_after"),
        similar_cka=similar_cka,
    )
    size = [input_size, input_size] if input_size else list(tuned.input_size)
    grid = settings["grid"]
    return ComparisonReport(
        base={"spec": base.spec, "arch": base.arch, "fingerprint": base.fingerprint},
        tuned={
            "spec": tuned.spec,
            "arch": tuned.arch,
            "fingerprint": tuned.fingerprint,
            "freeze_after": tuned.metadata.get("freeze_after"),
            "metrics": tuned.metadata.get("metrics", {}),
        },
        data={
            "source": source,
            "images_total": len(held.indices),
            "images_used": int(labels.numel()),
            "classes": classes,
            "input_size": size,
        },
        settings={
            **settings,
            "cka": msg(
                "debiased linear CKA (Nguyen et al. 2021) on all images; 95 % interval: delete-one-image jackknife"
            ),
            "pooling": msg(
                f"CKA: average pool to {grid}x{grid} grid at {size[0]} px input; probes: global average pool"
            ),
        },
        layers=layers,
        recommendation=rec,
        tuned_accuracy=correct / n_scored if correct is not None and n_scored else None,
        chance=chance,
        warnings=[*notes, held.note],
        heldout={
            "status": held.status,
            "note": held.note,
            "images": int(labels.numel()),
            "train_images": held.train_images,
        },
    )


def _stateful(module: nn.Module, name: str) -> bool:
    m = module.get_submodule(name)
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
