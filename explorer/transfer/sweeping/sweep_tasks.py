"""A freeze sweep as independent tasks: what a task is, the context it reads, and the function that runs one.

Each :class:`SweepTask` (point × route × seed) maps to a small dict of metrics through :func:`run_sweep_task`;
a *runner* executes a list of them (:func:`in_process` by default; a Ray runner only has to call
:func:`run_sweep_task` on each worker, whose :class:`SweepContext` builds its own shared pass on first use).
Routes: ``finetune`` (freeze up to the point, train the rest and a new head, :mod:`explorer.transfer.training.trainer`)
and ``linear`` (cut at the point, global-average-pool, fit the linear classifier of
:mod:`explorer.transfer.comparison.probes`).
Cheap by construction: one pass of the base model over every image keeps each point's output
(:mod:`explorer.transfer.sweeping.prefix`), so with ``augment="none"`` a point's fine-tune trains only the layers after
it
and the linear route reads the same pass.
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from explorer.data import TransformedView, eval_transform, split_indices
from explorer.errors import ExplorerError, msg
from explorer.layers import LayerInfo, check_input_size, execution_order, ladder
from explorer.models import LoadedModel
from explorer.models.freeze import FreezeError, frozen_modules, head_name
from explorer.transfer.comparison.probes import fit_predict
from explorer.transfer.sweeping.prefix import (
    CACHE_BUDGET_BYTES,
    PrefixCache,
    bytes_per_image,
    check_cut,
    compute_prefix,
    cut_model,
    keep_plan,
)
from explorer.transfer.training.finetune import image_loaders, trainable_copy, trainable_model
from explorer.transfer.training.heldout import Split, labels_of
from explorer.transfer.training.settings import FinetuneSettings
from explorer.transfer.training.trainer import evaluate, train

ROUTES = ("finetune", "linear")
NONE = "none"  # the point that trains every layer
HOLDOUT = msg("held-out split")
INNER_FRACTION = 0.15  # of each training part, per class: the inner validation that stops training and picks its epoch
MIN_STEPS = 120  # optimiser steps every fine-tune takes at least, however few its images (early stopping waits)


@dataclass
class Folds:
    """How options are scored: (train, test) pairs of dataset indices; one pair for a held-out split, k for
    cross-validation (every image tested once). `scored` is the canonical order of the tested images."""

    pairs: list[tuple[list[int], list[int]]]
    method: str = HOLDOUT

    @property
    def scored(self) -> list[int]:
        return sorted(i for _, test in self.pairs for i in test)


def cross_validation(indices: list[int], labels: list[int], k: int, seed: int) -> Folds:
    """Stratified k-fold over `indices` (labels aligned with them), shuffled with `seed`."""
    # start-up cost: scikit-learn takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    k = int(max(2, min(k, counts[counts > 0].min())))
    idx = np.asarray(indices)
    pairs = [
        (sorted(idx[tr].tolist()), sorted(idx[te].tolist()))
        for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(idx, labels)
    ]
    return Folds(pairs, msg(f"{k}-fold cross-validation"))


class SweepError(ExplorerError):
    """A sweep that cannot run as asked, in one sentence."""


@dataclass(frozen=True)
class SweepTask:
    """One measurement: train by `route` with everything up to `point` frozen ('none': nothing), seed `seed`."""

    point: str
    route: str
    seed: int

    @property
    def key(self) -> str:
        return f"{self.route}@{self.point}#{self.seed}"


TaskResult = dict[str, float | int | str | bool]  # accuracy, correct ("0110…", per held-out image), trainable, …


def _never() -> bool:
    return False


@dataclass
class SweepContext:
    """Everything a task needs: the base model, the data and its split, the budget, and the shared prefix pass."""

    model: LoadedModel
    dataset: Dataset
    classes: list[str]
    split: Split
    settings: FinetuneSettings  # epochs, batch size, learning rates, input size, augmentation, seed of the split
    layers: dict[str, str]  # point → module whose output the suffix reads
    folds: Folds | None = None  # how options are scored (default: the split's held-out images)
    min_steps: int = MIN_STEPS  # optimiser steps every fine-tune takes at least
    cache: PrefixCache | None = None
    cut_ok: dict[str, bool] = field(default_factory=dict)  # point → the cut reproduces the full network
    stop: Callable[[], bool] = _never
    progress: Callable[[int], None] | None = None  # steps done within the current task

    def __getstate__(self) -> dict[str, object]:
        """What a remote worker receives: everything but the shared pass (rebuilt there) and the local callbacks."""
        state = dict(self.__dict__)
        state.update(cache=None, stop=_never, progress=None)
        return state

    @property
    def scoring(self) -> Folds:
        """The (train, test) pairs every option is scored by."""
        return self.folds or Folds([(list(self.split.train), list(self.split.heldout))], HOLDOUT)

    def prefix(self) -> PrefixCache:
        """The shared pass (computed on first use in this process: a remote worker builds its own)."""
        if self.cache is None:
            self.cache = build_prefix(self)
        return self.cache


class SweepRunner(Protocol):
    """Runs tasks and reports each result as it finishes: ``runner(tasks, context, on_done)``."""

    def __call__(
        self, tasks: list[SweepTask], context: SweepContext, on_done: Callable[[SweepTask, TaskResult], None]
    ) -> None: ...


def in_process(tasks: list[SweepTask], context: SweepContext, on_done: Callable[[SweepTask, TaskResult], None]) -> None:
    """The default runner: one task after the other in this process, sharing the prefix pass."""
    for task in tasks:
        if context.stop():
            return
        result = run_sweep_task(task, context)
        if result is not None:
            on_done(task, result)


# --------------------------------------------------------------------------- points


MIN_FROZEN_SHARE = 0.01  # a stage end that freezes less of the network than this is 'none' in all but name


_AUTO_POINTS: weakref.WeakKeyDictionary[torch.nn.Module, dict[tuple[int, ...], list[str]]] = weakref.WeakKeyDictionary()


def auto_points(model: LoadedModel) -> list[str]:
    """The freeze points a sweep tries by default (`choose_points`), remembered per module, input size and shape
    (parameter and module counts): they depend on the structure only, and finding them traces the network twice."""
    seen = _AUTO_POINTS.setdefault(model.module, {})
    shape = (*model.input_size, sum(p.numel() for p in model.module.parameters()), len(list(model.module.modules())))
    if shape not in seen:  # a head replaced in place changes the parameter count: found again
        seen[shape] = choose_points(model)
    return list(seen[shape])


def choose_points(model: LoadedModel) -> list[str]:
    """Six to eight freeze points spread along what a freeze point changes: how much of the network trains.

    'none' (train every layer); the end of every stage but the last (whose end is 'head only') that freezes at
    least 1 % of the parameters before the head (freezing the stem alone leaves 99.9 % to train: 'none' in all
    but name, at most of the cost of training everything); then, while there are fewer than six, blocks that cut
    the stage holding the most parameters into parts of equal parameter count (the deep, wide stages where
    "fine-tune the top layers" lives); and 'head only', the last layer before the classifier.
    """
    rows = ladder(model, "blocks")
    names = [r.name for r in rows]
    head = head_name(model.module, _order(model))
    body = [r for r in rows if names.index(r.name) < names.index(head)] if head in names else rows[:-1]
    if not body:
        raise SweepError("This model has no layer before its classifier to freeze at.")
    total = sum(r.params for r in body) or 1
    stages: dict[int, list[LayerInfo]] = {}
    for r in body:
        if r.has_map:
            stages.setdefault(r.stage, []).append(r)
    groups = list(stages.values())
    cumulative = {r.name: sum(q.params for q in body[: body.index(r) + 1]) / total for r in body}
    points = [g[-1].name for g in groups[:-1] if cumulative[g[-1].name] >= MIN_FROZEN_SHARE]
    while len(points) > 5:  # at most 8 points in all: drop every other boundary, keep the deepest
        points = points[-1::-2][::-1]
    for g in sorted(groups, key=lambda g: -sum(r.params for r in g)):  # the largest stage first, then the next
        if len(points) >= 4:
            break
        points += [c for c in _cuts(g, 4 - len(points)) if c not in points]
    points = sorted(dict.fromkeys(points), key=names.index)
    return [NONE, *points, body[-1].name]


def _cuts(group: list[LayerInfo], k: int) -> list[str]:
    """Up to `k` blocks of `group` (never its last) that cut it into k + 1 parts of about equal parameter count."""
    total, running = sum(r.params for r in group), 0
    out: list[str] = []
    targets = [total * (i + 1) / (k + 1) for i in range(k)]
    for r in group[:-1]:
        running += r.params
        while targets and running >= targets[0] - 0.5 * r.params:
            targets.pop(0)
            if not out or out[-1] != r.name:
                out.append(r.name)
    return out


def _order(model: LoadedModel) -> list[str]:
    return execution_order(model.module, model.input_size)


def check_points(model: LoadedModel, points: list[str]) -> list[str]:
    """Each point is 'none' or a ladder layer that leaves something to train; one sentence otherwise."""
    names = {r.name for r in ladder(model, "blocks")}
    out = []
    for p in points:
        p = p.strip()
        if p.lower() == NONE:
            out.append(NONE)
            continue
        if p not in names:
            close = ", ".join(sorted([n for n in names if n.startswith(p.rsplit(".", 1)[0])][:4]))
            raise SweepError(
                f"Sweep point {p!r} is not a layer of the model's ladder (for example {close})."
                if close
                else f"Sweep point {p!r} is not a layer of the model's ladder (see `python -m explorer ladder`)."
            )
        try:
            frozen_modules(model, p)
        except FreezeError as exc:
            raise SweepError(str(exc)) from None
        out.append(p)
    return list(dict.fromkeys(out))


def plan_tasks(points: list[str], routes: tuple[str, ...], seeds: int) -> list[SweepTask]:
    """Every (point, route, seed), cheapest-to-share first: points in depth order, routes as given."""
    return [
        SweepTask(p, r, s)
        for p in points
        for r in routes
        if not (r == "linear" and p == NONE)  # the linear route needs a layer to cut at
        for s in range(seeds if r == "finetune" else 1)  # a linear fit is deterministic: seeds would repeat it
    ]


# --------------------------------------------------------------------------- the shared pass


def build_prefix(ctx: SweepContext, on_batch: Callable[[int], None] | None = None) -> PrefixCache:
    """One pass of the base over every image of the split: inputs, pooled features and outputs within budget."""
    model, s = ctx.model, ctx.settings
    indices = sorted(ctx.split.train + ctx.split.heldout)
    size = s.input_size or model.input_size[0]
    check_input_size(model, (size, size))  # a ViT runs only at its own size (a remote worker checks too)
    view = TransformedView(ctx.dataset, indices, eval_transform(model, size)[0])
    loader = DataLoader(view, batch_size=64, shuffle=False, num_workers=s.num_workers)
    probe = next(iter(loader))[0]
    sizes = bytes_per_image(model.module, ctx.layers, probe)
    cacheable = {p: b for p, b in sizes.items() if ctx.cut_ok.get(p)} if s.augment == "none" else {}
    keep, keep_inputs, skipped = keep_plan(cacheable, len(indices), 4 * probe[0].numel(), CACHE_BUDGET_BYTES)
    cache = compute_prefix(
        model.module,
        loader,
        indices,
        ctx.layers,
        keep=keep,
        keep_inputs=keep_inputs and s.augment == "none",
        device=model.device,
        on_batch=on_batch,
    )
    cache.skipped = skipped
    return cache


def check_cuts(model: LoadedModel, points: list[str], layers: dict[str, str], x: torch.Tensor) -> dict[str, bool]:
    """For each point, whether running only the layers after it on its cached output reproduces the network."""
    ok = {}
    for p in points:
        if p == NONE:
            continue
        cut = cut_model(trainable_copy(model), p, model.input_size)
        ok[p] = check_cut(model.module, cut, layers[p], x.to(model.device))
    return ok


# --------------------------------------------------------------------------- one task


def _loader(x: torch.Tensor, y: torch.Tensor, batch: int, *, shuffle: bool, seed: int) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(
        TensorDataset(x, y), batch_size=batch, shuffle=shuffle, generator=gen, drop_last=shuffle and len(y) > batch
    )


def _bits(correct: list[bool]) -> str:
    return "".join("1" if c else "0" for c in correct)


def _linear(task: SweepTask, ctx: SweepContext) -> TaskResult:
    cache = ctx.prefix()
    t0 = time.perf_counter()
    feats = cache.pooled[task.point].numpy()
    rows, labels = cache.rows, cache.labels.numpy()
    folds = ctx.scoring
    hits: dict[int, bool] = {}
    for train_idx, test_idx in folds.pairs:
        tr, te = [rows[i] for i in train_idx], [rows[i] for i in test_idx]
        pred = fit_predict(feats[tr], labels[tr], feats[te])
        hits.update(zip(test_idx, (pred == labels[te]).tolist(), strict=True))
    correct = [hits[i] for i in folds.scored]
    seconds = time.perf_counter() - t0
    k, c = len(ctx.classes), feats.shape[1]
    trained = sum(len(tr) for tr, _ in folds.pairs)
    return {
        "accuracy": float(np.mean(correct)),
        "correct": _bits(correct),
        "trainable": c * k + k,
        "seconds": seconds,
        "images_per_second": trained / seconds if seconds > 0 else 0.0,
        "epochs": 0,
        "cached": True,
        "converged": True,
    }


@dataclass
class _Fit:
    """One fine-tune of one fold: per-test-image correctness, epochs, whether it converged, images/s."""

    correct: list[bool]
    epochs: int
    converged: bool
    images_per_second: float
    trainable: int = 0
    stopped: bool = False


def _inner(ctx: SweepContext, train_idx: list[int], seed: int) -> tuple[list[int], list[int]]:
    """The fold's training images split per class into inner training and inner validation (stops and picks)."""
    every = labels_of(ctx.dataset)
    labels = [every[i] for i in train_idx]
    tr, va = split_indices(labels, INNER_FRACTION, seed)
    return [train_idx[i] for i in tr], [train_idx[i] for i in va]


