"""The demo belongs to everyone on the server (AppTest on the bundled model).

One session runs the demo (its fine-tune replaced by a slightly perturbed copy of the model, its sweep by the
hand-written one of test_compare_sweep, its comparison real on a few images); the demo is recorded in a manifest in
the cache. A *new* session, after a restart (every in-memory cache cleared), with the page's own defaults (200
images, the sweep's default epochs), then finds the demo's comparison, recommendation, code and chart on Compare's
first visit and at the tour's steps 5 and 6; "Run the demo" stays there to run it again.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import streamlit as st
import torch
from streamlit.testing.v1 import AppTest
from test_compare_sweep import _run, _stored_sweep
from uiapp import app_on, run_metadata

from explorer.transfer.sweeping.sweep import EPOCHS as SWEEP_EPOCHS

COMPARE = {"images": 32, "input": 64, "probes": False}
SWEEP = {"epochs": 2, "input": 64, "images": 0}  # not the page's default epochs: the manifest must carry them


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    _restart()
    yield tmp_path / "cache"
    _restart()


def _restart() -> None:
    """What a server restart forgets: every in-memory cache (the disk cache stays)."""
    st.cache_data.clear()
    st.cache_resource.clear()


@pytest.fixture
def quick_demo(monkeypatch, bundled):
    """The demo with its heavy parts small: a perturbed copy for the fine-tune, a stored sweep for the sweep."""
    from explorer.transfer import study
    from explorer.transfer.training.checkpoints import save_checkpoint
    from explorer.ui.compare import demo

    def finetune(base, data, settings, out, progress=None):
        module = copy.deepcopy(base.module)
        with torch.no_grad():
            for i, p in enumerate(module.parameters()):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 1e-3)
        meta = run_metadata(base, metrics={"epoch": 1, "val_acc": 0.9}, data={"source": data})
        save_checkpoint(module, Path(out), meta)
        return SimpleNamespace(metadata=meta)

    def sweep(self, cfg, *, seeds="auto", progress=None):
        assert cfg == SWEEP and seeds == 1
        from explorer.transfer.study import get_sweep

        return get_sweep(_stored_sweep(bundled, cfg))

    monkeypatch.setattr(study, "finetune", finetune)
    monkeypatch.setattr(demo, "PLAN", study.DemoPlan(compare=dict(COMPARE), sweep=dict(SWEEP)))
    monkeypatch.setattr(study.Study, "sweep", sweep)
    return demo


def _compare(**query: str) -> AppTest:
    at = app_on("compare", timeout=600, **query)
    at.session_state["cmp_show"] = []  # no unit renders: the layer view is tested elsewhere
    return at


def _run_the_demo(quick_demo, bundled) -> dict[str, Any]:
    at = _compare().run()
    at.button(key="cmp_demo").click().run()
    assert not at.exception and not at.error
    manifest = quick_demo.stored_demo(bundled)
    assert manifest is not None
    return manifest


def _shows_the_demo(at: AppTest, run: str) -> None:
    assert not at.exception and not at.error, (at.exception, at.error)
    assert at.query_params["tuned"] == run and at.query_params["images"] == str(COMPARE["images"])
    assert at.query_params["sw_epochs"] == str(SWEEP["epochs"])
    assert not any(i.value.startswith("Not compared yet") for i in at.info)
    assert at.success  # the measured recommendation (its wording belongs to the page's tests)
    assert at.query_params["freeze"] == "blocks.4.2"  # the page opens at the sweep's recommendation…
    assert any("'blocks.4.2'" in c.value for c in at.code)  # …with its code
    chart = next(c for c in at.get("plotly_chart") if c.key == "cmp_chart")  # the comparison's chart
    assert len(json.loads(chart.proto.spec)["data"]) > 2  # CKA and the sweep's curves (named by the page's tests)


def test_the_demo_is_recorded_once_for_the_server(cache_dir, bundled, quick_demo):
    from explorer.transfer.study import demo_path, get_demo

    assert SWEEP["epochs"] != SWEEP_EPOCHS  # else a new session's defaults would find it anyway
    manifest = _run_the_demo(quick_demo, bundled)
    assert demo_path(bundled.fingerprint).is_file() and get_demo(bundled.fingerprint) == manifest
    assert manifest["run"].startswith("demo-digits") and manifest["data"] == "demo:digits"
    assert manifest["compare"] == COMPARE and manifest["sweep"] == SWEEP
    assert manifest["finished"] > 0 and manifest["base_spec"] == bundled.spec
    assert quick_demo.demo_query(manifest) == {
        "tuned": manifest["run"],
        "data": "demo:digits",
        "images": "32",
        "input": "64",
        "probes": "0",
        "sw_epochs": "2",
        "sw_input": "64",
        "sw_images": "0",
    }


def test_a_damaged_manifest_or_a_deleted_run_is_no_demo(cache_dir, bundled, quick_demo):
    import shutil

    from explorer.transfer.study import demo_path
    from explorer.transfer.training.runs import runs_dir

    manifest = _run_the_demo(quick_demo, bundled)
    shutil.rmtree(runs_dir() / manifest["run"])
    assert quick_demo.stored_demo(bundled) is None
    demo_path(bundled.fingerprint).write_text("{not json")
    assert quick_demo.stored_demo(bundled) is None


def test_a_new_session_opens_compare_on_the_demo_whatever_its_defaults(cache_dir, bundled, quick_demo, monkeypatch):
    manifest = _run_the_demo(quick_demo, bundled)
    _restart()
    at = _compare().run()  # a new session, no tuned= in its URL
    _shows_the_demo(at, manifest["run"])
    again = at.button(key="cmp_demo")
    assert again.proto.label == "Run the demo again"
    assert any(c.value.startswith("Showing the demo") for c in at.caption)


def test_a_session_that_chose_its_own_model_is_left_alone(cache_dir, bundled, quick_demo, monkeypatch):
    manifest = _run_the_demo(quick_demo, bundled)
    _restart()
    _run(cache_dir, bundled)  # another run, "t1"
    at = _compare(tuned="t1").run()
    assert not at.exception
    assert at.query_params["tuned"] == "t1" != manifest["run"] and at.query_params["images"] == "200"
    assert not any(c.value.startswith("Showing the demo") for c in at.caption)


@pytest.mark.parametrize("step", [5, 6])
def test_the_tours_compare_steps_show_the_demo_from_another_session(cache_dir, bundled, quick_demo, step):
    manifest = _run_the_demo(quick_demo, bundled)
    _restart()
    at = app_on("start", timeout=600)
    at.session_state["cmp_show"] = []
    at.run()
    at.button(key=f"start_step_{step}").click().run()
    assert [x.value for x in at.title] == ["Compare"] and at.query_params["tour"] == str(step)
    _shows_the_demo(at, manifest["run"])  # step 6 too opens at the recommendation, not the tour's example point


def test_without_a_demo_the_tour_keeps_its_own_settings(cache_dir, bundled):
    import explorer.ui.tour as tour

    assert tour.step_query(6, bundled) == {"freeze": tour.FREEZE_POINT}
    assert tour.step_query(5, bundled) == {}
