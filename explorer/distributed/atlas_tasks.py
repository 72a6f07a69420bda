"""The atlas as tasks: every channel (or the first K) of every block with a spatial output, in (layer × chunk) tasks.

Where results land: workers do not write to the cache. Each worker renders its chunk with `render_cached` into a
scratch cache of its own, then sends the entries (PNG bytes and the metadata `render_cached` wrote) back to the
driver, which alone writes them into the real cache with `Cache.put` (temporary file, then rename, payload before
the JSON that vouches for it). So nodes need no shared disk, a worker killed mid-task leaves nothing behind, and
every stored entry is byte-for-byte what a serial `render_cached` would have stored.

Idempotent: before anything is scheduled the driver looks every wanted image up in the cache and plans tasks for
the misses only; a second run plans none. Cache keys include the numeric precision (bf16 on CUDA), so the driver
computes them for the workers' device, and each worker checks that its own keys match before rendering.
"""

from __future__ import annotations

import dataclasses
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from explorer.cache import Cache
from explorer.distributed.errors import DistributedError
from explorer.distributed.tasks import Task, TaskReport
from explorer.featurevis import Preset, channel, get_preset, render, render_cached, stage_map
from explorer.featurevis.store import KIND, cache_keys
from explorer.layers import ladder, to_nchw
from explorer.models import LoadedModel

CPU_CHUNK = 8  # channels per task on a CPU worker: short tasks, so a lost worker costs little
CUDA_MAX_CHUNK = 256  # beyond this a bigger batch hardly runs faster per image
CUDA_MEMORY_SHARE = 0.6  # of the free GPU memory (times the worker's share of its GPU) a task's batch may use


def atlas_layers(model: LoadedModel, layers: Sequence[str] | None = None) -> list[tuple[str, int]]:
    """(block, channels) for every block with a spatial output, in execution order, or for `layers` (checked).

    The blocks are those the Progression page maps to stages (`stage_map`), so the atlas covers what the app shows.
    """
    rows = {r.name: r for r in ladder(model, "blocks")}
    blocks = list(dict.fromkeys(b for s in stage_map(model).stages for b in s.blocks))
    if layers:
        unknown = [name for name in layers if name not in blocks]
        if unknown:
            raise DistributedError(
                f"{unknown[0]} is not a block with a spatial output; see `python -m explorer layers`."
            )
        blocks = list(dict.fromkeys(layers))
    return [(name, int(to_nchw(torch.zeros(1, *rows[name].out_shape)).shape[1])) for name in blocks]


@dataclass
class AtlasPlan:
    """The images an atlas wants, layer by layer, their cache keys, and which of them the cache lacks."""

    preset: Preset
    seed: int
    device: str  # the device type the keys were computed for (the workers')
    units: dict[str, list[int]]
    keys: dict[str, list[str]]
    missing: dict[str, list[int]]

    @property
    def wanted(self) -> int:
        return sum(len(u) for u in self.units.values())

    @property
    def to_render(self) -> int:
        return sum(len(u) for u in self.missing.values())

    def tasks(self, chunk: int | Mapping[str, int], batch_size: int | None = None) -> list[Task]:
        """(layer × channel chunk) render tasks for the misses, deepest layers first (the longest tasks start first)."""
        out = []
        for layer in reversed(list(self.units)):
            size = max(1, int(chunk if isinstance(chunk, int) else chunk.get(layer, CPU_CHUNK)))
            key_of = dict(zip(self.units[layer], self.keys[layer], strict=True))
            todo = self.missing[layer]
            for i in range(0, len(todo), size):
                units = todo[i : i + size]
                args = {"layer": layer, "units": units, "keys": [key_of[u] for u in units], "preset": self.preset,
                        "seed": self.seed, "batch_size": batch_size}  # fmt: skip
                out.append(Task("atlas.render", args, channel=layer, cost=len(units) * self.preset.steps))
        return out