def converged(epochs: list[dict[str, float]], classes: int) -> bool:
    """Whether a training run learned anything: its best inner-validation loss is below a uniform guess's (ln K)
    and its training accuracy rose clearly above chance (a tenth of the way from 1/K to 100 %)."""
    if not epochs:
        return False
    best_loss = min(e["val_loss"] for e in epochs)
    chance = 1.0 / classes
    return bool(best_loss < math.log(classes) and epochs[-1]["train_acc"] > chance + 0.1 * (1 - chance))


def _fit_fold(
    task: SweepTask, ctx: SweepContext, train_idx: list[int], test_idx: list[int], fold: int, scale: int
) -> _Fit:
    """Fine-tune on the fold's inner training images, stop and keep the best epoch by inner validation loss, and
    score the fold's test images (never seen by training nor by the choice of epoch)."""
    model = ctx.model
    seed = ctx.settings.seed + task.seed
    inner_tr, inner_va = _inner(ctx, train_idx, seed * 1009 + fold)
    bs = min(ctx.settings.batch_size, len(inner_tr))
    steps_per_epoch = max(1, len(inner_tr) // bs)
    min_epochs = scale * math.ceil(ctx.min_steps / steps_per_epoch)
    s = replace(
        ctx.settings,
        freeze_after=None if task.point == NONE else task.point,
        epochs=scale * max(ctx.settings.epochs, min_epochs + 1),
        keep_best=True,
        seed=seed,
    )
    cache = ctx.prefix()
    devices = [model.device.index or 0] if model.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed * 7919 + fold)
        module, head = trainable_model(model, len(ctx.classes), s.freeze_after)
        trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
        cached = task.point in cache.outputs
        source = cache.outputs.get(task.point) if cached else cache.inputs
        if cached:
            module = cut_model(module, task.point, model.input_size)
        if source is not None:
            y = cache.labels
            train_loader = _loader(cache.take(source, inner_tr), cache.take(y, inner_tr), bs, shuffle=True, seed=seed)
            val_loader = _loader(cache.take(source, inner_va), cache.take(y, inner_va), 256, shuffle=False, seed=0)
            test_loader = _loader(cache.take(source, test_idx), cache.take(y, test_idx), 256, shuffle=False, seed=0)
        else:  # over the memory budget, or augmented: images every epoch
            inner = Split(inner_tr, inner_va, None, 0, seed, INNER_FRACTION, None)
            train_loader, val, _ = image_loaders(model, ctx.dataset, inner, s)
            assert val is not None
            val_loader = val
            outer = Split(inner_tr, test_idx, None, 0, seed, 0.0, None)
            _, test, _ = image_loaders(model, ctx.dataset, outer, s)
            assert test is not None
            test_loader = test
        outcome = train(
            module,
            head,
            train_loader,
            val_loader,
            s,
            model.device,
            stop=ctx.stop,
            eval_each_epoch=True,
            min_epochs=min_epochs,
            progress=(lambda d, _t, _i: ctx.progress(d)) if ctx.progress else None,
        )
        if outcome.stopped:
            return _Fit([], 0, False, 0.0, stopped=True)
        scored = evaluate(module, test_loader, model.device)
    ok = converged(outcome.epochs, len(ctx.classes))
    return _Fit(scored["correct"], len(outcome.epochs), ok, outcome.images_per_second, trainable)


