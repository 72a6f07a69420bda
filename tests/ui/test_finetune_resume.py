"""The Fine-tune page offers Resume for a run whose process died, and the resumed run finishes its epochs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from uiapp import app_on

from explorer.transfer.training.checkpoints import resume_path
from explorer.transfer.training.finetune import FinetuneSettings, finetune
from explorer.transfer.training.runs import RUN_RECORD, begin_run, list_runs


@pytest.fixture(name="cache_dir")
def cache_dir_fixture(tmp_path, monkeypatch):
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _killed_run(tiny, data, folder, epochs: int) -> None:
    """A run in the registry whose process died during epoch 2 (its record names a pid that no longer exists)."""
    folder.mkdir(parents=True)
    ckpt = folder / f"{folder.name}.safetensors"
    begin_run(ckpt, str(data))

    def die(done: int, total: int, info: dict) -> None:
        if info["phase"] == "train" and info["epoch"] == 2:
            raise KeyboardInterrupt

    settings = FinetuneSettings(epochs=epochs, input_size=32, batch_size=8, val_fraction=0.25, patience=None)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, data, settings, out=ckpt, progress=die)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    record = json.loads((folder / RUN_RECORD).read_text())
    (folder / RUN_RECORD).write_text(json.dumps({**record, "pid": gone.pid}))


def test_an_interrupted_run_gets_a_resume_button_that_finishes_it(tiny, color_folder, cache_dir) -> None:
    folder = cache_dir / "runs" / "cut"
    _killed_run(tiny, color_folder, folder, epochs=3)
    (run,) = list_runs(cache_dir / "runs")
    assert run.status == "interrupted" and run.epochs_done == 1

    at = app_on("finetune", timeout=120).run()
    assert not at.exception
    assert any("**cut** is interrupted after epoch 1 of 3" in m.value for m in at.markdown)
    assert [w.value for w in at.warning if "**cut** was interrupted" in w.value]  # said at the top of the page
    at.button(key="ft_resume_cut").click().run()
    assert not at.exception and not at.error
    job = at.session_state["ft_job"]
    assert job.name == "cut" and job.checkpoint == folder / "cut.safetensors"
    assert job.join(timeout=300)
    snap = job.snapshot()
    assert snap.state == "done", snap.error
    assert [e["epoch"] for e in snap.epochs] == [2, 3]  # only the missing epochs ran
    history = json.loads((folder / "cut.json").read_text())["metrics"]["history"]
    assert [e["epoch"] for e in history] == [1, 2, 3]
    assert not resume_path(folder / "cut.safetensors").exists()
    (run,) = list_runs(cache_dir / "runs")
    assert run.status == "done" and run.epochs_done in (1, 2, 3)
    at.run()
    assert not at.exception and at.button(key="ft_result_use") is not None
    assert not [b for b in at.button if b.key == "ft_resume_cut"]  # nothing left to resume
    assert not [w for w in at.warning if "interrupted" in w.value]
