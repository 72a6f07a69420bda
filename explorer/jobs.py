"""Fair sharing of one server's compute: heavy jobs take turns, first come first served, at most one per session;
and the same work asked for by several sessions at once is done once.

A class on one server means many sessions asking for renders, attributions, scans and fine-tunes at once. Running
them all together makes every one slow and every page switch sluggish (the CPU is oversubscribed). So heavy work
asks for a *slot* (`JobQueue`): at most ``LAYER_EXPLORER_WORKERS`` jobs run at once (default: 1 per 4 CPU cores, at
least 1), the others wait in order of arrival and are told their position ("2 jobs ahead of yours"), and one
session holds at most ``LAYER_EXPLORER_JOBS_PER_SESSION`` slots (default 1) — its later requests wait behind its
own. Light work (page switches, cached images) never asks for a slot, so it never waits.

A class also asks for the *same* work at once: thirty students opening the same link want the same renders. Work
keyed by what it computes goes through `SingleFlight`: the first caller of a key runs it (taking its slot in the
queue), and callers of that key meanwhile watch that run (its progress, its previews) and get its result, without
a slot of their own. Nobody waits for a flight while holding a slot, so the two cannot deadlock.

No Streamlit here: the app passes callbacks that draw the waiting message and the progress.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Generic, TypeVar, cast

from explorer.errors import ExplorerError

T = TypeVar("T")
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


# --------------------------------------------------------------------------- the same work asked for twice


class Flight(Generic[T]):
    """One piece of work being done for the caller that asked first, watched by those that asked since.

    The leader's work reports its progress here (`report`, and `ahead` while it waits for a slot); watchers read
    `done_steps` / `total_steps`, the latest `preview` and `ahead`, and get `result` once `finished`."""

    def __init__(self, key: Hashable) -> None:
        self.key = key
        self.result: T | None = None
        self.failed = False
        self.done_steps = 0
        self.total_steps = 0
        self.preview: Any = None
        self.ahead: int | None = None  # jobs ahead of the leader in the queue while it waits; None once it runs
        self.watchers = 0
        self._finished = threading.Event()

    @property
    def finished(self) -> bool:
        return self._finished.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the work ended (done or failed), at most `timeout_s`; whether it ended."""
        return self._finished.wait(timeout_s)

    def queued(self, ahead: int) -> None:
        """The leader waits for a slot in the job queue, `ahead` jobs before it."""
        self.ahead = ahead

    def report(self, done: int, total: int, preview: Any = None) -> None:
        """The leader's progress: `done` of `total` steps, and a preview to show (kept until the next one)."""
        self.done_steps, self.total_steps, self.ahead = done, total, None
        if preview is not None:
            self.preview = preview


class SingleFlight:
    """Work keyed by what it computes, done once for concurrent callers (as Go's ``singleflight``).

    `run(key, work)`: the first caller of `key` runs `work(flight)`; callers of the same key while it runs watch
    that flight and get its result. A leader that fails, or is interrupted (a page rerun stops its script), hands the
    key on: its watchers try again, one of them running the work. Results are not kept once the flight ends (the
    caller keeps them: the disk cache, for renders). Thread-safe; one instance is shared by every session."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[Hashable, Flight[Any]] = {}

    def __len__(self) -> int:
        with self._lock:
            return len(self._flights)

    def watching(self, key: Hashable) -> Flight[Any] | None:
        """The flight of `key` if one is running."""
        with self._lock:
            return self._flights.get(key)

    def snapshot(self) -> dict[Hashable, int]:
        """The keys in flight, each with the number of callers watching it."""
        with self._lock:
            return {key: flight.watchers for key, flight in self._flights.items()}

    def run(
        self,
        key: Hashable,
        work: Callable[[Flight[T]], T],
        *,
        on_wait: Callable[[Flight[T]], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        poll_s: float = 0.25,
    ) -> tuple[T, bool]:
        """(result, led): the result of `work` for `key`, run here (led) or by the caller that asked first.

        A watcher calls `on_wait(flight)` at once and every `poll_s` while it waits; `should_stop()` True gives up
        with a QueueError (the flight goes on for the others). The leader's exception is its own: it is raised
        to the leader, and its watchers try again."""
        while True:
            with self._lock:
                flight = self._flights.get(key)
                lead = flight is None
                if flight is None:
                    flight = self._flights[key] = Flight(key)
                else:
                    flight.watchers += 1
            if lead:
                return self._lead(flight, work), True
            try:
                if on_wait is not None:
                    on_wait(flight)
                while not flight.wait(poll_s):
                    if on_wait is not None:
                        on_wait(flight)
                    if should_stop is not None and should_stop():
                        raise QueueError("Cancelled while waiting for the same work started by another session.")
            finally:
                with self._lock:
                    flight.watchers -= 1
            if not flight.failed:
                return cast(T, flight.result), False  # set by a leader that succeeded

    def _lead(self, flight: Flight[T], work: Callable[[Flight[T]], T]) -> T:
        try:
            result = flight.result = work(flight)
        except BaseException:
            flight.failed = True
            raise
        finally:
            with self._lock:
                del self._flights[flight.key]
            flight._finished.set()
        return result


_FLIGHTS = SingleFlight()


def shared_work() -> SingleFlight:
    """The process's single-flight registry, shared by every session (renders are keyed by their cache keys)."""
    return _FLIGHTS
