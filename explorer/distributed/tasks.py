"""Tasks: plain, picklable descriptions of work, and the handlers that carry them out on a loaded model.

A task names its handler by `kind`: a short name from `KINDS` or ``"package.module:function"``, imported where
the task runs (so a worker needs nothing registered at run time). A handler is::

    def handler(model: LoadedModel, args: dict, report: TaskReport) -> dict

It must not change `model` (a worker keeps one model for all its tasks), calls ``report(done, total)`` as it
goes, and returns a small picklable dict. `channel` groups tasks for progress (a layer, a freeze point); `cost` is
the task's work in any unit shared by its run (image-steps for the atlas), used for progress and ordering.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from explorer.distributed.errors import DistributedError
from explorer.models import LoadedModel

TaskReport = Callable[[int, int], None]
Handler = Callable[[LoadedModel, dict[str, Any], TaskReport], dict[str, Any]]

KINDS: dict[str, str] = {
    "atlas.render": "explorer.distributed.atlas_tasks:render_task",
    "atlas.probe": "explorer.distributed.atlas_tasks:probe_task",
    "sweep.task": "explorer.distributed.sweep_job:run_point",
}


@dataclass(frozen=True)
class Task:
    """One unit of work: which handler (`kind`), its arguments, its progress channel and its cost."""

    kind: str
    args: dict[str, Any] = field(default_factory=dict)
    channel: str = ""
    cost: int = 1

    def describe(self) -> str:
        """A short name for messages: the kind and the channel."""
        return f"{self.kind} ({self.channel})" if self.channel else self.kind


def resolve(kind: str) -> Handler:
    """The handler a task kind names, imported now; DistributedError in one sentence when it cannot be found."""
    target = KINDS.get(kind, kind)
    module_name, sep, name = target.partition(":")
    if not sep or not module_name or not name:
        known = ", ".join(KINDS)
        raise DistributedError(f"Unknown task kind {kind!r}: use one of {known} or 'package.module:function'.")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise DistributedError(f"Task kind {kind!r} needs {module_name}, which does not import here ({exc}).") from None
    handler = getattr(module, name, None)
    if not callable(handler):
        raise DistributedError(f"Task kind {kind!r}: {module_name} has no function {name}.")
    return handler


def run_task(model: LoadedModel, task: Task, report: TaskReport | None = None) -> dict[str, Any]:
    """Run one task on `model` here, in this process (what a worker does, and the in-process back end)."""
    result = resolve(task.kind)(model, dict(task.args), report or (lambda done, total: None))
    if not isinstance(result, dict):
        raise DistributedError(f"Task {task.describe()} returned {type(result).__name__}, not a dict.")
    return result
