"""The Fine-tune page (AppTest on the bundled model) and explorer/ui/runs.py (where runs live, how they are found).

The page tests share Streamlit's caches within this module (the freeze table takes seconds to trace); each test
has its own LAYER_EXPLORER_CACHE, so runs and extracted zips never leak between tests.
"""

from __future__ import annotations

import io
import json
import os
import re
import time
import zipfile
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import streamlit as st
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from uiapp import app_on

from explorer.data import ImageFolderDataset, resolve_data
from explorer.data.demos import DEMO_DATASETS
from explorer.data.fence import DATA_ROOTS_VAR
from explorer.models import fingerprint, load_model
from explorer.models.freeze import freeze_summary
from explorer.transfer.training import runs
from explorer.transfer.training.checkpoints import save_checkpoint
from explorer.transfer.training.finetune import FinetuneSettings
from explorer.ui.widgets.figures import MAX_POINTS, progress_figure


@pytest.fixture(scope="module", autouse=True)
def _streamlit_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _open(**query: str) -> AppTest:
    return app_on("finetune", timeout=120, **query).run()


def _metrics(at: AppTest) -> dict[str, str]:
    return {m.label: m.value for m in at.metric}


def _count(text: str) -> int:
    return int(text.replace(",", ""))


def _param_counts(at: AppTest) -> tuple[int, ...]:
    """(trainable, non-trainable, total) from the exact counts under the freeze point's metrics."""
    text = next(c.value for c in at.caption if "total parameters" in c.value)
    return tuple(_count(n) for n in re.findall(r"\*\*([\d,]+)\*\*", text))


def _errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def _frame(at: AppTest, column: str):
    """The first table with a column of that name (read-only tables carry no key in AppTest)."""
    frames = [d.value if isinstance(d.value, pd.DataFrame) else d.value.data for d in at.dataframe]  # Styler.data
    return next(f for f in frames if column in f.columns)


# --------------------------------------------------------------------------- the page


def test_lists_the_demo_datasets_and_summarizes_shapes():
    at = _open(data="demo:shapes")
    assert not at.exception and not _errors(at)
    demo = at.selectbox(key="ft_demo")
    assert list(demo.options) == list(DEMO_DATASETS) and demo.value == "shapes"
    assert any("one sub-folder per class" in c.value for c in at.caption)  # users bring their own folders
    truth = ImageFolderDataset(resolve_data("demo:shapes"))
    metrics = _metrics(at)
    assert _count(metrics["Classes"]) == len(truth.classes) and _count(metrics["Images"]) == len(truth)
    counts = _frame(at, "class")
    assert counts["class"].tolist() == truth.classes
    assert counts["images"].tolist() == [truth.targets.count(i) for i in range(len(truth.classes))]
    assert sum(len(el.proto.imgs) for el in at.get("image")) >= len(truth.classes)  # sample thumbnails
    assert any(DEMO_DATASETS["shapes"] in c.value for c in at.caption)


def test_freeze_point_from_the_url_and_its_parameter_counts(bundled):
    at = _open(freeze="blocks.3.2", data="demo:shapes")
    assert not at.exception and not _errors(at)
    assert at.selectbox(key="ft_freeze").value == "blocks.3.2"
    expected = freeze_summary(bundled, "blocks.3.2", num_classes=3)
    assert _param_counts(at) == (expected.trainable, expected.non_trainable, expected.total)
    assert _metrics(at)["Trainable"] == f"{expected.trainable / 1e6:.2f} M"
    ladder = _frame(at, "state")
    states = dict(zip(ladder["layer"], ladder["state"], strict=True))
    assert states["blocks.3.2"] == "frozen" and states["conv_stem"] == "frozen"
    assert states["blocks.4.0"] == "trains" and states["classifier"].startswith("new head (3")
    at.selectbox(key="ft_freeze").set_value("none").run()
    assert at.query_params["freeze"] == "none"
    assert _param_counts(at)[1] == 0
    at = _open(freeze="no.such.layer")
    assert not at.exception
    assert any("no.such.layer" in w.value for w in at.warning)
    assert at.selectbox(key="ft_freeze").value == "none"


def _size_input(at: AppTest):
    return next(n for n in at.number_input if n.label == "Image size (px)")


