"""The freeze sweep on Ray (explorer.distributed.sweep_job): the handler here, and (marked `ray`) a local cluster.

The reference is the in-process sweep with one torch thread, as each CPU worker has (on CPU, oneDNN's results can
depend on the thread count). With the same seeds, the Ray sweep's per-image correctness, accuracies and trainable
counts are then exactly equal, and its held-out losses equal to 1e-6 relative.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from explorer.cli import main
from explorer.distributed import Task, ray_sweep_runner, run_local
from explorer.distributed.sweep_job import context_key, context_payload
from explorer.models import LoadedModel
from explorer.runtime import torch_threads
from explorer.transfer.sweeping.sweep import sweep, sweep_settings
from explorer.transfer.sweeping.sweep_tasks import SweepTask

TINY = "timm:test_efficientnet:untrained"
POINTS = ["none", "blocks.2.0", "global_pool"]  # 3 fine-tunes a seed, 2 linear fits (one seed: deterministic)


FAST = {"evaluation": "holdout", "min_steps": 2}  # the held-out split and a few steps: the tests' budget


def _settings(**kw: object) -> object:
    return sweep_settings(1, **{"input_size": 32, "batch_size": 8, "val_fraction": 0.25, **kw})


def _tasks(out: Path) -> dict[str, dict]:
    return json.loads(out.read_text())["tasks"]


def _same(ray_tasks: dict[str, dict], ref_tasks: dict[str, dict]) -> None:
    assert set(ray_tasks) == set(ref_tasks)
    for key, ref in ref_tasks.items():
        got = ray_tasks[key]
        for field in ("correct", "accuracy", "trainable", "epochs", "cached"):
            assert got[field] == ref[field], (key, field)
        if "val_loss" in ref:
            assert got["val_loss"] == pytest.approx(ref["val_loss"], rel=1e-6), key


@pytest.fixture(scope="module")
def reference(tiny: LoadedModel, color_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every task of a 2-seed sweep of POINTS, in this process with one thread (the in-process runner)."""
    out = tmp_path_factory.mktemp("ref") / "sweep.json"
    with torch_threads(1):
        sweep(tiny, color_folder, points=POINTS, seeds=2, settings=_settings(), out=out, **FAST)
    return _tasks(out)


# --------------------------------------------------------------------------- without Ray


def test_the_handler_rebuilds_the_context_once_and_gives_the_sweep_s_result(tiny, color_folder, reference):
    """What a worker does, here: the first task builds the shared pass, the next ones reuse it."""
    from explorer.transfer.sweeping.sweep import sweep as run

    seen = {}

    def capture(tasks, context, on_done):  # the driver's context of a sweep, to build the tasks' payload from
        seen["context"] = context

    run(tiny, color_folder, points=POINTS, seeds=2, settings=_settings(), runner=capture, **FAST)
    payload = context_payload(seen["context"])
    key = context_key(payload)
    tasks = [SweepTask("blocks.2.0", "finetune", 1), SweepTask("global_pool", "linear", 0)]
    jobs = [Task("sweep.task", {"key": key, "context": payload, "point": t.point, "route": t.route, "seed": t.seed,
                                "steps": 3}) for t in tasks]  # fmt: skip
    with torch_threads(1):
        out = run_local(jobs, tiny).results
    assert [o["built_prefix"] for o in out] == [True, False]  # computed once, reused by the second task
    for t, o in zip(tasks, out, strict=True):
        _same({t.key: o["result"]}, {t.key: reference[t.key]})


