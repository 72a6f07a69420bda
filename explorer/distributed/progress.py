"""Progress of a run in channels: one callback `progress(done, total, info)` for the whole cluster.

`done` and `total` count work units over every task (each task's `cost`; a running task counts the fraction it
reported). `info` is a `ProgressInfo`: which channel and worker moved, and every channel's own (done, total), so a
caller can draw one bar for the run or one per channel (per layer of an atlas, per freeze point of a sweep).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from explorer.distributed.tasks import Task


@dataclass
class ProgressInfo:
    """What moved: the event (step, done, retry, start), its channel, task index and worker, and every channel."""

    event: str
    channel: str
    task: int  # index into the tasks of the run; -1 for a worker event
    worker: str
    channels: dict[str, tuple[int, int]] = field(default_factory=dict)
    message: str = ""


RunProgress = Callable[[int, int, ProgressInfo], None]


class Tracker:
    """Keeps each task's reported fraction and turns updates into calls of one `RunProgress` callback."""

    def __init__(self, tasks: Sequence[Task], progress: RunProgress | None) -> None:
        self.tasks = list(tasks)
        self.progress = progress
        self.fraction = [0.0] * len(self.tasks)
        self.totals: dict[str, int] = {}
        for t in self.tasks:
            self.totals[t.channel] = self.totals.get(t.channel, 0) + int(t.cost)
        self.total = sum(self.totals.values())

    def _emit(self, event: str, index: int, worker: str, message: str = "") -> None:
        if self.progress is None:
            return
        done_by: dict[str, float] = dict.fromkeys(self.totals, 0.0)
        for t, f in zip(self.tasks, self.fraction, strict=True):
            done_by[t.channel] += f * t.cost
        channels = {c: (int(round(done_by[c])), self.totals[c]) for c in self.totals}
        channel = self.tasks[index].channel if index >= 0 else ""
        done = sum(d for d, _ in channels.values())
        self.progress(done, self.total, ProgressInfo(event, channel, index, worker, channels, message))

    def step(self, index: int, done: int, total: int, worker: str) -> None:
        """A running task reported `done` of `total` (its own units)."""
        if total > 0 and self.fraction[index] < 1.0:
            self.fraction[index] = min(max(done / total, 0.0), 0.999)
            self._emit("step", index, worker)

    def finished(self, index: int, worker: str) -> None:
        self.fraction[index] = 1.0
        self._emit("done", index, worker)

    def retry(self, index: int, worker: str, message: str) -> None:
        """The task's worker died: its partial progress is dropped, the task is queued again."""
        self.fraction[index] = 0.0
        self._emit("retry", index, worker, message)

    def worker_started(self, worker: str) -> None:
        self._emit("start", -1, worker)
