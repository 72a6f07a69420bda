"""The atlas in the app: what the render cache already holds for a model, and "Render the whole network".

- `cache_note`: one line under the settings saying how many units of the shown layer (and of the whole network)
  are in the cache with the page's settings; `atlas_offer`: whether the cache holds more of this layer with other
  settings (a preset at its own steps and size and seed 0, as `python -m explorer atlas` renders, or the last
  atlas job's), with a button to show those. Counting is an existence check of each unit's file in the cache, the
  paths computed once per model, layer and settings (`image_paths`); no image is read.
- `whole_network`: an expander that starts an atlas job (`explorer.distributed.atlas_run`) with the page's
  settings, in this process or on Ray (``$LAYER_EXPLORER_RAY``), and shows its progress, redrawn every second in
  a fragment, with a Stop button. One job per model per server: every session sees the running one.
"""

from __future__ import annotations

import itertools
import os
import threading
from typing import Any

import streamlit as st

from explorer.cache import Cache
from explorer.distributed.atlas_run import RAY_VAR, AtlasJob, atlas_job_of, ray_from_env, start_atlas_job
from explorer.featurevis import PRESETS, channel
from explorer.featurevis.store import KIND, cache_keys
from explorer.models import LoadedModel
from explorer.ui.errors import show_error
from explorer.ui.i18n import number, seconds, t
from explorer.ui.session import model_key
from explorer.ui.widgets.gallery import RenderSettings, use_settings
from explorer.ui.widgets.layers import channels_of, get_stage_map, renderable_layers

# --------------------------------------------------------------------------- what the cache holds


def network_layers(model: LoadedModel) -> list[tuple[str, int]]:
    """(block, units) of every block the atlas renders: the stage map's blocks, in execution order."""
    rows = renderable_layers(model)
    blocks = dict.fromkeys(b for s in get_stage_map(model).stages for b in s.blocks)
    return [(name, channels_of(rows[name])) for name in blocks if name in rows]


MAX_PATH_LISTS = 512  # (model, layer, settings) whose image paths are remembered: a few KB each
_PATHS: dict[tuple[Any, ...], tuple[str, ...]] = {}  # insertion order = recency
_PATHS_LOCK = threading.Lock()


def image_paths(model: LoadedModel, layer: str, units: int, settings: RenderSettings) -> tuple[str, ...]:
    """Where each unit's channel image of `layer` is (or would be) in the cache with `settings`.

    Computed once per model, layer, settings and cache folder and shared by every session: hashing the keys and
    building the paths, not the existence checks, was most of a count (the Layer and Unit pages count the whole
    network's units, about 1,600 for EfficientNet-Lite0, on every run)."""
    cache = Cache()
    memo = (model_key(model), layer, units, settings, str(cache.root))
    with _PATHS_LOCK:
        paths = _PATHS.pop(memo, None)
        if paths is not None:
            _PATHS[memo] = paths
            return paths
    objs = [channel(layer, u) for u in range(units)]
    keys = cache_keys(model, objs, settings.resolved(), settings.seed)
    paths = tuple(str(cache.paths(KIND, k)[0]) for k in keys)
    with _PATHS_LOCK:
        _PATHS[memo] = paths
        while len(_PATHS) > MAX_PATH_LISTS:
            del _PATHS[next(iter(_PATHS))]
    return paths


def cached_count(model: LoadedModel, layer: str, units: int, settings: RenderSettings) -> int:
    """Units of `layer` whose channel image is in the cache with `settings` (existence only: nothing is read)."""
    return sum(map(os.access, image_paths(model, layer, units, settings), itertools.repeat(os.F_OK)))  # C loop


def network_count(model: LoadedModel, settings: RenderSettings) -> tuple[int, int]:
    """(units in the cache with `settings`, units) over every block of the network."""
    layers = network_layers(model)
    return sum(cached_count(model, name, n, settings) for name, n in layers), sum(n for _, n in layers)


def job_settings(job: AtlasJob) -> RenderSettings:
    """The page settings an atlas job renders with."""
    base = PRESETS.get(job.preset.name)
    steps = None if base is not None and base.steps == job.preset.steps else job.preset.steps
    size = None if base is not None and base.size == job.preset.size else job.preset.size
    return RenderSettings(job.preset.name, job.seed, steps, size)


def other_settings(model: LoadedModel, settings: RenderSettings) -> list[RenderSettings]:
    """Settings an atlas may have used other than the page's: the last job's, then each preset's own at seed 0."""
    out: list[RenderSettings] = []
    job = atlas_job_of(model)
    if job is not None:
        out.append(job_settings(job))
    out += [RenderSettings(name, 0) for name in PRESETS]
    mine = (settings.resolved().cache_params(), settings.seed)
    unique = list(dict.fromkeys(out))
    return [s for s in unique if (s.resolved().cache_params(), s.seed) != mine]


