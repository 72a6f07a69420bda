"""Crash safety of fine-tuning: a killed run keeps a loadable checkpoint and continues where it was.

The in-process tests interrupt a run with an exception from its progress callback; the last test kills a real
``python -m explorer finetune`` process with SIGKILL and resumes it through the CLI.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from explorer.models import load_model
from explorer.transfer.training import checkpoints
from explorer.transfer.training.checkpoints import CheckpointError, load_resume_state, resume_path
from explorer.transfer.training.finetune import FinetuneSettings, finetune
from explorer.transfer.training.resume import can_resume, resume
from explorer.transfer.training.runs import begin_run, list_runs, read_run

FAST = {"input_size": 32, "batch_size": 8, "val_fraction": 0.25}
# On the colour folder with this learning rate the held-out loss is lowest at epoch 3 and ties after it, so a run
# interrupted in epoch 5 must end with epoch 3's weights, which only the checkpoint still holds.
SETTINGS = {"epochs": 5, "patience": None, "lr": 0.03, "backbone_lr": 0.03, **FAST}


def _interrupt_in(epoch: int):
    def progress(done: int, total: int, info: dict) -> None:
        if info["phase"] == "train" and info["epoch"] == epoch:
            raise KeyboardInterrupt  # the process dies in the middle of `epoch`

    return progress


def _same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].float(), b[k].float(), rtol=0, atol=1e-6, msg=k)


def test_a_resumed_run_ends_exactly_like_an_uninterrupted_one(tiny, color_folder, tmp_path) -> None:
    s = FinetuneSettings(**SETTINGS)
    whole = finetune(tiny, color_folder, s, out=tmp_path / "whole.safetensors")
    assert whole.metadata["best_epoch"] < 4  # the premise: the kept epoch lies before the interruption
    assert not resume_path(tmp_path / "whole.safetensors").exists()  # a finished run leaves no resume state

    out = tmp_path / "cut.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, color_folder, s, out=out, progress=_interrupt_in(5))
    state = load_resume_state(out)
    assert state["epoch"] == 4 and [e["epoch"] for e in state["epochs"]] == [1, 2, 3, 4]
    assert can_resume(out)

    seen: list[int] = []
    again = resume(out, model=tiny, progress=lambda d, t, i: seen.append(i["epoch"]) if i["phase"] == "val" else None)
    assert seen == [5]  # only the missing epoch ran
    assert [e["epoch"] for e in again.epochs] == [1, 2, 3, 4, 5]
    assert again.metadata["best_epoch"] == whole.metadata["best_epoch"]
    assert again.metadata["split"] == whole.metadata["split"]
    assert [x["step"] for x in again.steps] == list(range(1, len(whole.steps) + 1))
    _same_weights(load_file(str(out)), load_file(str(tmp_path / "whole.safetensors")))
    _same_weights(again.module.state_dict(), whole.module.state_dict())
    assert again.metadata["metrics"]["history"] == json.loads(json.dumps(whole.metadata["metrics"]["history"]))
    assert not resume_path(out).exists() and not can_resume(out)


def test_a_kill_between_the_resume_state_and_the_checkpoint_is_repaired(
    tiny, color_folder, tmp_path, monkeypatch
) -> None:
    """The state is written first; if the process dies before the checkpoint of an improved epoch, resume writes it."""
    finetune_module = sys.modules["explorer.transfer.training.finetune"]  # the package exports a function of that name
    s = FinetuneSettings(epochs=3, patience=None, **FAST)
    whole = finetune(tiny, color_folder, s)
    out = tmp_path / "gap.safetensors"
    real_save = finetune_module.save_checkpoint
    calls = []

    def dying_save(module, path, meta):
        calls.append(meta["best_epoch"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # after epoch 2's resume state, before its checkpoint
        return real_save(module, path, meta)

    monkeypatch.setattr(finetune_module, "save_checkpoint", dying_save)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, color_folder, s, out=out)
    monkeypatch.setattr(finetune_module, "save_checkpoint", real_save)
    assert calls == [1, 2] and load_resume_state(out)["epoch"] == 2  # epoch 2 improved: its checkpoint was due
    assert json.loads(out.with_suffix(".json").read_text())["metrics"]["epoch"] == 1  # the checkpoint lags
    again = resume(out, model=tiny)
    assert [e["epoch"] for e in again.epochs] == [1, 2, 3]
    _same_weights(again.module.state_dict(), whole.module.state_dict())


def test_nothing_to_resume_is_one_sentence(tiny, color_folder, tmp_path, capsys) -> None:
    from explorer.cli import main

    with pytest.raises(CheckpointError, match="has no resume state"):
        resume(tmp_path / "none.safetensors", model=tiny)
    bad = tmp_path / "bad.safetensors"
    resume_path(bad).write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="not a readable resume state"):
        resume(bad, model=tiny)
    assert main(["finetune", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "no resume state" in err and "\n" not in err
    assert main(["finetune", "--data", str(color_folder)]) == 2
    assert "--freeze-after, --out" in capsys.readouterr().err


def test_resume_refuses_data_that_changed(tiny, color_folder, tmp_path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(color_folder, data)
    out = tmp_path / "run.safetensors"
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny, data, FinetuneSettings(**SETTINGS), out=out, progress=_interrupt_in(2))
    (data / "red" / "00.png").unlink()
    with pytest.raises(Exception, match="changed since the run started"):
        resume(out, model=tiny)


def test_registry_tells_a_dead_process_from_a_live_one(tmp_path) -> None:
    folder = tmp_path / "r1"
    folder.mkdir()
    ckpt = folder / "r1.safetensors"
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(ckpt))
    ckpt.with_suffix(".json").write_text(json.dumps({"arch": "x", "metrics": {"epoch": 1}}))
    assert begin_run(ckpt, "demo:digits")
    assert read_run(ckpt).status == "running"  # this process
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        record = json.loads((folder / ".run.json").read_text())
        (folder / ".run.json").write_text(json.dumps({**record, "pid": live.pid}))
        assert read_run(ckpt).status == "running"  # another process, alive: not interrupted
    finally:
        live.kill()
        live.wait()
    assert read_run(ckpt).status == "interrupted"
    assert not begin_run(tmp_path / "loose.safetensors")  # not a run folder: no record


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".x.safetensors.{dead.pid}.1.tmp").write_bytes(b"half")
    (tmp_path / f".y.safetensors.{os.getpid()}.1.tmp").write_bytes(b"being written")
    removed = checkpoints.remove_stale_temps(tmp_path)
    assert [p.name for p in removed] == [f".x.safetensors.{dead.pid}.1.tmp"]
    assert (tmp_path / f".y.safetensors.{os.getpid()}.1.tmp").exists()


def _files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.slow
def test_kill_9_during_a_cli_fine_tune_then_resume(color_folder, tmp_path) -> None:
    """A real `python -m explorer finetune` killed with SIGKILL after its first epoch, then resumed by the CLI."""
    root = tmp_path / "cache"
    folder = root / "runs" / "killed"
    ckpt = folder / "killed.safetensors"
    env = {**os.environ, "LAYER_EXPLORER_CACHE": str(root), "PYTHONPATH": str(Path(__file__).parents[3])}
    epochs = 6
    cmd = [sys.executable, "-m", "explorer", "finetune", "--model", "timm:test_efficientnet:untrained",
           "--device", "cpu", "--data", str(color_folder), "--freeze-after", "none", "--epochs", str(epochs),
           "--patience", "0", "--input-size", "32", "--batch-size", "8", "--out", str(ckpt)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not resume_path(ckpt).exists():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "no epoch completed in 120 s"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # What the kill left: every visible file complete; at most a hidden temporary file of an interrupted write.
    visible = [n for n in _files(folder) if not n.startswith(".")]
    assert visible == ["killed.json", "killed.resume.pt", "killed.safetensors"]
    assert all(n.endswith(".tmp") for n in _files(folder) if n.startswith(".") and n != ".run.json")
    reopened = load_model(str(ckpt), device="cpu")
    done_before = reopened.metadata["metrics"]["epoch"]
    assert 1 <= done_before < epochs and reopened.num_classes == 3
    state = load_resume_state(ckpt)
    assert state["epoch"] >= done_before
    split = json.loads(ckpt.with_suffix(".json").read_text())["split"]
    (run,) = list_runs(root / "runs")
    assert run.name == "killed" and run.status == "interrupted"

    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "explorer", "finetune", "--resume", str(folder), "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    summary = json.loads(out.stdout)
    assert [e["epoch"] for e in summary["epochs"]] == list(range(1, epochs + 1))  # no epoch repeated or lost
    meta = load_model(str(ckpt), device="cpu").metadata
    assert meta["split"] == split and [e["epoch"] for e in meta["metrics"]["history"]] == list(range(1, epochs + 1))
    assert _files(folder) == [".run.json", "killed.json", "killed.safetensors"]  # no state, no temporary files
    (run,) = list_runs(root / "runs")
    assert run.status == "done"
    print(f"killed after epoch {state['epoch']}; resume ran {epochs - state['epoch']} epochs in "
          f"{time.monotonic() - t0:.1f} s")  # fmt: skip
