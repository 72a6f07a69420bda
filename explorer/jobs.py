"""Fair sharing of one server's compute: heavy jobs take turns, first come first served, at most one per session.

A class on one server means many sessions asking for renders, attributions, scans and fine-tunes at once. Running
them all together makes every one slow and every page switch sluggish (the CPU is oversubscribed). So heavy work
asks for a *slot*: at most ``LAYER_EXPLORER_WORKERS`` jobs run at once (default: 1 per 4 CPU cores, at least 1),
the others wait in order of arrival and are told their position ("2 jobs ahead of yours"), and one session holds at
most ``LAYER_EXPLORER_JOBS_PER_SESSION`` slots (default 1) — its later requests wait behind its own. Light work
(page switches, cached images) never asks for a slot, so it never waits.

No Streamlit here: the app passes a callback that draws the waiting message.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from explorer.errors import ExplorerError

WORKERS_VAR = "LAYER_EXPLORER_WORKERS"
PER_SESSION_VAR = "LAYER_EXPLORER_JOBS_PER_SESSION"


class QueueError(ExplorerError):
    """A job that could not get a slot (cancelled while waiting, or waited too long)."""


@dataclass(frozen=True)
class Ticket:
    """One request for a slot: who asked, for what, and when (its place in the line)."""

    number: int
    session: str
    kind: str


def _env_int(name: str, default: int) -> int:
    try:
        value = int(os.environ.get(name, "") or default)
    except ValueError:
        return default
    return max(1, value)


class JobQueue:
    """A bounded set of slots for heavy work, granted in arrival order, with a per-session limit."""

    def __init__(self, workers: int | None = None, per_session: int | None = None) -> None:
        self.workers = workers or _env_int(WORKERS_VAR, max(1, (os.cpu_count() or 1) // 4))
        self.per_session = per_session or _env_int(PER_SESSION_VAR, 1)
        self._cond = threading.Condition()
        self._waiting: list[Ticket] = []
        self._running: list[Ticket] = []
        self._numbers = itertools.count()

    def _grantable(self, ticket: Ticket) -> bool:
        """The first waiting ticket that may run (its session under its limit) gets the next free slot."""
        if len(self._running) >= self.workers:
            return False
        busy = {t.session: 0 for t in self._running}
        for t in self._running:
            busy[t.session] += 1
        for t in self._waiting:
            if busy.get(t.session, 0) < self.per_session:
                return t is ticket
        return False

    def position(self, ticket: Ticket) -> int:
        """Jobs that will start before this one: the running ones that block it plus the waiting ones ahead."""
        with self._cond:
            if ticket in self._running:
                return 0
            ahead = self._waiting.index(ticket) if ticket in self._waiting else 0
            return ahead + min(len(self._running), self.workers)

    def snapshot(self) -> dict[str, int]:
        """How busy the server is: running and waiting jobs, and the number of slots."""
        with self._cond:
            return {"running": len(self._running), "waiting": len(self._waiting), "workers": self.workers}

    @contextmanager
    def slot(
        self,
        session: str,
        kind: str = "job",
        *,
        on_wait: Callable[[int], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        poll_s: float = 0.25,
        timeout_s: float | None = None,
    ) -> Iterator[Ticket]:
        """Hold a slot for the duration of the block, waiting in line first.

        While waiting, `on_wait(jobs_ahead)` is called when the position changes (and once at the start);
        `should_stop()` True, or `timeout_s` passing, gives up with a QueueError. The slot is always released.
        """
        ticket = Ticket(next(self._numbers), session, kind)
        started = time.monotonic()
        shown = -1
        with self._cond:
            self._waiting.append(ticket)
            try:
                while not self._grantable(ticket):
                    ahead = self._waiting.index(ticket) + min(len(self._running), self.workers)
                    if on_wait is not None and ahead != shown:
                        shown = ahead
                        self._cond.release()
                        try:
                            on_wait(ahead)
                        finally:
                            self._cond.acquire()
                    if should_stop is not None and should_stop():
                        raise QueueError("Cancelled while waiting for a free slot.")
                    if timeout_s is not None and time.monotonic() - started > timeout_s:
                        raise QueueError(f"The server stayed busy for {timeout_s:.0f} s; try again in a moment.")
                    self._cond.wait(poll_s)
            except BaseException:
                self._waiting.remove(ticket)
                self._cond.notify_all()
                raise
            self._waiting.remove(ticket)
            self._running.append(ticket)
        try:
            yield ticket
        finally:
            with self._cond:
                self._running.remove(ticket)
                self._cond.notify_all()


_QUEUE: JobQueue | None = None
_QUEUE_LOCK = threading.Lock()


def job_queue() -> JobQueue:
    """The process's queue (created on first use from the environment), shared by every session."""
    global _QUEUE
    with _QUEUE_LOCK:
        if _QUEUE is None:
            _QUEUE = JobQueue()
        return _QUEUE