def _finetune(task: SweepTask, ctx: SweepContext) -> TaskResult | None:
    t0 = time.perf_counter()
    folds = ctx.scoring
    hits: dict[int, bool] = {}
    epochs, speeds, all_ok, extended = [], [], True, False
    for f, (train_idx, test_idx) in enumerate(folds.pairs):
        fit = _fit_fold(task, ctx, train_idx, test_idx, f, 1)
        if not fit.stopped and not fit.converged:  # extended once, never silently ranked
            extended = True
            fit = _fit_fold(task, ctx, train_idx, test_idx, f, 2)
        if fit.stopped:
            return None
        hits.update(zip(test_idx, fit.correct, strict=True))
        epochs.append(fit.epochs)
        speeds.append(fit.images_per_second)
        all_ok = all_ok and fit.converged
    correct = [hits[i] for i in folds.scored]
    return {
        "accuracy": float(np.mean(correct)),
        "correct": _bits(correct),
        "trainable": fit.trainable,
        "seconds": time.perf_counter() - t0,
        "images_per_second": float(np.mean(speeds)),
        "epochs": float(np.mean(epochs)),
        "cached": task.point in ctx.prefix().outputs,
        "converged": all_ok,
        "extended": extended,
    }


def run_sweep_task(task: SweepTask, context: SweepContext) -> TaskResult | None:
    """Measure one task: held-out accuracy, per-image correctness, trainable parameters, seconds, images/s.

    A pure function of the task and the context (the shared pass is built on first use), so any runner can call
    it; None when the context's stop signal ended it early (nothing half-done is reported).
    """
    if task.route == "linear":
        return _linear(task, context)
    if task.route == "finetune":
        return _finetune(task, context)
    raise SweepError(f"Unknown sweep route {task.route!r}: use {' or '.join(ROUTES)}.")