def test_the_image_size_starts_at_the_datas_own_size(tmp_path, monkeypatch):
    at = _open(data="demo:digits")  # 8x8 digits stored at 64 px: training them at 224 px costs 12x for nothing
    assert not at.exception and _size_input(at).value == 64
    big = tmp_path / "big"  # photos larger than the model's input: the model's size
    for cls in ("a", "b"):
        (big / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (400, 300), (i * 40, 90, 200)).save(big / cls / f"{i}.png")
    monkeypatch.setenv("LAYER_EXPLORER_DATA_ROOTS", str(tmp_path))
    at = _open()
    at.radio(key="ft_source").set_value("Folder on the server").run()
    at.text_input(key="ft_folder").input(str(big)).run()
    assert not at.exception and not _errors(at) and _size_input(at).value == 224


@pytest.mark.slow  # ~3 s idle, 15-25 s on a busy 2-core machine: a real (tiny) fine-tune of the bundled model
def test_a_tiny_training_run_saves_a_listed_checkpoint_that_reopens(bundled):
    at = _open(freeze="blocks.3.2", data="demo:shapes")
    at.number_input(key="ft_epochs").set_value(1)
    _size_input(at).set_value(64)
    at.number_input(key="ft_max").set_value(60)
    at.number_input(key="ft_batch").set_value(16)
    at.button(key="ft_train").click().run()
    assert not at.exception and not _errors(at)
    job = at.session_state["ft_job"]
    assert job.join(timeout=240), "the run did not finish"
    at.run()
    assert not at.exception and not _errors(at), _errors(at)
    assert any(job.name in s.value and "finished" in s.value for s in at.success)
    listed = runs.list_runs()
    assert [r.name for r in listed] == [job.name]
    run = listed[0]
    assert run.status == "done" and run.epochs_done == 1 and run.path == job.checkpoint
    assert run.base_spec == bundled.spec and run.base_fingerprint == bundled.fingerprint
    assert run.freeze_after == "blocks.3.2" and run.data == "demo:shapes"
    assert run.classes == ImageFolderDataset(resolve_data("demo:shapes")).classes
    assert 0.0 <= run.val_acc <= 1.0
    tuned = load_model(str(run.path))
    assert tuned.class_names == run.classes and tuned.metadata["freeze_after"] == "blocks.3.2"
    assert tuned.fingerprint != bundled.fingerprint
    assert _frame(at, "run")["run"].tolist() == [job.name]
    at.button(key="ft_result_use").click().run()
    assert not at.exception and not _errors(at)
    assert at.session_state["model_spec"] == str(run.path)
    compare = at.button(key="ft_result_cmp")  # it opens on this run, with the run's base (not the tuned model now
    assert not compare.disabled  # current) as the base
    compare.click().run()
    assert at.query_params["tuned"] == job.name
    assert at.session_state["model_spec"] == bundled.spec
    # The shared, cached base model was not touched by training.
    assert fingerprint(bundled.module) == bundled.fingerprint


def _one_class(root: Path) -> str:
    (root / "cats").mkdir(parents=True)
    Image.new("RGB", (8, 8), "red").save(root / "cats" / "a.png")
    return str(root)


def _empty_class(root: Path) -> str:
    _one_class(root)
    (root / "dogs").mkdir()
    (root / "dogs" / "broken.png").write_bytes(b"not a png")
    return str(root)


@pytest.mark.parametrize(
    ("make", "expected"),
    [(_one_class, "only one sub-folder"), (_empty_class, "no readable images"),
     (lambda root: str(root / "missing"), "does not exist, or it lies outside")],
)  # fmt: skip
def test_bad_folders_show_one_error_and_start_nothing(tmp_path, monkeypatch, make, expected):
    monkeypatch.setenv(DATA_ROOTS_VAR, str(tmp_path))
    folder = make(tmp_path / "data")
    at = _open()
    at.radio(key="ft_source").set_value("Folder on the server").run()
    at.text_input(key="ft_folder").set_value(folder).run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and expected in errors[0]
    at.button(key="ft_train").click().run()
    assert not at.exception and "ft_job" not in at.session_state
    assert not runs.list_runs() and not runs.runs_dir().exists()


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _png(colour: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), colour).save(buf, format="PNG")
    return buf.getvalue()


