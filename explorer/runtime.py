"""What every engine shares about running work: progress reports, stop signals, and the device rules.

- :class:`Progress`: the one callback every long computation takes, ``progress(done, total, info)``. ``done`` and
  ``total`` count the engine's own unit of work (optimisation steps × images, training steps, batches); ``info``
  is a dict describing the latest step (its ``"phase"`` says which kind) or an engine-specific preview object, or
  None when there is nothing to add.
- :data:`StopSignal` / :func:`stop_requested`: a callable returning True, or anything with ``is_set()`` (a
  ``threading.Event``), checked between steps.
- :func:`atomic_write`: the one way files are written: a temporary file in the same folder renamed over the
  target, so a reader sees the old file or the new one, never half of one.
- :func:`torch_threads`: torch's CPU thread count set for a block and restored after it.
- :func:`autocast` and :func:`to_input`: bf16 autocast and channels-last input on CUDA, nothing elsewhere; the
  feature-visualization renderer adds its own CPU bf16 rule on top (see :mod:`explorer.featurevis.render`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, Self

import torch


class Progress(Protocol):
    """``progress(done, total, info)``: `done` of `total` units of work finished; `info` describes the latest."""

    def __call__(self, done: int, total: int, info: Any, /) -> None: ...


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with `n` torch CPU threads (at least 1), then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


StopSignal = Callable[[], bool] | Any  # a callable returning True to stop, or anything with is_set() (an Event)


def stop_requested(signal: StopSignal | None) -> Callable[[], bool]:
    """A no-argument check for `signal` (None: never stop)."""
    if signal is None:
        return lambda: False
    check: Callable[[], bool] = signal.is_set if hasattr(signal, "is_set") else signal  # an Event, or a callable
    return check


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA (tensor cores), plain fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_input(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch moved to `device`; channels-last on CUDA, where convolutions run faster in that layout."""
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cuda" and x.dim() == 4 else x


class ThreadJob:
    """Long work in a daemon thread that a page polls: a stop signal, a lock over the state the thread reports, its
    final state ('running' until `finish`) and its time. A subclass implements `_run` and ends it with `finish`."""

    def __init__(self, thread_name: str) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._state = "running"
        self._error: BaseException | None = None
        self._started = time.monotonic()
        self._seconds = 0.0
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> Self:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Ask the work to stop at its next step."""
        self._stop.set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the thread; True when it has finished."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _elapsed(self) -> float:
        """Seconds so far, or the run's total once it ended (call under the lock)."""
        return time.monotonic() - self._started if self._state == "running" else self._seconds

    def finish(self, state: str) -> None:
        """Record how the work ended ('done', 'stopped', 'failed') and its time."""
        with self._lock:
            self._state = state
            self._seconds = time.monotonic() - self._started


def atomic_write(path: str | Path, data: bytes | str, *, durable: bool = False) -> None:
    """Write `data` to `path` through a temporary file in its folder renamed over it (creating the folder).

    Readers see the old file or the new one, never a part. `durable` also fsyncs the data before the rename (a
    checkpoint must survive a power cut; a cache entry can be rebuilt). A `str` is written as UTF-8. On any error the
    temporary file is removed and the error raised as it is; callers that speak to users translate it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # One writer per process and thread: the name says whose it is, so a cleaner can tell a dead writer's leftover
    # (explorer.transfer.training.checkpoints.remove_stale_temps) from a write in progress.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
