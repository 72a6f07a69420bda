"""The scheduler: a pool of workers kept busy with tasks; a task whose worker dies runs again on another.

Each worker holds one task at a time and gets the next the moment it returns, so no worker waits while tasks
are queued. When a worker dies (killed, out of memory, its node lost), its task goes back to the front of the
queue for the next free worker, counted against the task's `max_retries`, and a new worker is started in its
place. An error raised *by a task* is not retried (it would fail again): a user error is raised as is, anything
else with the worker's traceback. Results come back in task order; `on_result(task, value)` sees each one as it
arrives, so a caller can store it at once and a rerun after a crash redoes only what was not stored.

Without Ray (`ray=None`) `map_tasks` runs the same tasks one after another in this process.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from explorer.distributed.cluster import WorkerShape, connect, worker_shape
from explorer.distributed.errors import DistributedError, require_ray
from explorer.distributed.progress import RunProgress, Tracker
from explorer.distributed.tasks import Task, run_task
from explorer.distributed.worker import Hub, ModelSource, Worker, WorkerInfo
from explorer.errors import ExplorerError
from explorer.models import LoadedModel, load_model

OnResult = Callable[[Task, dict[str, Any]], None]
START_TIMEOUT_S = 600.0  # no worker ready for this long while tasks wait: the cluster lacks the resources
WAIT_S = 0.2


@dataclass
class MapResult:
    """Each task's returned dict (in task order), how many tasks ran, how many reruns a dead worker cost.

    `busy_seconds` sums the time workers spent inside tasks: ``busy_seconds / (seconds × workers)`` is how busy
    the scheduler kept them.
    """

    results: list[dict[str, Any]]
    executed: int = 0
    retries: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)
    busy_seconds: float = 0.0


@dataclass
class _Slot:
    actor: Any
    ready: Any  # the ref of its info() call until it answered, then None
    info: WorkerInfo | None = None
    task: int | None = None
    ref: Any = None


class Pool:
    """Ray workers that each hold the model of `source`; reuse one pool for several `map` calls.

    `ray`: auto (this machine's cluster, or a new local one), local, or a cluster address. Workers: one per GPU
    (`gpus_per_worker` < 1 packs several on one), or, without GPUs, one per `cpus_per_worker` CPUs, each with as
    many torch threads. Actors start on the first `map`, not before; with none up for `start_timeout_s` while
    tasks wait, `map` gives up with a DistributedError.
    """

    def __init__(
        self,
        source: ModelSource | LoadedModel,
        ray: str = "auto",
        *,
        device: str = "auto",
        workers: int | None = None,
        cpus_per_worker: int = 1,
        gpus_per_worker: float = 1.0,
        runtime_env: dict[str, Any] | None = None,
        start_timeout_s: float = START_TIMEOUT_S,
    ) -> None:
        self.source = ModelSource.of(source) if isinstance(source, LoadedModel) else source
        self._ray = require_ray()
        connect(ray, runtime_env)
        self.shape: WorkerShape = worker_shape(device, workers, cpus_per_worker, gpus_per_worker)
        self._slots: list[_Slot] = []
        self._hub: Any = None
        self._started = False
        self.replacements = 0
        self.start_timeout_s = start_timeout_s

    @property
    def device(self) -> str:
        """cpu or cuda: where every worker of this pool runs."""
        return self.shape.device

    @property
    def workers(self) -> list[WorkerInfo]:
        """The workers that are up now."""
        return [s.info for s in self._slots if s.info is not None]

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _spawn(self) -> _Slot:
        remote = self._ray.remote(Worker).options(**self.shape.options())
        actor = remote.remote(self.source, self.shape.device, max(1, int(self.shape.num_cpus)), self._hub)
        return _Slot(actor, actor.info.remote())

    def start(self) -> None:
        """Start the workers (each loads the model), or top them up to the pool's size; `map` calls this itself."""
        if not self._started:
            self._hub = self._ray.remote(Hub).options(num_cpus=0).remote()
            self._started = True
        while len(self._slots) < self.shape.count:
            self._slots.append(self._spawn())

    def ready(self) -> list[WorkerInfo]:
        """Start the workers and wait until each has loaded the model (to time work apart from start-up)."""
        self.start()
        for slot in list(self._slots):
            if slot.ready is None:
                continue
            try:
                info = self._ray.get(slot.ready)
            except self._retryable() as exc:
                raise DistributedError(f"A worker died while loading the model ({type(exc).__name__}).") from None
            slot.ready = None
            if info.error:
                raise DistributedError(info.error)
            slot.info = info
        return self.workers

    def close(self) -> None:
        """Stop the workers (the cluster itself stays up)."""
        for s in self._slots:
            self._kill(s.actor)
        if self._hub is not None:
            self._kill(self._hub)
        self._slots, self._hub, self._started = [], None, False

    def _kill(self, actor: Any) -> None:
        with contextlib.suppress(Exception):  # already gone
            self._ray.kill(actor, no_restart=True)

    def _retryable(self) -> tuple[type[BaseException], ...]:
        ex = self._ray.exceptions
        return (ex.RayActorError, ex.WorkerCrashedError, ex.ObjectLostError, ex.OutOfMemoryError, ex.NodeDiedError)

    def map(
        self,
        tasks: Sequence[Task],
        progress: RunProgress | None = None,
        on_result: OnResult | None = None,
        max_retries: int = 3,
    ) -> MapResult:
        """Run every task on the pool's workers; see the module docstring for order, retries and errors."""
        start = time.perf_counter()
        tasks = list(tasks)
        if not tasks:
            return MapResult([], 0, 0, 0.0, [w.id for w in self.workers])
        self.start()
        try:
            return self._run(tasks, Tracker(tasks, progress), on_result, max_retries, start)
        except BaseException:
            self._reset_busy()
            raise

    def _reset_busy(self) -> None:
        """After a failed or interrupted map: workers still busy with its tasks are stopped (the next map starts
        new ones in their place)."""
        for s in [s for s in self._slots if s.task is not None]:
            self._kill(s.actor)
            self._slots.remove(s)

    def _run(
        self, tasks: list[Task], tracker: Tracker, on_result: OnResult | None, max_retries: int, start: float
    ) -> MapResult:
        results: list[dict[str, Any] | None] = [None] * len(tasks)
        pending: deque[int] = deque(range(len(tasks)))
        attempts = [0] * len(tasks)
        retries, executed, used, busy = 0, 0, set(), 0.0
        last_ready = time.monotonic()
        while pending or any(s.task is not None for s in self._slots):
            for s in self._slots:  # keep every ready worker busy
                if s.info is not None and s.task is None and pending:
                    s.task = pending.popleft()
                    attempts[s.task] += 1
                    s.ref = s.actor.run.remote(tasks[s.task], s.task)
            waiting = {s.ready: s for s in self._slots if s.ready is not None}
            waiting.update({s.ref: s for s in self._slots if s.ref is not None})
            if not waiting:
                raise DistributedError("Every worker died and none could be started again; see the Ray logs.")
            done, _ = self._ray.wait(list(waiting), num_returns=1, timeout=WAIT_S)
            self._drain(tracker)
            for ref in done:
                slot = waiting[ref]
                if ref is slot.ready:
                    slot.ready = None
                    try:
                        info = self._ray.get(ref)
                    except self._retryable():
                        self._replace(slot, max_retries)
                        continue
                    if info.error:
                        self._kill(slot.actor)
                        self._slots.remove(slot)
                        raise DistributedError(info.error)
                    slot.info, last_ready = info, time.monotonic()
                    tracker.worker_started(info.id)
                    continue
                index, slot.task, slot.ref = slot.task, None, None
                assert index is not None
                worker = slot.info.id if slot.info else "?"
                try:
                    out = self._ray.get(ref)
                except self._retryable() as exc:
                    if attempts[index] > max_retries:
                        raise DistributedError(
                            f"Task {tasks[index].describe()} lost its worker {attempts[index]} times (out of "
                            f"memory?); the last: {type(exc).__name__}."
                        ) from None
                    retries += 1
                    pending.appendleft(index)
                    tracker.retry(index, worker, type(exc).__name__)
                    self._replace(slot, max_retries)
                    continue
                except self._ray.exceptions.RayTaskError as exc:
                    if isinstance(exc.cause, ExplorerError):
                        raise exc.cause from None
                    raise
                results[index] = out["value"]
                executed += 1
                busy += out["seconds"]
                used.add(out["worker"])
                if on_result is not None:
                    on_result(tasks[index], out["value"])
                tracker.finished(index, out["worker"])
            idle = pending and not any(s.info is not None for s in self._slots)
            if idle and time.monotonic() - last_ready > self.start_timeout_s:
                raise DistributedError(
                    f"No worker could start within {self.start_timeout_s:.0f} s; the cluster may lack the resources "
                    f"one needs ({self.shape.num_cpus:g} CPU, {self.shape.num_gpus:g} GPU)."
                )
        wall = time.perf_counter() - start
        return MapResult(results, executed, retries, wall, sorted(used), busy)  # type: ignore[arg-type]

    def _replace(self, slot: _Slot, max_retries: int) -> None:
        """Put a new worker in a dead one's place (at most (max_retries + 1) × workers times in a pool's life)."""
        self._kill(slot.actor)
        self._slots.remove(slot)
        if self.replacements < (max_retries + 1) * max(1, self.shape.count):
            self.replacements += 1
            self._slots.append(self._spawn())

    def _drain(self, tracker: Tracker) -> None:
        if self._hub is None:
            return
        try:
            items = self._ray.get(self._hub.drain.remote())
        except self._retryable():
            return
        for index, done, total, worker in items:
            if 0 <= index < len(tracker.tasks) and any(s.task == index for s in self._slots):
                tracker.step(index, done, total, worker)


def map_tasks(
    tasks: Sequence[Task],
    model: ModelSource | LoadedModel | str,
    *,
    ray: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 1.0,
    progress: RunProgress | None = None,
    on_result: OnResult | None = None,
    max_retries: int = 3,
) -> MapResult:
    """Run `tasks` on `model` and return each task's dict in order: on a Ray pool (`ray` auto, local, an address),
    or, with `ray=None`, one after another in this process with the same handlers.

    This is the one entry point for distributed work; see `explorer.distributed` for how a sweep plugs in.
    """
    if ray is not None:
        source = ModelSource(model) if isinstance(model, str) else model
        with Pool(
            source, ray, device=device, workers=workers, cpus_per_worker=cpus_per_worker,
            gpus_per_worker=gpus_per_worker,
        ) as pool:  # fmt: skip
            return pool.map(tasks, progress=progress, on_result=on_result, max_retries=max_retries)
    if isinstance(model, LoadedModel):
        loaded = model
    else:
        src = ModelSource(model) if isinstance(model, str) else model
        loaded = load_model(src.spec, arch=src.arch, device=None if device == "auto" else device)
    return run_local(tasks, loaded, progress=progress, on_result=on_result)


def run_local(
    tasks: Sequence[Task],
    model: LoadedModel,
    progress: RunProgress | None = None,
    on_result: OnResult | None = None,
) -> MapResult:
    """The in-process back end: the tasks one after another on `model`, with the same progress calls."""
    start = time.perf_counter()
    tasks = list(tasks)
    tracker = Tracker(tasks, progress)
    results = []
    busy = 0.0
    for i, task in enumerate(tasks):
        began = time.perf_counter()
        value = run_task(model, task, partial(tracker.step, i, worker="local"))
        busy += time.perf_counter() - began
        results.append(value)
        if on_result is not None:
            on_result(task, value)
        tracker.finished(i, "local")
    return MapResult(results, len(tasks), 0, time.perf_counter() - start, ["local"] if tasks else [], busy)
