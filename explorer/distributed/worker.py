"""A worker: one process that loads the model once and runs tasks on it (a Ray actor, but plain Python here).

`Worker` is wrapped with ``ray.remote`` only when a pool starts, so this module imports without Ray. It never
raises from its constructor: a model that cannot be loaded (or that loads with other weights than the driver's)
is reported by `info()`, and the pool turns it into one sentence for the user.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import torch

from explorer.distributed.tasks import Task, run_task
from explorer.errors import msg
from explorer.models import LoadedModel, load_model

PUSH_EVERY_S = 0.5  # a running task's progress goes to the driver at its first report, then at most this often


@dataclass(frozen=True)
class ModelSource:
    """How a worker gets the model: a spec (or a checkpoint path on storage every node reads) and its weights' hash.

    With `fingerprint` set, a worker that builds other weights refuses to work (a model changed in this process is
    not what its spec builds: save it as a checkpoint and pass the path).
    """

    spec: str
    arch: str | None = None
    fingerprint: str | None = None

    @classmethod
    def of(cls, model: LoadedModel) -> ModelSource:
        """The source of a loaded model: its spec, its architecture (used for checkpoints) and its fingerprint."""
        return cls(model.spec, model.arch, model.fingerprint)


@dataclass(frozen=True)
class WorkerInfo:
    """Where a worker runs and what it loaded; `error` says why it cannot work (then nothing else is set)."""

    id: str
    host: str
    pid: int
    device: str
    threads: int
    fingerprint: str = ""
    error: str = ""


class Hub:
    """Collects progress pushed by workers (fire and forget) until the driver drains it (a Ray actor, 0 CPUs)."""

    def __init__(self) -> None:
        self.items: list[tuple[int, int, int, str]] = []

    def push(self, item: tuple[int, int, int, str]) -> None:
        self.items.append(item)

    def drain(self) -> list[tuple[int, int, int, str]]:
        items, self.items = self.items, []
        return items


class Worker:
    """Loads `source` once on `device` with `threads` CPU threads, then runs tasks (`explorer.distributed.tasks`)."""

    def __init__(self, source: ModelSource, device: str, threads: int, hub: Any = None) -> None:
        torch.set_num_threads(max(1, int(threads)))
        self.hub = hub
        self.model: LoadedModel | None = None
        host, pid = socket.gethostname(), os.getpid()
        gpus = os.environ.get("CUDA_VISIBLE_DEVICES", "") if device == "cuda" else ""
        wid = f"{host}:{device}{'[' + gpus + ']' if gpus else ''}:{pid}"
        try:
            self.model = load_model(source.spec, arch=source.arch, device=device)
            error = ""
            if source.fingerprint and self.model.fingerprint != source.fingerprint:
                error = msg(
                    f"The worker on {host} built {source.spec} with other weights than this process "
                    f"({self.model.fingerprint[:12]} ≠ {source.fingerprint[:12]}): a model changed in this process, "
                    f"or another version of a library, builds other weights; save it as a checkpoint that every node "
                    f"can read and pass its path."
                )
        except Exception as exc:  # reported by info(), phrased by the pool
            error = msg(f"The worker on {host} could not load {source.spec}: {exc}")
        fp = self.model.fingerprint if self.model is not None and not error else ""
        self.info_ = WorkerInfo(wid, host, pid, device, torch.get_num_threads(), fp, error)

    def info(self) -> WorkerInfo:
        """Where this worker runs and what it loaded (or why it cannot work)."""
        return self.info_

    def run(self, task: Task, index: int) -> dict[str, Any]:
        """Run one task; its progress goes to the hub as (index, done, total, worker id)."""
        assert self.model is not None, self.info_.error
        last = [0.0]

        def report(done: int, total: int) -> None:
            now = time.monotonic()
            if self.hub is not None and (last[0] == 0.0 or now - last[0] >= PUSH_EVERY_S):
                last[0] = now
                self.hub.push.remote((index, int(done), int(total), self.info_.id))

        start = time.perf_counter()
        value = run_task(self.model, task, report)
        return {"value": value, "seconds": time.perf_counter() - start, "worker": self.info_.id}
