"""`atlas`: fill the cache with feature visualizations of a whole network, in this process or on a Ray cluster."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from explorer.cache import Cache
from explorer.distributed.atlas_tasks import CPU_CHUNK, AtlasPlan, plan_atlas
from explorer.distributed.errors import DistributedError
from explorer.distributed.pool import MapResult, Pool, run_local
from explorer.distributed.progress import RunProgress
from explorer.distributed.tasks import Task
from explorer.featurevis import Preset
from explorer.featurevis.store import KIND
from explorer.models import LoadedModel, load_model


@dataclass
class AtlasReport:
    """What an atlas run did: per layer the units wanted, found cached and rendered; tasks run; reruns; workers."""

    plan: AtlasPlan
    cache_root: Path
    executed: int = 0
    retries: int = 0
    seconds: float = 0.0
    workers: list[str] = field(default_factory=list)
    chunks: dict[str, int] = field(default_factory=dict)
    busy_seconds: float = 0.0  # time workers spent inside tasks (see MapResult)

    @property
    def rows(self) -> list[dict[str, Any]]:
        """One row per layer: layer, units, cached (before this run), rendered (by this run)."""
        return [
            {"layer": layer, "units": len(units), "cached": len(units) - len(self.plan.missing[layer]),
             "rendered": len(self.plan.missing[layer])}
            for layer, units in self.plan.units.items()
        ]  # fmt: skip

    def images(self, layer: str) -> np.ndarray:
        """The layer's images from the cache, in unit order: (N, H, W, 3) uint8."""
        cache = Cache(self.cache_root)
        entries = [cache.get(KIND, k) for k in self.plan.keys[layer]]
        if any(e is None for e in entries):
            raise DistributedError(f"Some images of {layer} are no longer in the cache at {self.cache_root}.")
        return np.stack([e.image() for e in entries if e is not None])


def _storer(cache: Cache) -> Any:
    """The driver's `on_result`: write each returned entry into the cache (atomically), only if it was asked for."""

    def store(task: Task, value: dict[str, Any]) -> None:
        asked = set(task.args["keys"])
        for key, data, meta in value["entries"]:
            if key not in asked:
                raise DistributedError(f"A worker returned an image of {task.channel} that was not asked for.")
            try:
                cache.put(KIND, key, data, meta)
            except OSError as exc:
                raise DistributedError(f"Cannot write to the cache at {cache.root}: {exc.strerror or exc}.") from None

    return store


def atlas(
    model: str | LoadedModel,
    *,
    layers: Sequence[str] | None = None,
    per_layer: int | None = None,
    preset: str | Preset = "classic",
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    cache: Cache | None = None,
    ray: str | None = "auto",
    arch: str | None = None,
    device: str = "auto",
    workers: int | None = None,
    cpus_per_worker: int = 1,
    gpus_per_worker: float = 1.0,
    chunk: int | None = None,
    batch_size: int | None = None,
    progress: RunProgress | None = None,
    pool: Pool | None = None,
    runtime_env: dict[str, Any] | None = None,
) -> AtlasReport:
    """Render every channel (or the first `per_layer`) of every block with a spatial output into the cache.

    Only images missing from the cache are rendered, so a rerun (after a crash, or with more layers) does only the
    rest. `ray`: auto, local or a cluster address to spread (layer × channel chunk) tasks over Ray workers, one per
    GPU (see `Pool`); None renders here, one chunk after another. With Ray this process loads the model on its
    CPU only to list layers and compute keys; give a checkpoint path every node can read for a model that is not
    a named spec. `chunk`: channels per task (default 8 on CPU, by GPU memory on CUDA); `batch_size`: images per
    render batch inside a task (default by device); `pool`: a `Pool` to reuse (left open); `runtime_env`: Ray's,
    when joining a cluster whose nodes lack this project's code (e.g. ``{"working_dir": "."}``).
    """
    start = time.perf_counter()
    cache = cache or Cache()
    store = _storer(cache)
    settings: dict[str, Any] = {
        "layers": layers, "per_layer": per_layer, "preset": preset, "seed": seed, "steps": steps, "size": size,
    }  # fmt: skip
    if ray is None and pool is None:
        loaded = model if isinstance(model, LoadedModel) else _load(model, arch, None if device == "auto" else device)
        plan = plan_atlas(loaded, cache=cache, **settings)
        if chunk is None:  # CUDA renders a whole layer in one batch (halved on out-of-memory), as in-process today
            widest = max((len(u) for u in plan.units.values()), default=1)
            chunk = widest if loaded.device.type == "cuda" else CPU_CHUNK
        run = run_local(plan.tasks(chunk, batch_size), loaded, progress, store)
        return AtlasReport(
            plan, cache.root, run.executed, 0, time.perf_counter() - start, run.workers, {}, run.busy_seconds
        )
    loaded = model if isinstance(model, LoadedModel) else _load(model, arch, "cpu")
    own = pool is None
    active = pool or Pool(
        loaded, ray or "auto", device=device, workers=workers, cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker, runtime_env=runtime_env,
    )  # fmt: skip
    try:
        plan = plan_atlas(loaded, cache=cache, device=active.device, **settings)
        run, chunks = MapResult([]), {}
        if plan.to_render:
            chunks = _chunks(active, plan, chunk)
            run = active.map(plan.tasks(chunks, batch_size), progress=progress, on_result=store)
    finally:
        if own:
            active.close()
    return AtlasReport(
        plan, cache.root, run.executed, run.retries, time.perf_counter() - start, run.workers, chunks, run.busy_seconds
    )


def _load(spec: str, arch: str | None, device: str | None) -> LoadedModel:
    return load_model(spec, arch=arch, device=device)


def _chunks(pool: Pool, plan: AtlasPlan, chunk: int | None) -> dict[str, int]:
    """Channels per task for each layer: `chunk` if given, CPU_CHUNK on CPU workers, else measured by a worker."""
    layers = [name for name, todo in plan.missing.items() if todo]
    if chunk is not None or pool.device != "cuda":
        return dict.fromkeys(layers, chunk or CPU_CHUNK)
    args = {"layers": layers, "channels": {n: len(plan.units[n]) for n in layers}, "preset": plan.preset,
            "share": pool.shape.num_gpus}  # fmt: skip
    return pool.map([Task("atlas.probe", args, channel="probe", cost=len(layers))]).results[0]["chunks"]
