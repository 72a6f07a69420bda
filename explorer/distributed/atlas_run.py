"""An atlas in a background thread, one per model per process, stoppable, with its progress in channels.

The app starts it ("Render the whole network") and every session polls the same job: `start_atlas_job` returns
the running job of a model's fingerprint instead of starting a second one. In this process the atlas runs one
block at a time, each block holding a slot of the server's job queue (`explorer.jobs`), so renders asked for by
other sessions take their turn between blocks. With ``$LAYER_EXPLORER_RAY`` set (a cluster address or ``auto``)
and Ray installed, the whole atlas is one `atlas(..., ray=...)` call on the cluster instead.

Stopping takes effect at the next progress report (a render step); every chunk already finished stays in the cache.
"""

from __future__ import annotations

import importlib.util
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from explorer import jobs
from explorer.cache import Cache
from explorer.distributed.atlas_job import atlas
from explorer.distributed.progress import ProgressInfo, RunProgress
from explorer.errors import msg
from explorer.featurevis import Preset
from explorer.models import LoadedModel
from explorer.runtime import ThreadJob

RAY_VAR = "LAYER_EXPLORER_RAY"


def ray_from_env() -> tuple[str | None, str]:
    """(Ray address or None, a short note on where an atlas runs) from ``$LAYER_EXPLORER_RAY``."""
    address = os.environ.get(RAY_VAR, "").strip()
    if not address:
        return None, msg(f"in this process (set {RAY_VAR} to a Ray address or auto to use a cluster)")
    if importlib.util.find_spec("ray") is None:
        return None, msg(
            f"in this process: {RAY_VAR} is set but Ray is not installed (pip install -r requirements-ray.txt)"
        )
    return address, msg(f"on Ray ({address})")


class _Stopped(Exception):
    """Raised from the progress callback to end the atlas at its next step."""


@dataclass(frozen=True)
class AtlasSnapshot:
    """Where a job stands: state (running, done, stopped, failed), channels done of total, the block at work."""

    state: str
    done: int
    total: int
    layer: str
    seconds: float
    error: BaseException | None
    stop_requested: bool

    @property
    def finished(self) -> bool:
        return self.state != "running"


class AtlasJob(ThreadJob):
    """`atlas` over `layers` (block, channels) with `preset` and `seed`, in a daemon thread; see the module doc."""

    def __init__(
        self,
        model: LoadedModel,
        layers: Sequence[tuple[str, int]],
        preset: Preset,
        seed: int = 0,
        *,
        ray: str | None = None,
        cache: Cache | None = None,
    ) -> None:
        self.model: LoadedModel | None = model
        self.fingerprint = model.fingerprint
        self.layers = [(name, int(n)) for name, n in layers]
        self.preset, self.seed, self.ray = preset, int(seed), ray
        self.cache = cache
        self.total = sum(n for _, n in self.layers)
        self._done, self._layer = 0, ""
        super().__init__(f"atlas-{self.fingerprint[:12]}")

    @property
    def running(self) -> bool:
        with self._lock:
            return self._state == "running"

    def snapshot(self) -> AtlasSnapshot:
        with self._lock:
            return AtlasSnapshot(
                self._state, self._done, self.total, self._layer, self._elapsed(), self._error, self._stop.is_set()
            )

    def _reporter(self, before: int, wanted: int) -> RunProgress:
        """A RunProgress turning (work units over the misses) into channels done over the whole job."""
        steps = max(1, self.preset.steps)

        def report(done: int, total: int, info: ProgressInfo) -> None:
            if self._stop.is_set():
                raise _Stopped
            missing = total // steps
            with self._lock:
                self._done = before + (wanted - missing) + done // steps
                self._layer = info.channel or self._layer

        return report

    def _run(self) -> None:
        state = "failed"
        model = self.model
        try:
            if model is None:
                raise RuntimeError("An atlas job runs once.")
            if self.ray is not None:
                atlas(
                    model, layers=[n for n, _ in self.layers], preset=self.preset, seed=self.seed,
                    cache=self.cache, ray=self.ray, progress=self._reporter(0, self.total),
                )  # fmt: skip
            else:
                self._run_here(model)
            state = "done"
            with self._lock:
                self._done = self.total
        except (_Stopped, jobs.QueueError) as exc:
            state = "stopped" if self._stop.is_set() else "failed"
            if state == "failed":
                with self._lock:
                    self._error = exc
        except BaseException as exc:  # reported to the page, which shows one message
            with self._lock:
                self._error = exc
        finally:
            self.model = None  # the shared model is not kept alive by a finished job
            self.finish(state)

    def _run_here(self, model: LoadedModel) -> None:
        """One block at a time, each in a slot of the job queue (other sessions' renders go in between)."""
        before = 0
        queue = jobs.job_queue()
        for name, n in self.layers:
            with self._lock:
                self._layer = name
            with queue.slot(f"atlas:{self.fingerprint[:12]}", "atlas", should_stop=self._stop.is_set):
                atlas(
                    model, layers=[name], preset=self.preset, seed=self.seed, cache=self.cache,
                    ray=None, progress=self._reporter(before, n),
                )  # fmt: skip
            before += n
            with self._lock:
                self._done = before
            if self._stop.is_set():
                raise _Stopped


_JOBS: dict[str, AtlasJob] = {}
_JOBS_LOCK = threading.Lock()


def atlas_job_of(model: LoadedModel) -> AtlasJob | None:
    """The last atlas job started in this process for this model (running or finished), if any."""
    with _JOBS_LOCK:
        return _JOBS.get(model.fingerprint)


def start_atlas_job(
    model: LoadedModel,
    layers: Sequence[tuple[str, int]],
    preset: Preset,
    seed: int = 0,
    *,
    ray: str | None = None,
    cache: Cache | None = None,
) -> tuple[AtlasJob, bool]:
    """Start an atlas of `model` unless one runs already: (the job, whether this call started it)."""
    with _JOBS_LOCK:
        job = _JOBS.get(model.fingerprint)
        if job is not None and job.running:
            return job, False
        job = AtlasJob(model, layers, preset, seed, ray=ray, cache=cache).start()
        _JOBS[model.fingerprint] = job
        return job, True
