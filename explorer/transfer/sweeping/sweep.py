"""The freeze sweep: held-out accuracy and cost of freezing at each candidate point, by two routes, measured.

`sweep(model, data)` tries every candidate point ('none' trains everything; ``points="auto"`` adds the last block
of every stage and 'head only') by two routes under one budget, one held-out split and one seed per repeat
(:mod:`explorer.transfer.sweeping.sweep_tasks`), and returns a
:class:`~explorer.transfer.sweeping.sweep_report.SweepReport`: the
curve, and the cheapest option not found worse than the best. With `out` (``sweep.json``, CSV and HTML beside
it), every finished task is written atomically as it ends; a rerun with the same settings and output skips them,
so an interrupted sweep loses at most the task it was running.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from explorer.data import TransformedView, eval_transform
from explorer.data.images import typical_side
from explorer.errors import msg
from explorer.layers import check_input_size, fixed_input_size, ladder
from explorer.models import LoadedModel
from explorer.runtime import Progress, StopSignal, stop_requested
from explorer.transfer.comparison.probes import chance_level, linear_probe
from explorer.transfer.reporting.report_html import render_sweep_html
from explorer.transfer.sweeping.prefix import prefix_layer
from explorer.transfer.sweeping.stats import MARGIN
from explorer.transfer.sweeping.sweep_report import JSONValue, SweepReport, choose, make_options
from explorer.transfer.sweeping.sweep_report import sweep_mismatch as mismatch
from explorer.transfer.sweeping.sweep_tasks import (
    HOLDOUT,
    INNER_FRACTION,
    MIN_STEPS,
    NONE,
    ROUTES,
    Folds,
    SweepContext,
    SweepError,
    SweepRunner,
    SweepTask,
    TaskResult,
    auto_points,
    build_prefix,
    check_cuts,
    check_points,
    cross_validation,
    in_process,
    plan_tasks,
)
from explorer.transfer.training.checkpoints import write_atomic
from explorer.transfer.training.finetune import training_data
from explorer.transfer.training.heldout import Split, labels_of
from explorer.transfer.training.settings import FinetuneSettings, suggested_input_size

FORMAT = "layer_explorer.sweep/2"

__all__ = [
    "SweepError",
    "SweepReport",
    "SweepTask",
    "load_sweep",
    "mismatch",
    "run_sweep_task",
    "save_sweep",
    "sweep",
    "sweep_settings",
]

from explorer.transfer.sweeping.sweep_tasks import run_sweep_task  # noqa: E402  (re-exported: the runner's entry point)

EPOCHS = 8  # the most epochs a task trains (more when its minimum number of steps needs them); early stopping ends most
SEED_SECONDS = 30.0  # with seeds="auto", every fine-tune option whose first run took less than this gets a second seed
PHI = 0.25  # the error correlation between two options measured on real sweeps (0.2–0.3): sizes the evaluation


def sweep_settings(epochs: int = EPOCHS, **overrides: int | float | str | None) -> FinetuneSettings:
    """A sweep's budget: the fine-tune recipe (warm-up, cosine schedule, AdamW with no decay on BatchNorm and
    biases, the best epoch kept) with early stopping on an *inner* validation split of the training images (never
    the images that score the options), at most `epochs` epochs and at least :data:`MIN_STEPS` optimiser steps;
    no augmentation, so every frozen prefix is computed once (the page's fine-tune button hands this recipe on)."""
    s = replace(FinetuneSettings(), epochs=epochs, augment="none", keep_best=True, patience=2)
    return replace(s, **overrides) if overrides else s  # type: ignore[arg-type]


def images_to_resolve(accuracy: float, margin: float, phi: float = PHI, z: float = 1.645) -> int:
    """Scored images at which two options of this accuracy (errors correlated `phi`) have a one-sided 95 % bound
    on their paired loss of about `margin`: below it a held-out split cannot resolve the margin, so the sweep
    cross-validates (every image scored once) instead. From the variance of a paired difference: the share of
    images on which two such options disagree is 2e(1 − e)(1 − phi), e the error rate."""
    e = min(max(1.0 - accuracy, 0.01), 0.99)
    disagree = 2 * e * (1 - e) * (1 - phi)
    return int(math.ceil(z * z * disagree / (margin * margin)))


def _signature(model: LoadedModel, split: Split, folds: Folds, s: FinetuneSettings, min_steps: int) -> str:
    """What makes two sweeps' tasks interchangeable: model weights, images, split and folds, and the budget."""
    budget = {k: v for k, v in asdict(s).items() if k not in ("freeze_after", "num_workers")}
    blob = json.dumps(
        {
            "format": FORMAT,
            "model": model.fingerprint,
            "files": split.files_sha256,
            "train": split.train,
            "heldout": split.heldout,
            "folds": [test for _, test in folds.pairs],
            "budget": budget,
            "min_steps": min_steps,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def _resume(out: Path | None, signature: str) -> dict[str, TaskResult]:
    if out is None or not out.exists():
        return {}
    try:
        saved = json.loads(out.read_text())
    except (OSError, ValueError):
        raise SweepError(f"{out} exists but is not a readable sweep file; choose another output name.") from None
    if saved.get("signature") != signature:
        raise SweepError(
            f"{out} holds a sweep with other settings, model or data; choose another output name (or delete it) "
            "to start a new sweep."
        )
    return dict(saved.get("tasks") or {})


def _check_data(ctx_split: Split, classes: list[str], routes: tuple[str, ...], model: LoadedModel) -> None:
    if len(ctx_split.heldout) + len(ctx_split.train) < 2 * len(classes):
        raise SweepError(
            f"Only {len(ctx_split.heldout) + len(ctx_split.train)} images for {len(classes)} classes: a sweep needs "
            "at least two images per class."
        )
    bad = [r for r in routes if r not in ROUTES]
    if bad or not routes:
        raise SweepError(f"Unknown sweep route {', '.join(bad) or '(none)'}: use {' and/or '.join(ROUTES)}.")
    if "linear" in routes and not any(r.has_map for r in ladder(model, "blocks")):
        raise SweepError(
            "The linear route cuts the network at a layer and pools its feature map, but this model has no layer "
            "with a spatial or token output; sweep with --routes finetune."
        )


def default_input_size(model: LoadedModel, dataset: Dataset) -> int:
    """The fine-tune's rule (:func:`~explorer.transfer.training.settings.suggested_input_size`): the data's own size, at
    most the model's (8×8 digits are not upscaled to 224 px), the model's own for a model that takes no other."""
    samples = getattr(dataset, "samples", None) or []
    side = typical_side([p for p, _ in samples]) if samples else None
    return suggested_input_size(model.input_size[0], side, fixed=fixed_input_size(model) is not None)


def sweep(
    model: LoadedModel,
    data: str | Path | Dataset,
    *,
    points: str | Sequence[str] = "auto",
    routes: Sequence[str] = ROUTES,
    epochs: int = EPOCHS,
    seeds: int | str = "auto",
    margin: float = MARGIN,
    folds: int = 5,
    evaluation: str = "auto",
    min_steps: int = MIN_STEPS,
    settings: FinetuneSettings | None = None,
    out: str | Path | None = None,
    runner: SweepRunner | None = None,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> SweepReport:
    """Measure accuracy and cost at each freeze point by each route; recommend the cheapest within `margin`.

    `points`: "auto" or ladder layer names (and "none"); `settings`: the budget (default :func:`sweep_settings`
    with `epochs`; its val_fraction, max_images, seed and input_size define the split and the images; input size
    default: the data's own, at most the model's). `evaluation`: "holdout" scores options on the held-out split,
    "cv" by stratified `folds`-fold cross-validation of every image, "auto" cross-validates when the held-out
    split is too small to resolve the margin (:func:`images_to_resolve`, sized from a quick linear probe).
    `seeds`: training seeds per fine-tune option, or "auto" (one, and a second for every option whose first run
    took under :data:`SEED_SECONDS`). `min_steps`: optimiser steps every fine-tune takes at least. `runner`
    executes the tasks (default in-process). `progress(done, total, info)` counts images of the shared pass plus
    training steps.
    """
    t0 = time.perf_counter()
    s = settings or sweep_settings(epochs)
    s.check()
    if not 0 < margin < 1:
        raise SweepError("The margin is a fraction of accuracy between 0 and 1 (0.02 is 2 points).")
    if evaluation not in ("auto", "holdout", "cv"):
        raise SweepError(f"Unknown evaluation {evaluation!r}: use auto, holdout or cv.")
    if isinstance(seeds, str) and seeds != "auto" or isinstance(seeds, int) and seeds < 1:
        raise SweepError("Seeds must be at least 1, or auto.")
    out_path = _output(out)
    ctx, pts = _context(model, data, points, tuple(routes), s, stop_requested(should_stop))
    ctx.min_steps = min_steps
    s = ctx.settings
    t1 = time.perf_counter()
    tick = _Ticker(progress, len(ctx.split.train) + len(ctx.split.heldout))
    ctx.cache = build_prefix(ctx, on_batch=tick.images)
    seconds: dict[str, float] = {"setup": t1 - t0, "shared_pass": time.perf_counter() - t1}
    probe = _quick_probe(ctx, pts)
    ctx.folds = _evaluation(ctx, evaluation, folds, probe, margin)
    signature = _signature(model, ctx.split, ctx.folds, s, min_steps)
    done = _resume(out_path, signature)
    meta: dict[str, JSONValue] = {
        "format": FORMAT,
        "signature": signature,
        "base": model.spec,
        "points": cast(JSONValue, pts),
        "routes": list(routes),
        "seeds": seeds,
    }
    notes = [
        msg(f"{p}: trained on images every epoch (the cut network does not reproduce the full one)")
        for p, ok in ctx.cut_ok.items()
        if not ok
    ]
    notes += [msg(f"{p}: trained on images every epoch ({why})") for p, why in ctx.cache.skipped.items()]

    def on_done(task: SweepTask, result: TaskResult) -> None:
        done[task.key] = result
        tick.task_done(task)
        if out_path is not None:
            write_atomic(out_path, json.dumps({**meta, "tasks": done}, indent=1).encode())

    t2 = time.perf_counter()
    first = plan_tasks(pts, tuple(routes), seeds if isinstance(seeds, int) else 1)
    tick.plan(first, ctx)
    (runner or in_process)([t for t in first if t.key not in done], ctx, on_done)
    planned = first + _more_seeds(first, done, seeds)
    more = [t for t in planned if t.key not in done]
    if more and not ctx.stop():
        tick.plan(more, ctx)
        (runner or in_process)(more, ctx, on_done)
    seconds.update(tasks=time.perf_counter() - t2, total=time.perf_counter() - t0)
    report = _report(model, data, ctx, pts, tuple(routes), planned, done, seconds, notes, margin, probe)
    if out_path is not None:
        save_sweep(report, out_path, cast(dict[str, JSONValue], {**meta, "tasks": done}))
    return report


def _more_seeds(first: list[SweepTask], done: dict[str, TaskResult], seeds: int | str) -> list[SweepTask]:
    """With seeds="auto": a second seed for every fine-tune option whose first run took under SEED_SECONDS."""
    if seeds != "auto":
        return []
    out = []
    for t in first:
        r = done.get(t.key)
        if t.route == "finetune" and r is not None and float(r["seconds"]) < SEED_SECONDS:
            out.append(SweepTask(t.point, t.route, t.seed + 1))
    return out


def _quick_probe(ctx: SweepContext, pts: list[str]) -> float:
    """The best 3-fold cross-validated accuracy of a linear classifier on any point's pooled features (seconds):
    sizes the evaluation (how many images resolve the margin), before any training."""
    cache = ctx.prefix()
    labels = cache.labels.numpy()
    accs = [
        linear_probe(cache.pooled[p].numpy(), labels, folds=3, seed=ctx.settings.seed) for p in pts if p in cache.pooled
    ]
    found = [r.accuracy for r in accs if r is not None]
    return max(found) if found else float("nan")


def _evaluation(ctx: SweepContext, evaluation: str, k: int, probe: float, margin: float) -> Folds:
    split = ctx.split
    need = images_to_resolve(probe if math.isfinite(probe) else 0.5, margin)
    cv = evaluation == "cv" or (evaluation == "auto" and len(split.heldout) < need and k >= 2)
    if not cv:
        return Folds([(list(split.train), list(split.heldout))], HOLDOUT)
    every = sorted(split.train + split.heldout)
    labels = labels_of(ctx.dataset)
    return cross_validation(every, [labels[i] for i in every], k, ctx.settings.seed)


def _output(out: str | Path | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.suffix.lower() != ".json":
        raise SweepError(f"The sweep output must end in .json (got {path.name}); CSV and HTML go beside it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _context(
    model: LoadedModel,
    data: str | Path | Dataset,
    points: str | Sequence[str],
    routes: tuple[str, ...],
    s: FinetuneSettings,
    stop: Callable[[], bool],
) -> tuple[SweepContext, list[str]]:
    """The data, split and points, checked; the shared pass not yet computed; whether each point's cut works."""
    dataset, classes, split = training_data(data, s)
    size = s.input_size or default_input_size(model, dataset)
    s = replace(s, input_size=size)
    check_input_size(model, (size, size))  # a ViT trains and is measured only at its own size
    _check_data(split, classes, routes, model)
    pts = auto_points(model) if isinstance(points, str) and points == "auto" else check_points(model, list(points))
    layers = {p: prefix_layer(model.module, p, model.input_size) for p in pts if p != NONE}
    view = TransformedView(dataset, split.heldout[:4] or split.train[:4], eval_transform(model, size)[0])
    probe = torch.stack([view[i][0] for i in range(len(view))])
    ok = check_cuts(model, pts, layers, probe)
    return SweepContext(model, dataset, classes, split, s, layers, cut_ok=ok, stop=stop), pts


def identity_of(model: LoadedModel, ctx: SweepContext) -> dict[str, JSONValue]:
    """What a sweep belongs to: the images (file list and split), the base model's weights, the input size."""
    return {
        "data_sha256": ctx.split.files_sha256,
        "images": len(ctx.split.train) + len(ctx.split.heldout),
        "classes": cast(JSONValue, ctx.classes),
        "base_fingerprint": model.fingerprint,
        "input_size": ctx.settings.input_size,
    }


def _report(
    model: LoadedModel,
    data: str | Path | Dataset,
    ctx: SweepContext,
    pts: list[str],
    routes: tuple[str, ...],
    planned: list[SweepTask],
    done: dict[str, TaskResult],
    seconds: dict[str, float],
    notes: list[str],
    margin: float,
    probe: float,
) -> SweepReport:
    wanted = {t.key for t in planned}
    results = {k: v for k, v in done.items() if k in wanted}
    options = make_options(results, pts)  # type: ignore[arg-type]
    labels = labels_of(ctx.dataset)
    scored = [labels[i] for i in ctx.scoring.scored]
    chance = chance_level(np.asarray(scored, dtype=np.int64))
    choice = choose(options, scored, chance, margin=margin)
    split, s = ctx.split, ctx.settings
    source = str(data) if not isinstance(data, Dataset) else type(data).__name__
    data_info: dict[str, JSONValue] = {
        "source": source,
        "classes": cast(JSONValue, ctx.classes),
        "train_images": len(split.train),
        "heldout_images": len(split.heldout),
        "scored_images": len(scored),
        "images_per_class": round((len(split.train) + len(split.heldout)) / max(len(ctx.classes), 1), 1),
        "files_sha256": split.files_sha256,
        "quick_probe": probe,
    }
    settings: dict[str, JSONValue] = {
        **{k: v for k, v in asdict(s).items() if k != "freeze_after"},
        "points": cast(JSONValue, pts),
        "routes": list(routes),
        "seeds": max((t.seed + 1 for t in planned), default=1),
        "input_size": s.input_size or model.input_size[0],
        "margin": margin,
        "min_steps": ctx.min_steps,
        "inner_validation": INNER_FRACTION,
    }
    return SweepReport(
        base={"spec": model.spec, "arch": model.arch, "fingerprint": model.fingerprint},
        data=data_info,
        settings=settings,
        options=options,
        choice=choice,
        chance=chance,
        seconds=seconds,
        notes=notes,
        complete=len(results) == len(wanted),
        identity=identity_of(model, ctx),
        evaluation=ctx.scoring.method,
    )


class _Ticker:
    """Turns the shared pass's images and each task's steps into one progress count (a task's steps estimated by
    its budget: early stopping makes most end sooner, so the bar jumps forward when a task ends)."""

    def __init__(self, progress: Progress | None, images: int) -> None:
        self.progress, self.images_total = progress, images
        self.total = images
        self.done = 0
        self.cost: dict[str, int] = {}
        self.queue: list[SweepTask] = []

    def plan(self, tasks: list[SweepTask], ctx: SweepContext) -> None:
        s = ctx.settings
        pairs = ctx.scoring.pairs
        n = len(pairs[0][0]) if pairs else 1
        steps = max(1, n // min(s.batch_size, n))
        per = len(pairs) * max(s.epochs, math.ceil(ctx.min_steps / steps) + 1) * steps
        self.cost.update({t.key: (per if t.route == "finetune" else 1) for t in tasks})
        self.queue += tasks
        self.total += sum(self.cost[t.key] for t in tasks)
        ctx.progress = self.steps

    def _report(self, done: int, info: dict[str, JSONValue]) -> None:
        if self.progress:
            self.progress(min(done, self.total), self.total, info)

    def images(self, n: int) -> None:
        self.done += n
        self._report(self.done, {"phase": "shared", "images": self.done})

    def steps(self, k: int) -> None:
        task = self.queue[0] if self.queue else None
        info: dict[str, JSONValue] = {"phase": "task", "task": task.key if task else None, "step": k}
        self._report(self.done + k, info)

    def task_done(self, task: SweepTask) -> None:
        self.done += self.cost.get(task.key, 0)
        self.queue = [t for t in self.queue if t.key != task.key]
        self._report(self.done, {"phase": "done", "task": task.key})


def save_sweep(report: SweepReport, out: str | Path, record: dict[str, JSONValue]) -> list[Path]:
    """Write the task record with the report (`out`, JSON) and the CSV and HTML beside it, each atomically."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps({**record, "report": report.to_dict()}, indent=1).encode())
    write_atomic(path.with_suffix(".csv"), report.to_csv().encode())
    write_atomic(path.with_suffix(".html"), render_sweep_html(report).encode())
    return [path, path.with_suffix(".csv"), path.with_suffix(".html")]


def load_sweep(path: str | Path) -> SweepReport:
    """The report a finished (or partly finished) sweep wrote to `path`."""
    try:
        saved = json.loads(Path(path).read_text())
        return SweepReport.from_dict(saved["report"])
    except (OSError, ValueError, KeyError, TypeError):
        raise SweepError(f"{path} is not a sweep written by Layer Explorer.") from None
