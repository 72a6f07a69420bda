"""The freeze sweep on Ray: each (point, route, seed) a task, each worker computing the frozen prefix once.

`ray_sweep_runner(ray, workers=N)` returns a `SweepRunner` for `explorer.transfer.sweeping.sweep.sweep(...,
runner=...)`.
It puts the sweep's data once in Ray's object store (the dataset as this process opened it: an image folder travels
as its file paths, so every node must read that folder at the same path), and runs one ``"sweep.task"`` per
(point, route, seed) on a `Pool` whose workers each loaded the model once. A worker rebuilds the sweep's context
on its first task and keeps it for the next ones with the same data and settings, so the shared pass (the frozen
prefixes' outputs, `build_prefix`) runs once per worker. Each result comes back as a plain dict and goes to the
sweep's ``on_done`` as it arrives, so the resume file is written here, on the driver, as in-process; a task whose
worker died runs again on another one (the pool's retries).
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from explorer.distributed.errors import DistributedError, require_ray
from explorer.distributed.pool import MapResult, Pool
from explorer.distributed.progress import ProgressInfo, RunProgress
from explorer.distributed.tasks import Task, TaskReport
from explorer.models import LoadedModel
from explorer.transfer.sweeping.sweep_tasks import MIN_STEPS, SweepContext, SweepTask, TaskResult, run_sweep_task
from explorer.transfer.training.heldout import Split

KIND = "sweep.task"
KEEP_CONTEXTS = 2  # contexts (and their shared passes) a worker keeps, newest last

_contexts: dict[str, SweepContext] = {}  # on a worker: context key → its context, shared pass included


def context_payload(context: SweepContext) -> dict[str, Any]:
    """What a worker needs to rebuild `context` (not the model, which it loaded, nor the shared pass or callbacks)."""
    return {
        "dataset": context.dataset,
        "classes": list(context.classes),
        "split": context.split,
        "settings": context.settings,
        "layers": dict(context.layers),
        "cut_ok": dict(context.cut_ok),
        "folds": context.folds,  # how options are scored (a held-out split, or cross-validation folds)
        "min_steps": context.min_steps,
    }


def context_key(payload: dict[str, Any]) -> str:
    """A key for a worker's cache of contexts: the hash of the payload (data, split, settings, points)."""
    return hashlib.sha256(pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)).hexdigest()


def worker_context(model: LoadedModel, key: str, payload: Any) -> SweepContext:
    """The context of `key` on this worker: built on its first task (``payload``: the dict, or an object ref of it)
    and kept, so the shared pass runs once per worker for all its tasks of one sweep."""
    ctx = _contexts.pop(key, None)
    if ctx is None or ctx.model is not model:
        if not isinstance(payload, dict):
            payload = require_ray().get(payload)
        split = payload["split"]
        if not isinstance(split, Split):
            raise DistributedError("A sweep task arrived without its data split.")
        ctx = SweepContext(
            model,
            payload["dataset"],
            payload["classes"],
            split,
            payload["settings"],
            payload["layers"],
            cut_ok=payload["cut_ok"],
            folds=payload.get("folds"),
            min_steps=int(payload.get("min_steps", MIN_STEPS)),
        )
    _contexts[key] = ctx  # newest last
    while len(_contexts) > KEEP_CONTEXTS:
        _contexts.pop(next(iter(_contexts)))
    return ctx


def run_point(model: LoadedModel, args: dict[str, Any], report: TaskReport) -> dict[str, Any]:
    """The ``sweep.task`` handler: one (point, route, seed) on this worker's model.

    Returns ``{"result": TaskResult or None (stopped), "built_prefix": whether this task computed the shared
    pass}`` (the first task of a sweep on each worker does; the next ones reuse it).
    """
    ctx = worker_context(model, args["key"], args["context"])
    task = SweepTask(args["point"], args["route"], int(args["seed"]))
    total = int(args.get("steps") or 1)
    ctx.progress = lambda done: report(done, total)
    fresh = ctx.cache is None
    try:
        result = run_sweep_task(task, ctx)
    finally:
        ctx.progress = None
    return {"result": None if result is None else dict(result), "built_prefix": fresh and ctx.cache is not None}


