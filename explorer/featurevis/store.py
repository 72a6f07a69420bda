"""Renders through the content-addressed cache: look up what was rendered before, render only what is missing.

An image's key is everything that determines its pixels: the model's weights (fingerprint), the objective's key
(layer, unit, kind), the preset's parameters, the seed, the image's occurrence among equal objectives, the
group size for coupled objectives (diversity), the numeric precision (bf16 on CUDA, fp32 elsewhere) and the
engine version. Because an image never depends on its batch, filling in only the misses gives the same pixels
as rendering everything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from explorer.cache import Cache, Entry, make_key, png_bytes
from explorer.featurevis.objectives import Objective
from explorer.featurevis.presets import Preset, get_preset
from explorer.featurevis.render import Preview, Progress, RenderResult, groups_of, image_keys, render
from explorer.models import LoadedModel

ENGINE_VERSION = 1
KIND = "featurevis"


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
    missing = [i for i, e in enumerate(entries) if e is None]
    # Coupled images (diversity groups) are rendered together, so a group with any miss is rendered whole.
    for g in groups_of(objs):
        if any(i in missing for i in g):
            missing.extend(i for i in g if i not in missing)
    missing.sort()
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