def test_cli_sweep_ray_without_ray_says_how_to_install_it_in_one_line(color_folder: Path, tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from explorer.cli import main\n"
        f"sys.exit(main(['sweep', '--model', {TINY!r}, '--device', 'cpu', '--data', {str(color_folder)!r}, "
        f"'--out', {str(tmp_path / 's.json')!r}, '--ray', 'auto']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install -r requirements-ray.txt" in done.stderr and done.stderr.count("\n") == 1
    assert "Traceback" not in done.stderr and not (tmp_path / "s.json").exists()


def test_cli_sweep_workers_without_ray_is_refused(color_folder: Path, tmp_path: Path, capsys) -> None:
    code = main(["sweep", "--model", TINY, "--device", "cpu", "--data", str(color_folder),
                 "--out", str(tmp_path / "s.json"), "--workers", "2"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--ray auto" in err and err.count("\n") == 1


# --------------------------------------------------------------------------- on a local Ray cluster
# (`cluster` and `pool` come from tests/conftest.py)


@pytest.mark.ray
@pytest.mark.slow
def test_ray_sweep_equals_in_process_and_a_rerun_runs_no_task(pool, tiny, color_folder, reference, tmp_path):
    out = tmp_path / "ray" / "sweep.json"
    runner = ray_sweep_runner(pool=pool)
    seen: list[dict] = []
    report = sweep(
        tiny, color_folder, points=POINTS, seeds=2, settings=_settings(), out=out, runner=runner,
        progress=lambda d, t, i: seen.append(i), **FAST,
    )  # fmt: skip
    assert runner.last is not None and runner.last.executed == 8 and runner.last.retries == 0  # linear: one seed
    assert pool.shape.count == 2 and len(runner.last.workers) == 2  # both workers took tasks
    assert runner.prefix_passes == 2  # the shared pass once per worker, for its 5 tasks on average
    _same(_tasks(out), reference)
    assert report.complete and len(report.options) == 5
    assert {i["task"] for i in seen if i["phase"] == "done"} == set(reference)

    again_runner = ray_sweep_runner(pool=pool)
    again = sweep(
        tiny, color_folder, points=POINTS, seeds=2, settings=_settings(), out=out, runner=again_runner, **FAST
    )
    assert again_runner.last is None  # no task was left to run: the pool was not even asked
    assert [o.accuracy for o in again.options] == [o.accuracy for o in report.options]


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_s_sweep_task_is_rerun_and_the_sweep_completes(pool, tiny, color_folder, reference, tmp_path):
    out = tmp_path / "kill" / "sweep.json"
    killed: list[str] = []
    events: list = []

    def progress(done: int, total: int, info) -> None:
        events.append(info)
        if info.event == "step" and not killed:  # a fine-tune has started on this worker: kill it mid-task
            victim = next(w for w in pool.workers if w.id == info.worker)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.id)

    runner = ray_sweep_runner(pool=pool, progress=progress)
    report = sweep(tiny, color_folder, points=POINTS, seeds=2, settings=_settings(), out=out, runner=runner, **FAST)
    assert killed and runner.last is not None and runner.last.retries >= 1
    retried = {i.task for i in events if i.event == "retry"}
    assert retried and all(i.worker == killed[0] for i in events if i.event == "retry")
    finished_on = {i.task: i.worker for i in events if i.event == "done"}
    assert all(finished_on[t] != killed[0] for t in retried)  # rerun on another (or a new) worker
    assert report.complete and len(_tasks(out)) == 8
    _same(_tasks(out), reference)  # the rerun task gives what the uninterrupted in-process sweep gave


@pytest.mark.ray
@pytest.mark.slow
def test_cli_sweep_on_ray(pool, tiny, color_folder, tmp_path, capsys) -> None:
    pool.close()  # give the shared pool's CPUs back for the command's own workers
    out = tmp_path / "cli" / "sweep.json"
    args = ["sweep", "--model", TINY, "--device", "cpu", "--data", str(color_folder), "--points", "none,global_pool",
            "--epochs", "1", "--input-size", "32", "--batch-size", "8", "--val-fraction", "0.25", "--out", str(out),
            "--ray", "auto", "--workers", "1", "--seeds", "1", "--evaluation", "holdout"]  # fmt: skip
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "Ray: 3 task(s) on 1 worker(s), 0 rerun" in captured.err
    assert "decision: non-inferiority" in captured.out
    assert len(_tasks(out)) == 3 and out.with_suffix(".html").exists()
