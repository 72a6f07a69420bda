"""The Compare page's freeze sweep, first visit and demo (AppTest on the bundled model).

A first visit (no runs) offers the demo and the sweep on its own; a stored sweep decides the advice ("Measured")
and draws its curve on the comparison chart beside CKA; the demo fills the page (run, comparison, sweep). Sweeps
stored for these tests are made from hand-written task results (the engine is tested in
tests/transfer/sweeping/test_sweep.py), so the page is tested without training; the demo test trains for real,
with smaller settings.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest
from uiapp import app_on, run_metadata

from explorer.data import list_images, resolve_data
from explorer.transfer.sweeping.predict import MEASURED_CASES, MEASURED_WITHIN
from explorer.transfer.sweeping.sweep import EPOCHS as SWEEP_EPOCHS
from explorer.transfer.sweeping.sweep import save_sweep
from explorer.transfer.sweeping.sweep_report import SweepReport, choose, make_options
from explorer.transfer.sweeping.sweep_tasks import auto_points

ACCURACY = {
    "none": 0.98,
    "blocks.2.1": 0.975,
    "blocks.4.2": 0.97,
    "blocks.5.1": 0.965,
    "blocks.5.3": 0.96,
    "global_pool": 0.94,
}
LINEAR = {"blocks.2.1": 0.90, "blocks.4.2": 0.975, "blocks.5.1": 0.96, "blocks.5.3": 0.955, "global_pool": 0.95}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    st.cache_data.clear()
    st.cache_resource.clear()
    yield tmp_path / "cache"
    st.cache_data.clear()
    st.cache_resource.clear()


def _open(**query: str) -> AppTest:
    at = app_on("compare", timeout=600, **query)
    at.session_state["cmp_show"] = []
    return at.run()


def _bits(acc: float, n: int, seed: int) -> str:
    """Correctness with nested errors (the hard images are hard for every option), as real options' errors are
    correlated: options a few images apart then have tight paired intervals."""
    del seed
    wrong = set(np.random.default_rng(0).permutation(n)[: round((1 - acc) * n)].tolist())
    return "".join("0" if i in wrong else "1" for i in range(n))


def _stored_sweep(bundled, cfg: dict[str, int]) -> Path:
    """A finished sweep of the bundled model on demo:digits where the page will look for it."""
    from explorer.exemplars import folder_signature
    from explorer.transfer.study import sweep_path

    points = auto_points(bundled)
    assert points == list(ACCURACY)
    tasks = {}
    for i, p in enumerate(points):
        tasks[f"finetune@{p}#0"] = {
            "accuracy": ACCURACY[p],
            "correct": _bits(ACCURACY[p], 360, i),
            "trainable": 3_000_000 - 400_000 * i,
            "seconds": 60.0 - 9 * i,
            "images_per_second": 70.0,
        }
        if p in LINEAR:
            tasks[f"linear@{p}#0"] = {
                "accuracy": LINEAR[p],
                "correct": _bits(LINEAR[p], 360, 10 + i),
                "trainable": 1000 + i,
                "seconds": 1.0,
                "images_per_second": 900.0,
            }
    options = make_options(tasks, points)
    root = resolve_data("demo:digits")
    from explorer.data import open_dataset
    from explorer.transfer.training.heldout import file_list_sha256

    report = SweepReport(
        base={"spec": bundled.spec, "arch": bundled.arch, "fingerprint": bundled.fingerprint},
        data={
            "source": "demo:digits",
            "classes": [str(c) for c in range(10)],
            "train_images": 1437,
            "heldout_images": 360,
        },
        settings={"epochs": cfg["epochs"], "input_size": 64, "seeds": 1},
        options=options,
        choice=choose(options, [i % 10 for i in range(360)], 0.1),
        chance=0.1,
        identity={
            "base_fingerprint": bundled.fingerprint,
            "data_sha256": file_list_sha256(open_dataset(root)),
            "input_size": 64,
        },
    )
    path = sweep_path(bundled.fingerprint, folder_signature(root, list_images(root)), cfg)
    save_sweep(report, path, {"tasks": tasks})
    return path


def test_a_first_visit_offers_the_demo_and_the_sweep_without_a_fine_tuned_model(cache_dir):
    at = _open()
    assert not at.exception and not at.error
    assert any("First visit" in i.value for i in at.info)
    assert at.button(key="cmp_demo").proto.label == "Run the demo"
    assert at.button(key="sw_run").proto.label == "Run the freeze sweep"
    assert any("global_pool" in i.value and "freeze points" in i.value for i in at.info)
    assert at.query_params["sw_epochs"] == str(SWEEP_EPOCHS) and at.query_params["sw_input"] == "64"
    # Before any training: the prediction, labelled as one, its chart with the predicted point starred
    said = [i.value for i in at.info if i.value.startswith("**Predicted, before any training:**")]
    assert said and "a linear classifier on `blocks.4.2`" in said[0] and "A prediction, not a measurement" in said[0]
    assert f"in {MEASURED_WITHIN}" in said[0] and f"{MEASURED_CASES} measured sweeps" in said[0]
    chart = json.loads(next(c for c in at.get("plotly_chart") if c.key == "sw_predicted").proto.spec)
    star = next(tr for tr in chart["data"] if tr.get("name") == "predicted option")
    scores = next(tr for tr in chart["data"] if tr.get("name") == "prediction score (nearest centroid)")
    assert star["x"] == ["blocks.4.2"] and star["y"][0] == max(scores["y"])  # the best-scoring point is the one starred
    assert not list((cache_dir / "sweeps").glob("*.json")) and not list((cache_dir / "runs").glob("*"))  # no training
    stored = list((cache_dir / "predict").rglob("*.predict.json"))
    assert len(stored) == 1  # kept for the next visit and every other session


def test_a_stored_sweep_is_shown_measured_on_its_own_and_decides_the_comparison(cache_dir, bundled):
    cfg = {"epochs": SWEEP_EPOCHS, "input": 64, "images": 0}
    _stored_sweep(bundled, cfg)
    at = _open()  # no fine-tuned model: the sweep alone, with its curve and table
    assert not at.exception and not at.error
    assert any(s.value.startswith("**Measured:**") and "blocks.4.2" in s.value for s in at.success)
    chart = next(c for c in at.get("plotly_chart") if c.key == "sw_chart")
    names = [t.get("name") for t in json.loads(chart.proto.spec)["data"]]
    assert names == [
        "fine-tune after the point",
        "linear classifier on the point",
        "prediction score (nearest centroid)",
        "predicted option",
    ]
    beside = [c.value for c in at.caption if c.value.startswith("Predicted before the sweep")]
    assert beside == [
        "Predicted before the sweep: a linear classifier on `blocks.4.2`. The sweep measured it at 97.5 % and chose it."
    ]
    assert not any(i.value.startswith("**Predicted, before") for i in at.info)  # the measured choice replaced it
    table = next(d.value for d in at.dataframe if "verdict" in d.value.columns)
    assert (table["verdict"] == "chosen").sum() == 1 and len(table) == 11

    _run(cache_dir, bundled)  # now a fine-tuned model too: the comparison draws the sweep beside CKA
    at = _open(tuned="t1", images="32", input="64", probes="0")
    at.button(key="cmp_run").click().run()
    assert not at.exception and not at.error
    chart = next(c for c in at.get("plotly_chart") if c.key == "cmp_chart")
    names = {t.get("name") for t in json.loads(chart.proto.spec)["data"]}
    assert {"CKA base vs tuned", "sweep: fine-tune after the point", "sweep: linear classifier on it"} <= names
    assert "predicted option" in names  # starred on the sweep's panel
    measured = [s.value for s in at.success if s.value.startswith("**Measured: freeze up to `blocks.4.2`")]
    assert measured and "linear classifier" in measured[0] and "CKA prediction is not used" in measured[0]
    assert at.query_params["freeze"] == "blocks.4.2"
    # The page says one thing: the linear route's own counts, its code and its action.
    trainable = next(m for m in at.metric if m.label == "Trainable params")
    assert trainable.proto.help.startswith("1,002 (the linear classifier)")
    codes = [c.value for c in at.code]
    assert any("FrozenFeaturesClassifier" in c and "'blocks.4.2'" in c for c in codes)
    assert at.button(key="fp_send").proto.label == "Fine-tune instead"
    at.button(key="fp_train_linear").click().run()
    assert not at.exception and not at.error
    trained = [s.value for s in at.success if s.value.startswith("**Classifier trained**")]
    assert trained and "1,797 images" in trained[0] and "cross-validation" in trained[0]


def _run(cache_dir: Path, bundled) -> None:
    """A saved run of the bundled model with slightly perturbed weights, 'trained' on demo:digits (no split)."""
    import copy

    import torch

    from explorer.transfer.training.checkpoints import save_checkpoint

    module = copy.deepcopy(bundled.module)
    with torch.no_grad():
        for i, p in enumerate(module.parameters()):
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(i)) * 1e-3)
    meta = run_metadata(bundled, metrics={"epoch": 1, "val_acc": 0.9}, data={"source": "demo:digits"})
    (cache_dir / "runs").mkdir(parents=True, exist_ok=True)
    save_checkpoint(module, cache_dir / "runs" / "t1.safetensors", meta)


@pytest.mark.slow
def test_the_demo_fills_the_page_with_a_run_its_comparison_and_the_sweep(cache_dir, monkeypatch):
    from explorer.transfer.study import DemoPlan
    from explorer.transfer.training.finetune import FinetuneSettings
    from explorer.ui.compare import demo

    plan = DemoPlan(
        finetune=FinetuneSettings(input_size=64, epochs=1, max_images=600),
        compare={"images": 120, "input": 64, "probes": False},
        sweep={"epochs": 1, "input": 64, "images": 600},
    )
    monkeypatch.setattr(demo, "PLAN", plan)
    at = _open()
    at.button(key="cmp_demo").click().run()
    assert not at.exception and not at.error
    assert at.query_params["tuned"].startswith("demo-digits") and at.query_params["data"] == "demo:digits"
    chart = next(c for c in at.get("plotly_chart") if c.key == "cmp_chart")
    names = {t.get("name") for t in json.loads(chart.proto.spec)["data"]}
    assert {"CKA base vs tuned", "sweep: fine-tune after the point", "sweep: linear classifier on it"} <= names
    assert "predicted option" in names  # starred on the sweep's panel
    assert all(b.key != "cmp_run" for b in at.button) and all(b.key != "sw_run" for b in at.button)
