"""The atlas in the app: the Layer page's cache note, and "Render the whole network" (a fake, fast render)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from uiapp import app_on

import explorer.featurevis.store as store
import explorer.ui.widgets.atlas as atlas_widget
from explorer.distributed import atlas_run
from explorer.featurevis import RenderResult, channel, get_preset, render_cached

TINY = {"preset": "fast", "steps": "2", "size": "32"}
NETWORK = [("blocks.0.0", 16), ("blocks.1.0", 24)]  # the "whole network" of these tests: 40 units


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """An empty disk cache, no atlas job left from another test, a two-block network."""
    st.cache_data.clear()
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(atlas_run.RAY_VAR, raising=False)
    monkeypatch.setattr(atlas_run, "_JOBS", {})
    monkeypatch.setattr(atlas_widget, "network_layers", lambda model: list(NETWORK))


class FakeRender:
    """Replaces the optimisation: noise images; in the atlas thread it waits for `release` before the first batch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.release = threading.Event()
        self.release.set()
        self.atlas_calls: list[list[str]] = []
        self.page_calls: list[list[str]] = []
        monkeypatch.setattr(store, "render", self)

    def __call__(self, model, objectives, preset="classic", seed=0, steps=None, size=None, progress=None, **kw):
        in_atlas = threading.current_thread().name.startswith("atlas-")
        (self.atlas_calls if in_atlas else self.page_calls).append([o.key for o in objectives])
        if in_atlas:
            assert self.release.wait(60), "the test never released the atlas"
        p = get_preset(preset, steps=steps, size=size)
        n = len(objectives)
        rng = np.random.default_rng(len(self.atlas_calls) + len(self.page_calls))
        images = rng.integers(0, 256, size=(n, p.size, p.size, 3), dtype=np.uint8)
        if progress:
            progress(n * p.steps, n * p.steps, None)
        curves = np.tile(np.arange(1, p.steps + 1, dtype=np.float32), (n, 1))
        return RenderResult(images, curves, {"preset": p.name, "seed": seed}, list(objectives))


def _open(name: str, /, **query: str) -> AppTest:
    return app_on(name, timeout=180, **query).run()


