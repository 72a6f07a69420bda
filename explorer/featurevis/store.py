"""Renders through the content-addressed cache: look up what was rendered before, render only what is missing.

An image's key is everything that determines its pixels: the model's weights (fingerprint), the objective's key
(layer, unit, kind), the preset's parameters, the seed, the image's occurrence among equal objectives, the
group size for coupled objectives (diversity), the numeric precision (bf16 on CUDA, fp32 elsewhere) and the
engine version. Because an image never depends on its batch, filling in only the misses gives the same pixels
as rendering everything.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from explorer.cache import Cache, Entry, make_key, png_bytes
from explorer.featurevis.objectives import Objective
from explorer.featurevis.presets import Preset, get_preset
from explorer.featurevis.render import Preview, RenderResult, groups_of, image_keys, pack_groups, render
from explorer.models import LoadedModel
from explorer.runtime import Progress

ENGINE_VERSION = 1
KIND = "featurevis"
STORE_BATCH_CPU = 8  # images stored (and shown) together on CPU; a Stop keeps every finished batch


@dataclass
class CachedRender:
    """Images (all of them, cached or new), their PNG bytes as stored, curves, and which were hits."""

    images: np.ndarray  # (N, H, W, 3) uint8
    png: list[bytes]
    curves: list[np.ndarray]  # per image (steps,), as recorded when it was rendered
    hits: np.ndarray  # (N,) bool: served from the cache
    keys: list[str]
    params: dict

    @property
    def final(self) -> np.ndarray:
        return np.array([c[-1] if len(c) else np.nan for c in self.curves], dtype=np.float32)


def _precision(model: LoadedModel) -> str:
    return "bf16" if model.device.type == "cuda" else "fp32"


def cache_keys(model: LoadedModel, objectives: Sequence[Objective], preset: Preset, seed: int) -> list[str]:
    """The cache key of each objective's image (see the module docstring for what goes in)."""
    sizes = {i: len(g) for g in groups_of(objectives) for i in g}
    params = preset.cache_params()
    return [
        make_key(
            engine=ENGINE_VERSION,
            model=model.fingerprint,
            objective=obj.key,
            layers=list(obj.layers),
            image=ikey,
            group=sizes[i] if obj.coupled else 1,
            preset=params,
            seed=int(seed),
            precision=_precision(model),
        )
        for i, (obj, ikey) in enumerate(zip(objectives, image_keys(objectives), strict=True))
    ]


def render_key(model: LoadedModel, objectives: Sequence[Objective], preset: Preset, seed: int) -> tuple[str, ...]:
    """What identifies a batch of renders across sessions: the cache keys of its images, in order. Two sessions
    asking for the same key want the same pixels, so one render can serve both (`explorer.jobs.SingleFlight`)."""
    return (KIND, *cache_keys(model, objectives, preset, seed))


def lookup(
    model: LoadedModel,
    objectives: Sequence[Objective],
    preset: str | Preset = "classic",
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    cache: Cache | None = None,
) -> list[Entry | None]:
    """The cached entry of each objective's image, or None where it was never rendered (or is damaged)."""
    cache = cache or Cache()
    p = get_preset(preset, steps=steps, size=size)
    return [cache.get(KIND, k) for k in cache_keys(model, objectives, p, seed)]


def render_cached(
    model: LoadedModel,
    objectives: Objective | Sequence[Objective],
    preset: str | Preset = "classic",
    seed: int = 0,
    steps: int | None = None,
    size: int | None = None,
    progress: Progress | None = None,
    batch_size: int | None = None,
    cache: Cache | None = None,
) -> CachedRender:
    """`render` that serves hits from the cache and renders (then stores) only the misses.

    Previews passed to `progress` carry indices into `objectives` (not into the misses).
    """
    objs = [objectives] if isinstance(objectives, Objective) else list(objectives)
    cache = cache or Cache()
    p = get_preset(preset, steps=steps, size=size)
    keys = cache_keys(model, objs, p, seed)
    entries = [cache.get(KIND, k) for k in keys]
    missing = whole_groups(objs, [i for i, e in enumerate(entries) if e is None])
    result: RenderResult | None = None
    if missing:

        def relay(done: int, total: int, preview: Preview | None) -> None:
            if progress is None:
                return
            if preview is not None:
                preview = Preview(preview.images, [missing[j] for j in preview.indices], preview.step, preview.steps)
            progress(done, total, preview)

        result = render(
            model, [objs[i] for i in missing], p, seed=seed, progress=relay if progress else None,
            batch_size=batch_size,
        )  # fmt: skip
        for j, i in enumerate(missing):
            meta = {
                "objective": objs[i].key,
                "label": objs[i].label,
                "model": model.fingerprint,
                "spec": model.spec,
                "seed": int(seed),
                "preset": p.name,
                "curve": [round(float(v), 5) for v in result.curves[j]],
            }
            data = png_bytes(result.images[j])
            with contextlib.suppress(OSError):  # an unwritable cache still returns the images
                cache.put(KIND, keys[i], data, meta)
            entries[i] = Entry(key=keys[i], data=data, meta=meta, path=cache.paths(KIND, keys[i])[0])
    elif progress is not None:
        progress(1, 1, None)
    done = [e for e in entries if e is not None]
    images = np.stack([e.image() for e in done])
    curves = [np.asarray(e.meta.get("curve", []), dtype=np.float32) for e in done]
    hits = np.array([i not in missing for i in range(len(objs))], dtype=bool)
    params = {"preset": p.name, "seed": int(seed), **p.cache_params()}
    return CachedRender(images, [e.data for e in done], curves, hits, keys, params)