def cache_note(model: LoadedModel, layer: str, units: int, settings: RenderSettings) -> None:
    """One line on how many units of `layer` and of the network the cache holds with the page's settings."""
    here = cached_count(model, layer, units, settings)
    if here:
        done, total = network_count(model, settings)
        note = t(
            "atlas.from_cache",
            here=number(here),
            units=number(units),
            layer=layer,
            settings=settings.describe(),
            done=number(done),
            total=number(total),
        )
        st.caption(f":material/inventory_2: {note}")


def atlas_offer(model: LoadedModel, layer: str, units: int, settings: RenderSettings) -> None:
    """When the cache holds more units of `layer` with other settings (an atlas's) than with the page's: one line
    saying so, and a button that switches the page to those settings."""
    here = cached_count(model, layer, units, settings)
    for other in other_settings(model, settings):
        found = cached_count(model, layer, units, other)
        if found > here:
            c = st.columns([4, 1], vertical_alignment="center")
            note = t(
                "atlas.offer",
                found=number(found),
                units=number(units),
                layer=layer,
                settings=other.describe(),
                here=number(here),
            )
            c[0].caption(f":material/inventory_2: {note}")
            c[1].button(
                t("atlas.offer.use"), key="atlas_use", on_click=use_settings, args=(other,), icon=":material/tune:"
            )
            return


# --------------------------------------------------------------------------- the whole network


def _progress(job: AtlasJob) -> None:
    snap = job.snapshot()
    frac = snap.done / snap.total if snap.total else 0.0
    text = t(
        "atlas.progress",
        settings=job_settings(job).describe(),
        done=number(snap.done),
        total=number(snap.total),
        layer=f" · {snap.layer}" if snap.layer else "",
        time=seconds(snap.seconds, 0),
    )
    st.progress(min(frac, 1.0), text=text)


def _live(fingerprint: str, model: LoadedModel) -> None:
    """Redrawn every second while the job runs; a full rerun shows the outcome (and the new counts) once it ended."""
    job = atlas_job_of(model)
    if job is None or job.fingerprint != fingerprint:
        return
    if job.snapshot().finished:
        st.rerun()
    _progress(job)
    if job.snapshot().stop_requested:
        st.info(t("atlas.stopping"), icon=":material/pause_circle:")
    else:
        st.button(t("atlas.stop"), key="atlas_stop", on_click=job.stop, icon=":material/stop_circle:",
                  help=t("atlas.stop.help"))  # fmt: skip


_live_fragment = st.fragment(run_every=1.0)(_live)


def _outcome(job: AtlasJob) -> None:
    snap = job.snapshot()
    what = t(
        "atlas.outcome.units",
        done=number(snap.done),
        total=number(snap.total),
        settings=job_settings(job).describe(),
    )
    if snap.state == "done":
        st.success(t("atlas.outcome.done", what=what, time=seconds(snap.seconds, 0)), icon=":material/check:")
    elif snap.state == "stopped":
        st.info(t("atlas.outcome.stopped", what=what), icon=":material/pause:")
    elif snap.error is not None:
        show_error(snap.error)


def _where(ray: str | None) -> str:
    """Where an atlas runs (`ray_from_env`'s note), in the session's language."""
    if ray is not None:
        return t("atlas.where.ray", address=ray)
    if os.environ.get(RAY_VAR, "").strip():  # set, but Ray is not installed
        return t("atlas.where.no_ray", var=RAY_VAR)
    return t("atlas.where.local", var=RAY_VAR)


def whole_network(model: LoadedModel, settings: RenderSettings) -> None:
    """The "Whole network" expander: start an atlas with the page's settings, or follow the one that runs."""
    job = atlas_job_of(model)
    running = job is not None and job.running
    with st.expander(t("atlas.title"), icon=":material/account_tree:", expanded=running):
        layers = network_layers(model)
        ray, _ = ray_from_env()
        total = sum(n for _, n in layers)
        done, _ = network_count(model, settings)
        st.caption(
            t(
                "atlas.caption",
                blocks=number(len(layers)),
                total=number(total),
                settings=settings.describe(),
                where=_where(ray),
                missing=number(total - done),
            )
        )
        if job is not None and not running:
            _outcome(job)
        whole = done == 0 or done == total
        label = t("atlas.start") if whole else t("atlas.start_missing", n=number(total - done))
        clicked = not running and st.button(
            label, key="atlas_start", icon=":material/play_arrow:",
            disabled=done == total or not layers,
        )  # fmt: skip
        if clicked:
            try:
                job, started = start_atlas_job(model, layers, settings.resolved(), settings.seed, ray=ray)
            except Exception as exc:
                show_error(exc)
                return
            running = True
            if not started:
                st.info(t("atlas.started_elsewhere"))
        if running and job is not None:
            _live_fragment(job.fingerprint, model)