def task_steps(task: SweepTask, context: SweepContext) -> int:
    """A task's cost in training steps (as the sweep's progress counts them): epochs × batches, 1 for linear."""
    s, train = context.settings, len(context.split.train)
    return s.epochs * max(1, train // max(1, min(s.batch_size, train))) if task.route == "finetune" else 1


class _Stopped(Exception):
    """The sweep's stop signal fired: end the map, keep what is done."""


@dataclass
class RaySweepRunner:
    """A `SweepRunner` on Ray workers (see the module docstring); `last` is the `MapResult` of its latest run.

    `pool`: a `Pool` to reuse (left open; its model must be the sweep's); otherwise each run starts one with
    `ray`, `device`, `workers`, `cpus_per_worker`, `gpus_per_worker` and `runtime_env` and stops it at the end.
    `progress`: also told of every event of the pool (worker, retries), besides the sweep's own progress.
    """

    ray: str = "auto"
    device: str = "auto"
    workers: int | None = None
    cpus_per_worker: int = 1
    gpus_per_worker: float = 1.0
    runtime_env: dict[str, Any] | None = None
    pool: Pool | None = None
    progress: RunProgress | None = None
    max_retries: int = 3
    last: MapResult | None = None
    prefix_passes: int = 0  # shared passes the workers computed in the latest run (one per worker that took a task)

    def __call__(
        self, tasks: list[SweepTask], context: SweepContext, on_done: Callable[[SweepTask, TaskResult], None]
    ) -> None:
        self.last, self.prefix_passes = None, 0
        if not tasks:
            return
        ray = require_ray()
        pool = self.pool or Pool(
            context.model, self.ray, device=self.device, workers=self.workers, cpus_per_worker=self.cpus_per_worker,
            gpus_per_worker=self.gpus_per_worker, runtime_env=self.runtime_env,
        )  # fmt: skip
        if pool.source.fingerprint and pool.source.fingerprint != context.model.fingerprint:
            raise DistributedError("The Ray pool holds another model than the sweep's; start one for this model.")
        payload = context_payload(context)
        key = context_key(payload)
        ref = ray.put(payload)
        by_key = {t.key: t for t in tasks}
        jobs = [
            Task(
                KIND,
                {
                    "key": key,
                    "context": ref,
                    "point": t.point,
                    "route": t.route,
                    "seed": t.seed,
                    "steps": task_steps(t, context),
                },
                channel=t.key,  # one channel per task: its own steps
                cost=task_steps(t, context),
            )
            for t in tasks
        ]
        running: dict[int, int] = {}  # task index → steps it reported

        def progress(done: int, total: int, info: ProgressInfo) -> None:
            if self.progress is not None:
                self.progress(done, total, info)
            if info.task < 0 or context.progress is None:
                return
            if info.event == "step":
                running[info.task] = info.channels.get(info.channel, (0, 0))[0]
            else:
                running.pop(info.task, None)
            context.progress(sum(running.values()))

        def on_result(job: Task, value: dict[str, Any]) -> None:
            self.prefix_passes += bool(value.get("built_prefix"))
            result = value.get("result")
            if result is not None:
                task = by_key[f"{job.args['route']}@{job.args['point']}#{job.args['seed']}"]
                on_done(task, result)
            if context.stop():
                raise _Stopped

        try:
            self.last = pool.map(jobs, progress=progress, on_result=on_result, max_retries=self.max_retries)
        except _Stopped:
            return
        finally:
            if self.pool is None:
                pool.close()


def ray_sweep_runner(
    ray: str = "auto",
    *,
    workers: int | None = None,
    device: str = "auto",
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 1.0,
    runtime_env: dict[str, Any] | None = None,
    pool: Pool | None = None,
    progress: RunProgress | None = None,
) -> RaySweepRunner:
    """A runner for `sweep(..., runner=...)` that runs each (point, route, seed) as a task on Ray workers.

    `ray`: auto (this machine's cluster, or a new local one), local, or a cluster address; `workers`: how many
    (default: one per GPU, else one per CPU free now). Ray is needed only when the runner runs (RayMissing then).
    """
    require_ray()
    return RaySweepRunner(
        ray, device, workers, cpus_per_worker, gpus_per_worker, runtime_env, pool=pool, progress=progress
    )