def test_zip_uploads_escaping_or_bombs_are_refused_and_good_ones_summarized(tmp_path, cache_dir):
    at = _open()
    at.radio(key="ft_source").set_value("Upload a zip").run()
    escape = _zip({"a/x.png": _png("red"), "../../escaped.png": _png("blue")})
    at.file_uploader(key="ft_zip").upload("escape.zip", escape).run()
    assert not at.exception
    errors = _errors(at)
    assert len(errors) == 1 and "leaving the folder" in errors[0]
    assert not list(tmp_path.rglob("escaped.png"))
    at.file_uploader(key="ft_zip").upload("bomb.zip", _zip({"a/zeros.bmp": bytes(8 << 20)})).run()
    errors = _errors(at)
    assert len(errors) == 1 and "zip bomb" in errors[0]
    good = {f"pets/{c}/{i}.png": _png(c) for c in ("red", "blue") for i in range(3)} | {"pets/red/bad.png": b"x"}
    at.file_uploader(key="ft_zip").upload("pets.zip", _zip(good)).run()
    assert not at.exception and not _errors(at)
    metrics = _metrics(at)
    assert metrics["Classes"] == "2" and metrics["Images"] == "6" and metrics["Skipped"] == "1"
    assert any("skipped" in w.value for w in at.warning)
    assert len(list((cache_dir / "datasets").rglob("*.png"))) == 7


# --------------------------------------------------------------------------- runs.py


def _fake_run(root: Path, name: str, created: float, *, val_acc: float = 0.5) -> Path:
    folder = root / name
    folder.mkdir(parents=True)
    meta = {"base_spec": "bundled:x", "base_fingerprint": "f" * 8, "class_names": ["a", "b"], "freeze_after": "l1",
            "metrics": {"epoch": 2, "val_acc": val_acc}, "data": {"source": "demo:shapes"}}  # fmt: skip
    path = save_checkpoint(torch.nn.Linear(2, 2), folder / f"{name}.safetensors", meta)
    (folder / runs.RUN_RECORD).write_text(json.dumps({"name": name, "created": created, "status": "done"}))
    return path


def test_reserved_run_names_are_unique_and_never_reuse_anything(tmp_path, monkeypatch):
    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2024, 5, 6, 7, 8, 9)

    monkeypatch.setattr(runs, "datetime", Frozen)
    (tmp_path / "shapes-blocks.3.2-20240506-070809").mkdir()  # whatever made it, it is not reused
    (tmp_path / "shapes-blocks.3.2-20240506-070809" / "mine.txt").write_text("keep")
    (tmp_path / "shapes-blocks.3.2-20240506-070809-2.safetensors").write_bytes(b"keep")  # a loose checkpoint
    taken = [runs.reserve_run("shapes/blocks.3.2", root=tmp_path) for _ in range(3)]
    names = [n for n, _ in taken]
    assert names == [f"shapes-blocks.3.2-20240506-070809-{k}" for k in (3, 4, 5)]
    assert all(ckpt == tmp_path / n / f"{n}.safetensors" and not ckpt.exists() for n, ckpt in taken)
    assert (tmp_path / "shapes-blocks.3.2-20240506-070809" / "mine.txt").read_text() == "keep"
    assert (tmp_path / "shapes-blocks.3.2-20240506-070809-2.safetensors").read_bytes() == b"keep"
    runs.finish_run(taken[0][1], "stopped")  # no epoch completed: the empty reservation goes, nothing else does
    assert not (tmp_path / names[0]).exists() and (tmp_path / names[1]).is_dir()
    assert (tmp_path / "shapes-blocks.3.2-20240506-070809" / "mine.txt").exists()


def test_list_runs_reads_sidecars_newest_first_and_get_run_refuses_paths(tmp_path):
    now = time.time()
    _fake_run(tmp_path, "old", now - 100, val_acc=0.25)
    _fake_run(tmp_path, "new", now, val_acc=0.75)
    _fake_run(tmp_path, "mid", now - 50)
    (tmp_path / "pending").mkdir()  # reserved, no epoch finished yet
    (tmp_path / "pending" / runs.RUN_RECORD).write_text(json.dumps({"name": "pending", "created": now}))
    listed = runs.list_runs(tmp_path)
    assert [r.name for r in listed] == ["new", "mid", "old"]
    assert listed[0].val_acc == 0.75 and listed[0].classes == ["a", "b"] and listed[0].freeze_after == "l1"
    assert listed[0].data == "demo:shapes" and listed[0].epochs_done == 2 and listed[0].status == "done"
    assert runs.get_run("old", tmp_path).val_acc == 0.25
    for bad in ("../old", "old/../old", "/etc/passwd", ".hidden", ""):
        assert runs.get_run(bad, tmp_path) is None