# --------------------------------------------------------------------------- planning a progressive render


def whole_groups(objectives: Sequence[Objective], missing: Sequence[int]) -> list[int]:
    """`missing` widened to whole groups: coupled images (diversity) are rendered together, so a group with any
    missing image is rendered again whole. Sorted indices into `objectives`."""
    out = set(missing)
    for g in groups_of(objectives):
        if out.intersection(g):
            out.update(g)
    return sorted(out)


def store_batches(model: LoadedModel, objectives: Sequence[Objective]) -> list[list[int]]:
    """Indices in batches each stored (and shown) only once complete: everything at once on CUDA, up to
    STORE_BATCH_CPU images on CPU (the render splits a batch into its own compute batches); groups never split."""
    size = len(objectives) if model.device.type == "cuda" else min(len(objectives), STORE_BATCH_CPU)
    return pack_groups(groups_of(objectives), max(1, size))


class HitMemo:
    """Cache hits read recently, with their pixels, served again without reading, verifying and decoding the files.

    A warm page shows the same images on every run, and every run of every session read each one's two files,
    checked its record and checksum, decoded the PNG to verify it, then decoded it again to show it. Here a hit is
    trusted again while its payload file keeps its size and modification time (one `stat`), for `reverify_s` at
    most: then it is read through `Cache.get` once more, which verifies it and marks it used for the cache's
    eviction. Bounded by the bytes it holds (least recently used dropped first); thread-safe (sessions are threads).
    """

    def __init__(self, max_bytes: int = 64 * 2**20, reverify_s: float = 60.0) -> None:
        self.max_bytes, self.reverify_s = max_bytes, reverify_s
        self._items: dict[tuple[str, str], tuple[tuple[int, int], float, Entry, np.ndarray]] = {}  # recency order
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._items)

    def get(self, cache: Cache, key: str) -> tuple[Entry, np.ndarray] | None:
        """The featurevis entry of `key` in `cache` and its decoded pixels, or None where it is missing or damaged."""
        path = cache.paths(KIND, key)[0]
        memo = (str(cache.root), key)
        try:
            st = os.stat(path)
        except OSError:
            self._drop(memo)
            return None
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            item = self._items.pop(memo, None)
            if item is not None and item[0] == stamp and time.monotonic() - item[1] < self.reverify_s:
                self._items[memo] = item
                self.hits += 1
                return item[2], item[3]
            if item is not None:
                self._bytes -= len(item[2].data) + item[3].nbytes
        entry = cache.get(KIND, key)
        if entry is None:
            return None
        pixels = entry.image()
        pixels.flags.writeable = False  # shared by every session that shows it
        size = len(entry.data) + pixels.nbytes
        with self._lock:
            self.misses += 1
            if memo not in self._items and size <= self.max_bytes:
                self._items[memo] = (stamp, time.monotonic(), entry, pixels)
                self._bytes += size
                while self._bytes > self.max_bytes:
                    _, _, old, old_pixels = self._items.pop(next(iter(self._items)))
                    self._bytes -= len(old.data) + old_pixels.nbytes
        return entry, pixels

    def _drop(self, memo: tuple[str, str]) -> None:
        with self._lock:
            item = self._items.pop(memo, None)
            if item is not None:
                self._bytes -= len(item[2].data) + item[3].nbytes


_HITS = HitMemo()


@dataclass
class RenderPlan:
    """What a progressive render has to do: the cached entries it can show at once, and the batches to render."""

    hits: dict[int, Entry]  # objective index → its intact cached image
    todo: list[tuple[list[int], int]]  # (batch of objective indices, images it will render), in order
    pixels: dict[int, np.ndarray] = field(default_factory=dict)  # objective index → its hit decoded (read-only)

    @property
    def renders(self) -> int:
        """Images the batches will render (hits inside a re-rendered group count again)."""
        return sum(n for _, n in self.todo)

    @property
    def complete(self) -> bool:
        return not self.todo


def plan_render(
    model: LoadedModel,
    objectives: Sequence[Objective],
    preset: Preset,
    seed: int,
    *,
    batches: Sequence[Sequence[int]] | None = None,
    cache: Cache | None = None,
) -> RenderPlan:
    """Look every objective up in the cache and group the misses into store batches (see `store_batches`).

    Hits come with their pixels decoded, through the process's `HitMemo` (a warm page reads no file again)."""
    cache = cache or Cache()
    plan = RenderPlan({}, [])
    for batch in [list(b) for b in batches] if batches is not None else store_batches(model, objectives):
        objs = [objectives[i] for i in batch]
        found = [_HITS.get(cache, k) for k in cache_keys(model, objs, preset, seed)]
        missing = set(whole_groups(objs, [j for j, e in enumerate(found) if e is None]))
        for j, (i, hit) in enumerate(zip(batch, found, strict=True)):
            if hit is not None and j not in missing:
                plan.hits[i], plan.pixels[i] = hit
        if missing:
            plan.todo.append((batch, len(missing)))
    return plan


def cached_mask(
    model: LoadedModel, objectives: Sequence[Objective], preset: Preset, seed: int, cache: Cache | None = None
) -> list[bool]:
    """Whether each objective's image is in the cache (a cheap existence check: no file is read or verified)."""
    cache = cache or Cache()
    return [cache.paths(KIND, k)[0].exists() for k in cache_keys(model, objectives, preset, seed)]