def _ok(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def _note(at: AppTest) -> str:
    notes = [c.value for c in at.caption if "From the cache" in c.value]
    assert len(notes) <= 1, notes
    return notes[0] if notes else ""


def test_the_note_names_the_settings_and_counts_the_network_after_units_are_cached(monkeypatch):
    FakeRender(monkeypatch)
    at = _open("layer", layer="blocks.0.0", **TINY)
    _ok(at)
    note = _note(at)  # the page rendered its 16 units: now they are in the cache
    assert "16 of 16 units of blocks.0.0" in note
    assert "fast · 2 steps · 32 px · seed 0" in note
    assert "16 of 40 units of the whole network" in note
    at = _open("layer", layer="blocks.1.0", **{**TINY, "seed": "3"})  # other settings count on their own
    note = _note(at)
    assert "16 of 24 units of blocks.1.0 · fast · 2 steps · 32 px · seed 3" in note
    assert "16 of 40 units of the whole network" in note  # not the 16 of seed 0


def test_the_note_finds_units_an_atlas_rendered_with_other_settings_and_switches_to_them(monkeypatch, bundled):
    renders = FakeRender(monkeypatch)
    render_cached(bundled, [channel("blocks.1.0", u) for u in range(24)], "classic", seed=0)  # as the CLI atlas does
    at = _open("layer", layer="blocks.1.0", **TINY)
    _ok(at)
    offer = [c.value for c in at.caption if "The cache holds" in c.value]
    assert offer == [
        ":material/inventory_2: The cache holds 24 of 24 units of blocks.1.0 with classic · 512 steps · 128 px · "
        "seed 0 (an atlas, or earlier visits); 0 with this page's settings."
    ]
    assert "16 of 24 units of blocks.1.0 · fast · 2 steps · 32 px" in _note(at)  # what the page itself rendered
    before = len(renders.page_calls)
    at.button(key="atlas_use").click().run()
    _ok(at)
    assert at.query_params["preset"] == "classic" and "steps" not in at.query_params
    note = _note(at)
    assert "24 of 24 units of blocks.1.0 · classic · 512 steps · 128 px · seed 0" in note
    assert "24 of 40 units of the whole network" in note
    assert len(renders.page_calls) == before  # every tile came from the cache: nothing rendered
    assert not [c for c in at.caption if "The cache holds" in c.value]


def test_render_the_whole_network_runs_once_per_model_and_every_session_sees_it(monkeypatch):
    renders = FakeRender(monkeypatch)
    first = _open("layer", layer="blocks.0.0", **TINY)
    _ok(first)
    assert "16 of 40 units of the whole network" in _note(first)
    renders.release.clear()  # the atlas will wait in its first render until the second session has looked
    first.button(key="atlas_start").click().run()
    _ok(first)
    job = next(iter(atlas_run._JOBS.values()))
    assert job.running and job.total == 40
    assert any(p.proto.text.startswith("Atlas (fast · 2 steps · 32 px · seed 0)") for p in first.get("progress"))
    assert first.button(key="atlas_stop")
    second = _open("layer", layer="blocks.0.0", **TINY)  # another browser: its units are cached, nothing waits
    _ok(second)
    assert not [b for b in second.button if b.key == "atlas_start"]  # no second job can be started here
    assert second.button(key="atlas_stop") and any(
        "of 40 units" in p.proto.text for p in second.get("progress")
    )  # fmt: skip
    assert list(atlas_run._JOBS.values()) == [job]
    renders.release.set()
    assert job.join(timeout=60), "the atlas did not finish"
    snap = job.snapshot()
    assert snap.state == "done" and snap.done == 40 and snap.error is None
    # blocks.0.0 was cached by the page: the atlas rendered only blocks.1.0, in chunks of 8
    assert [c[0] for c in renders.atlas_calls] == [f"channel(blocks.1.0:{u})" for u in (0, 8, 16)]
    first.run()
    _ok(first)
    assert "40 of 40 units of the whole network" in _note(first)
    assert any("finished: 40 of 40 units" in s.value for s in first.success)
    assert first.button(key="atlas_start").disabled  # everything is there


def test_stop_ends_the_atlas_and_keeps_what_was_finished(monkeypatch):
    renders = FakeRender(monkeypatch)
    at = _open("layer", layer="blocks.0.0", **TINY)
    renders.release.clear()
    at.button(key="atlas_start").click().run()
    job = next(iter(atlas_run._JOBS.values()))
    deadline = time.monotonic() + 60  # Stop once the job is inside its first render (else it stops before any)
    while not renders.atlas_calls:
        assert time.monotonic() < deadline and not job.snapshot().finished, job.snapshot()
        time.sleep(0.01)
    at.button(key="atlas_stop").click().run()
    _ok(at)
    assert any(i.value.startswith("Stopping at the next step") for i in at.info)
    renders.release.set()
    assert job.join(timeout=60)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.done == 16  # blocks.0.0 (cached by the page), nothing of blocks.1.0
    assert len(renders.atlas_calls) == 1  # the first chunk's render reported, saw the Stop, and nothing followed
    at.run()
    _ok(at)
    assert any("stopped at 16 of 40 units" in i.value for i in at.info)
    assert "16 of 40 units of the whole network" in _note(at)
    start = at.button(key="atlas_start")
    assert not start.disabled and start.label == "Render the 24 missing units"  # a new atlas renders the rest


def test_the_unit_page_offers_the_atlas_settings_and_counts_the_layer(monkeypatch, bundled):
    renders = FakeRender(monkeypatch)
    render_cached(bundled, [channel("blocks.1.0", u) for u in range(24)], "classic", seed=0)
    at = _open("unit", layer="blocks.1.0", unit="3", **TINY)
    _ok(at)
    assert any("The cache holds 24 of 24 units of blocks.1.0 with classic" in c.value for c in at.caption)
    before = len(renders.page_calls)
    at.button(key="atlas_use").click().run()
    _ok(at)
    assert at.query_params["preset"] == "classic" and at.query_params["unit"] == "3"
    assert "24 of 24 units of blocks.1.0 · classic · 512 steps · 128 px · seed 0" in _note(at)
    rendered = [k for c in renders.page_calls[before:] for k in c]
    assert rendered and "channel(blocks.1.0:3)" not in rendered  # neuron, negative…: rendered; the channel: cached


def test_the_atlas_runs_on_ray_only_when_the_environment_names_a_cluster_and_ray_is_installed(monkeypatch):
    import importlib.util

    assert atlas_run.ray_from_env()[0] is None and "in this process" in atlas_run.ray_from_env()[1]
    monkeypatch.setenv(atlas_run.RAY_VAR, "auto")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)  # as without Ray
    address, where = atlas_run.ray_from_env()
    assert address is None and "Ray is not installed" in where
    monkeypatch.setenv(atlas_run.RAY_VAR, "ray://head:10001")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    assert atlas_run.ray_from_env() == ("ray://head:10001", "on Ray (ray://head:10001)")