def test_a_stopped_job_keeps_its_last_complete_epoch(tiny, color_folder, tmp_path):
    settings = FinetuneSettings(epochs=3, batch_size=8, input_size=32, freeze_after=None)
    job = runs.TrainingJob(tiny, str(color_folder), settings, label="colors", root=tmp_path)
    original = job._progress

    def stop_after_first_epoch(done, total, preview=None):
        original(done, total, preview)
        if isinstance(preview, dict) and preview.get("phase") == "val":
            job.stop()

    job._progress = stop_after_first_epoch
    assert job.start().join(timeout=120)
    snap = job.snapshot()
    assert snap.state == "stopped" and snap.error is None and len(snap.epochs) == 1
    assert snap.step < snap.total
    [run] = runs.list_runs(tmp_path)
    assert run.status == "stopped" and run.epochs_done == 1 and run.classes == ["blue", "green", "red"]
    assert load_model(str(run.path)).class_names == run.classes
    assert os.listdir(tmp_path) == [job.name]
    assert np.isfinite(run.metrics["val_loss"])


def test_a_failing_job_reports_one_message_and_leaves_no_folder(tiny, tmp_path):
    job = runs.TrainingJob(tiny, str(tmp_path / "nowhere"), FinetuneSettings(), label="x", root=tmp_path / "runs")
    assert job.start().join(timeout=60)
    snap = job.snapshot()
    assert snap.state == "failed" and "does not exist" in str(snap.error)
    assert not list((tmp_path / "runs").iterdir()) and runs.list_runs(tmp_path / "runs") == []


def test_progress_figure_marks_each_epoch_at_its_last_step_and_thins_long_runs():
    steps = [{"step": i + 1, "epoch": i // 1000 + 1, "loss": 1.0, "acc": 0.5} for i in range(4000)]
    epochs = [{"epoch": e, "val_loss": 0.5, "val_acc": 0.5 + e / 10} for e in (1, 2)]
    snap = runs.JobSnapshot("x", Path("x"), "running", 4000, 8000, steps, epochs, None, 1.0, 0.0, False)
    fig = progress_figure(snap)
    traces = {t.name: t for t in fig.data}
    assert list(traces["validation accuracy"].x) == [1000, 2000]
    assert list(traces["validation accuracy"].y) == [0.6, 0.7]
    assert len(traces["train loss"].x) <= 2 * MAX_POINTS and traces["train loss"].x[0] == 1


def test_the_freeze_chooser_offers_the_prediction_and_selects_its_point(bundled):
    """No prediction stored: one button, no work done. Clicked: one pass (no run, no checkpoint), the prediction
    labelled as one, and a button that sets the chooser (and the URL) to its point; a later visit shows it at once."""
    at = _open(data="demo:digits")
    assert not at.exception and not _errors(at)
    assert at.button(key="ft_predict").proto.label == "Predict where to freeze (no training)"
    assert not any(i.value.startswith("**Predicted") for i in at.info)
    at.button(key="ft_predict").click().run()
    assert not at.exception and not _errors(at)
    said = [i.value for i in at.info if i.value.startswith("**Predicted, before any training:**")]
    assert said and "`blocks.4.2`" in said[0] and said[0].endswith("The Compare page's sweep measures it.")
    assert any("trains the linear classifier itself" in c.value for c in at.caption)  # the route is said
    assert not runs.list_runs()  # a prediction trains nothing
    at.button(key="ft_use_predicted").click().run()
    assert at.selectbox(key="ft_freeze").value == "blocks.4.2" and at.query_params["freeze"] == "blocks.4.2"
    expected = freeze_summary(bundled, "blocks.4.2", num_classes=10)
    assert _param_counts(at) == (expected.trainable, expected.non_trainable, expected.total)
    again = _open(data="demo:digits", lang="pt-BR")  # stored: shown at once, in the page's language
    assert not again.exception
    assert any(i.value.startswith("**Previsto, antes de qualquer treino:**") for i in again.info)
    assert not [b for b in again.button if b.key == "ft_predict"]