def plan_atlas(
    model: LoadedModel,
    *,
    layers: Sequence[str] | None = None,
    per_layer: int | None = None,
    preset: str | Preset = "classic",
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    cache: Cache | None = None,
    device: str | None = None,
) -> AtlasPlan:
    """Which images the atlas wants (all channels, or the first `per_layer` of each block) and which are missing.

    `device` is the device type that will render (cpu, cuda): it decides the precision part of each cache key.
    """
    if per_layer is not None and per_layer < 1:
        raise DistributedError("Units per layer must be at least 1.")
    cache = cache or Cache()
    p = get_preset(preset, steps=steps, size=size)
    dev = device or model.device.type
    keyed = model if dev == model.device.type else dataclasses.replace(model, device=torch.device(dev))
    units, keys, missing = {}, {}, {}
    for name, n in atlas_layers(model, layers):
        units[name] = list(range(n if per_layer is None else min(per_layer, n)))
        keys[name] = cache_keys(keyed, [channel(name, u) for u in units[name]], p, seed)
        missing[name] = [u for u, k in zip(units[name], keys[name], strict=True) if cache.get(KIND, k) is None]
    return AtlasPlan(p, int(seed), dev, units, keys, missing)


def render_task(model: LoadedModel, args: dict[str, Any], report: TaskReport) -> dict[str, Any]:
    """Render one chunk of channels of one layer; returns the cache entries as (key, PNG bytes, metadata)."""
    layer, units, preset, seed = args["layer"], list(args["units"]), args["preset"], int(args["seed"])
    objectives = [channel(layer, u) for u in units]
    keys = cache_keys(model, objectives, preset, seed)
    if keys != list(args["keys"]):
        raise DistributedError(
            f"A worker computes other cache keys for {layer} than the driver: its weights or precision differ "
            f"(the same model on every node, one device type per run)."
        )
    scratch = Cache(tempfile.mkdtemp(prefix="layer-explorer-worker-"))
    try:
        render_cached(
            model, objectives, preset, seed=seed, progress=lambda d, t, _p: report(d, t),
            batch_size=args.get("batch_size"), cache=scratch,
        )  # fmt: skip
        entries = [scratch.get(KIND, k) for k in keys]
        if any(e is None for e in entries):
            raise DistributedError(f"A worker could not write its scratch files in {scratch.root.parent}.")
        return {"layer": layer, "units": units, "entries": [(e.key, e.data, e.meta) for e in entries if e]}
    finally:
        shutil.rmtree(scratch.root, ignore_errors=True)


def probe_task(model: LoadedModel, args: dict[str, Any], report: TaskReport) -> dict[str, Any]:
    """Channels per task for each layer: CPU_CHUNK on a CPU; on CUDA as many as fit the worker's share of memory.

    On CUDA it renders one step of 1 and of 3 images per layer and takes the difference of the peaks as the memory
    one more image costs (model copies and workspace cancel out).
    """
    layers: list[str] = list(args["layers"])
    if model.device.type != "cuda":
        return {"chunks": dict.fromkeys(layers, CPU_CHUNK)}
    preset: Preset = args["preset"].replace(steps=1)
    share = float(args.get("share", 1.0))
    dev = model.device
    chunks = {}
    for i, layer in enumerate(layers):
        n_channels = int(args["channels"][layer])
        peaks = []
        for n in (1, 3):
            torch.cuda.synchronize(dev)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(dev)
            base = torch.cuda.memory_allocated(dev)
            render(model, [channel(layer, u % n_channels) for u in range(n)], preset, seed=0, batch_size=n)
            peaks.append(torch.cuda.max_memory_allocated(dev) - base)
        per_image = max((peaks[1] - peaks[0]) / 2, 1 << 20)
        free = torch.cuda.mem_get_info(dev)[0]
        chunks[layer] = int(min(max(CUDA_MEMORY_SHARE * share * free // per_image, 1), CUDA_MAX_CHUNK))
        report(i + 1, len(layers))
    return {"chunks": chunks}
