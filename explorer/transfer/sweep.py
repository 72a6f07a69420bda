"""The freeze sweep: held-out accuracy and cost of freezing at each candidate point, by two routes, measured.

`sweep(model, data)` tries every candidate point ('none' trains everything; ``points="auto"`` adds the last block
of every stage and 'head only') by two routes under one budget, one held-out split and one seed per repeat
(:mod:`explorer.transfer.sweep_tasks`), and returns a :class:`~explorer.transfer.sweep_report.SweepReport`: the
curve, and the cheapest option not found worse than the best. With `out` (``sweep.json``, CSV and HTML beside
it), every finished task is written atomically as it ends; a rerun with the same settings and output skips them,
so an interrupted sweep loses at most the task it was running.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch.utils.data import Dataset

from explorer.data import TransformedView, eval_transform
from explorer.layers import check_input_size, ladder
from explorer.models import LoadedModel
from explorer.runtime import Progress, StopSignal, stop_requested
from explorer.transfer.checkpoints import write_atomic
from explorer.transfer.finetune import training_data
from explorer.transfer.heldout import Split, labels_of
from explorer.transfer.prefix import prefix_layer
from explorer.transfer.probes import chance_level
from explorer.transfer.report_html import render_sweep_html
from explorer.transfer.settings import FinetuneSettings
from explorer.transfer.sweep_report import JSONValue, SweepReport, choose, make_options
from explorer.transfer.sweep_tasks import (
    NONE,
    ROUTES,
    SweepContext,
    SweepError,
    SweepRunner,
    SweepTask,
    TaskResult,
    auto_points,
    build_prefix,
    check_cuts,
    check_points,
    in_process,
    plan_tasks,
)

FORMAT = "layer_explorer.sweep/1"

__all__ = [
    "SweepError",
    "SweepReport",
    "SweepTask",
    "load_sweep",
    "run_sweep_task",
    "save_sweep",
    "sweep",
    "sweep_settings",
]

from explorer.transfer.sweep_tasks import run_sweep_task  # noqa: E402  (re-exported: the runner's entry point)


def sweep_settings(epochs: int = 3, **overrides: int | float | str | None) -> FinetuneSettings:
    """A sweep's budget: the fine-tune defaults, no augmentation (so frozen prefixes are computed once), the last
    epoch kept (choosing an epoch on the held-out images would flatter every option)."""
    s = replace(FinetuneSettings(), epochs=epochs, augment="none", keep_best=False, patience=None)
    return replace(s, **overrides) if overrides else s  # type: ignore[arg-type]


def _signature(model: LoadedModel, split: Split, s: FinetuneSettings) -> str:
    """What makes two sweeps' tasks interchangeable: model weights, images and split, and the budget."""
    budget = {k: v for k, v in asdict(s).items() if k not in ("freeze_after", "num_workers")}
    blob = json.dumps(
        {
            "format": FORMAT,
            "model": model.fingerprint,
            "files": split.files_sha256,
            "train": split.train,
            "heldout": split.heldout,
            "budget": budget,
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
    if len(ctx_split.heldout) < len(classes):
        raise SweepError(
            f"Only {len(ctx_split.heldout)} held-out images for {len(classes)} classes: a sweep needs at least one "
            "held-out image per class (use more images or a larger held-out fraction)."
        )
    bad = [r for r in routes if r not in ROUTES]
    if bad or not routes:
        raise SweepError(f"Unknown sweep route {', '.join(bad) or '(none)'}: use {' and/or '.join(ROUTES)}.")
    if "linear" in routes and not any(r.has_map for r in ladder(model, "blocks")):
        raise SweepError(
            "The linear route cuts the network at a layer and pools its feature map, but this model has no layer "
            "with a spatial or token output; sweep with --routes finetune."
        )


def sweep(
    model: LoadedModel,
    data: str | Path | Dataset,
    *,
    points: str | Sequence[str] = "auto",
    routes: Sequence[str] = ROUTES,
    epochs: int = 3,
    seeds: int = 1,
    settings: FinetuneSettings | None = None,
    out: str | Path | None = None,
    runner: SweepRunner | None = None,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> SweepReport:
    """Measure held-out accuracy and cost at each freeze point by each route; recommend the cheapest good one.

    `points`: "auto" or ladder layer names (and "none"); `settings`: the budget (default :func:`sweep_settings`
    with `epochs`; its val_fraction, max_images, seed and input_size define the split and the images); `seeds`
    repeats each task with another training seed on the same split. `runner` executes the tasks (default
    in-process). `progress(done, total, info)` counts images of the shared pass plus training steps.
    """
    t0 = time.perf_counter()
    s = settings or sweep_settings(epochs)
    s.check()
    if s.input_size:  # a ViT trains and is measured only at its own size
        check_input_size(model, (s.input_size, s.input_size))
    out_path = _output(out)
    if seeds < 1:
        raise SweepError("Seeds must be at least 1.")
    ctx, pts = _context(model, data, points, tuple(routes), s, stop_requested(should_stop))
    signature = _signature(model, ctx.split, s)
    done = _resume(out_path, signature)
    tasks = [t for t in plan_tasks(pts, tuple(routes), seeds) if t.key not in done]
    meta = {
        "format": FORMAT,
        "signature": signature,
        "base": model.spec,
        "points": cast(JSONValue, pts),
        "routes": list(routes),
        "seeds": seeds,
    }
    notes = [
        f"{p}: trained on images every epoch (the cut network does not reproduce the full one)"
        for p, ok in ctx.cut_ok.items()
        if not ok
    ]
    seconds: dict[str, float] = {"setup": time.perf_counter() - t0}
    tick = _Ticker(progress, tasks, ctx, len(ctx.split.train) + len(ctx.split.heldout))
    if tasks:
        t1 = time.perf_counter()
        ctx.cache = build_prefix(ctx, on_batch=tick.images)
        seconds["shared_pass"] = time.perf_counter() - t1
        notes += [f"{p}: trained on images every epoch ({why})" for p, why in ctx.cache.skipped.items()]

    def on_done(task: SweepTask, result: TaskResult) -> None:
        done[task.key] = result
        tick.task_done(task)
        if out_path is not None:
            write_atomic(out_path, json.dumps({**meta, "tasks": done}, indent=1).encode())

    t2 = time.perf_counter()
    (runner or in_process)(tasks, ctx, on_done)
    seconds.update(tasks=time.perf_counter() - t2, total=time.perf_counter() - t0)
    labels = labels_of(ctx.dataset)
    report = _report(
        model,
        data,
        ctx.classes,
        [labels[i] for i in ctx.split.heldout],
        ctx.split,
        s,
        pts,
        tuple(routes),
        seeds,
        done,
        seconds,
        notes,
    )
    if out_path is not None:
        save_sweep(report, out_path, cast(dict[str, JSONValue], {**meta, "tasks": done}))
    return report


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
    _check_data(split, classes, routes, model)
    pts = auto_points(model) if isinstance(points, str) and points == "auto" else check_points(model, list(points))
    layers = {p: prefix_layer(model.module, p, model.input_size) for p in pts if p != NONE}
    view = TransformedView(dataset, split.heldout[:4], eval_transform(model, s.input_size or model.input_size[0])[0])
    probe = torch.stack([view[i][0] for i in range(len(view))])
    ok = check_cuts(model, pts, layers, probe)
    return SweepContext(model, dataset, classes, split, s, layers, cut_ok=ok, stop=stop), pts


def _report(
    model: LoadedModel,
    data: str | Path | Dataset,
    classes: list[str],
    heldout_labels: list[int],
    split: Split,
    s: FinetuneSettings,
    pts: list[str],
    routes: tuple[str, ...],
    seeds: int,
    done: dict[str, TaskResult],
    seconds: dict[str, float],
    notes: list[str],
) -> SweepReport:
    wanted = {t.key for t in plan_tasks(pts, routes, seeds)}
    results = {k: v for k, v in done.items() if k in wanted}
    options, bits = make_options(results, pts)  # type: ignore[arg-type]
    chance = chance_level(np.asarray(heldout_labels, dtype=np.int64))
    choice = choose(options, bits, chance)
    source = str(data) if not isinstance(data, Dataset) else type(data).__name__
    data_info: dict[str, JSONValue] = {
        "source": source,
        "classes": cast(JSONValue, classes),
        "train_images": len(split.train),
        "heldout_images": len(split.heldout),
        "images_per_class": round(len(split.train) / max(len(classes), 1), 1),
        "files_sha256": split.files_sha256,
    }
    settings: dict[str, JSONValue] = {
        **{k: v for k, v in asdict(s).items() if k != "freeze_after"},
        "points": cast(JSONValue, pts),
        "routes": list(routes),
        "seeds": seeds,
        "input_size": s.input_size or model.input_size[0],
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
    )


class _Ticker:
    """Turns the shared pass's images and each task's steps into one progress count."""

    def __init__(self, progress: Progress | None, tasks: list[SweepTask], ctx: SweepContext, images: int) -> None:
        s = ctx.settings
        steps = max(1, len(ctx.split.train) // min(s.batch_size, len(ctx.split.train)))
        self.cost = {t.key: (s.epochs * steps if t.route == "finetune" else 1) for t in tasks}
        self.progress, self.images_total = progress, images
        self.total = images + sum(self.cost.values())
        self.done = 0
        self.current: SweepTask | None = tasks[0] if tasks else None
        self.queue = list(tasks)
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
