"""explorer.distributed: the atlas plan, the in-process back end, and (marked `ray`) a local Ray cluster.

The Ray tests run a 2-CPU cluster in this process. The reference for every image is a serial `render_cached` in
this process with one torch thread, as each CPU worker has (on CPU, oneDNN's results depend on the thread count,
so pixels may differ between thread counts). The model is timm's tiny test_efficientnet saved as a checkpoint, so
every worker loads the same weights.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from explorer.cache import Cache
from explorer.cli import main
from explorer.distributed import (
    CPU_CHUNK,
    DistributedError,
    Pool,
    Task,
    atlas,
    atlas_layers,
    map_tasks,
    plan_atlas,
)
from explorer.featurevis import channel, get_preset, render_cached
from explorer.featurevis.store import KIND
from explorer.models import LoadedModel, fingerprint, load_model
from explorer.runtime import torch_threads

TINY = "timm:test_efficientnet:untrained"
LAYERS = {"blocks.0.0": 16, "blocks.2.0": 32}  # 48 images
SETTINGS = {"layers": list(LAYERS), "steps": 8, "size": 32, "seed": 0}


def files(root: Path) -> dict[str, bytes]:
    """Every file under a cache root, by relative path (temporary files included, so a leftover shows)."""
    # the entries (payload + record) only, not the cache's own bookkeeping (.cache-state.json at its root)
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.relative_to(root).parts[0].startswith(".")
    }


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> LoadedModel:
    """The tiny model, saved as a checkpoint and loaded from it (as every worker loads it)."""
    torch.manual_seed(0)
    built = load_model(TINY, device="cpu")
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    torch.save(built.module.state_dict(), path)
    return load_model(str(path), arch=TINY, device="cpu")


@pytest.fixture(scope="module")
def serial(tiny: LoadedModel, tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """The cache files of an uninterrupted serial render of every channel of LAYERS, in this process."""
    cache = Cache(tmp_path_factory.mktemp("serial"))
    with torch_threads(1):
        for layer, n in LAYERS.items():
            render_cached(tiny, [channel(layer, u) for u in range(n)], "classic", steps=8, size=32, cache=cache)
    out = files(cache.root)
    assert len(out) == 2 * sum(LAYERS.values())  # a PNG and its JSON per image
    return out


# --------------------------------------------------------------------------- without Ray


def test_package_imports_without_ray_and_names_the_install_command(tiny: LoadedModel) -> None:
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "import explorer.distributed as d\n"
        "from explorer.cli import main\n"
        f"sys.exit(main(['atlas', '--model', {tiny.spec!r}, '--arch', {TINY!r}, '--device', 'cpu', '--ray', 'auto']))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "pip install -r requirements-ray.txt" in done.stderr
    assert "Traceback" not in done.stderr


def test_plan_schedules_only_the_missing_images(tiny: LoadedModel, tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    with torch_threads(1):
        render_cached(tiny, [channel("blocks.0.0", u) for u in range(5)], "classic", steps=2, size=32, cache=cache)
    plan = plan_atlas(tiny, layers=["blocks.0.0", "blocks.2.0"], per_layer=8, steps=2, size=32, cache=cache)
    assert plan.wanted == 16
    assert plan.missing == {"blocks.0.0": [5, 6, 7], "blocks.2.0": list(range(8))}
    tasks = plan.tasks(3)
    assert [(t.channel, t.args["units"]) for t in tasks] == [
        ("blocks.2.0", [0, 1, 2]), ("blocks.2.0", [3, 4, 5]), ("blocks.2.0", [6, 7]), ("blocks.0.0", [5, 6, 7]),
    ]  # fmt: skip
    assert all(t.cost == len(t.args["units"]) * 2 for t in tasks)
    assert tasks[-1].args["keys"] == plan.keys["blocks.0.0"][5:8]
    whole = plan_atlas(tiny, steps=2, size=32, cache=cache)  # --all: every channel of every block with a grid
    assert {layer: len(u) for layer, u in whole.units.items()} == dict(atlas_layers(tiny))
    assert sum(len(u) for u in whole.units.values()) == 464
    assert whole.to_render == 464 - 5
    with pytest.raises(DistributedError, match="global_pool is not a block with a spatial output"):
        plan_atlas(tiny, layers=["global_pool"], cache=cache)


def test_keys_follow_the_workers_device(tiny: LoadedModel, tmp_path: Path) -> None:
    """A CUDA worker renders in bf16, so the driver (on CPU) must look up the keys a CUDA render is stored under."""
    on_cpu = plan_atlas(tiny, layers=["blocks.0.0"], per_layer=2, cache=Cache(tmp_path))
    on_cuda = plan_atlas(tiny, layers=["blocks.0.0"], per_layer=2, cache=Cache(tmp_path), device="cuda")
    assert on_cuda.device == "cuda"
    assert set(on_cpu.keys["blocks.0.0"]).isdisjoint(on_cuda.keys["blocks.0.0"])


def test_in_process_atlas_equals_the_serial_render(tiny: LoadedModel, serial: dict[str, bytes], tmp_path: Path) -> None:
    cache = Cache(tmp_path)
    seen: list = []
    with torch_threads(1):
        report = atlas(
            tiny, ray=None, chunk=5, cache=cache, progress=lambda d, t, info: seen.append((d, t, info)), **SETTINGS
        )
    assert report.executed == 4 + 7  # chunks of 5 over 16 and 32 channels
    assert [r["rendered"] for r in report.rows] == [16, 32]
    assert files(tmp_path) == serial  # byte for byte: PNGs and their JSON
    done, total, info = seen[-1]
    assert done == total == 48 * 8
    assert info.channels == {"blocks.0.0": (16 * 8, 16 * 8), "blocks.2.0": (32 * 8, 32 * 8)}
    again = atlas(tiny, ray=None, chunk=5, cache=cache, **SETTINGS)
    assert again.executed == 0 and [r["cached"] for r in again.rows] == [16, 32]


def test_cli_atlas_all_in_process(tiny: LoadedModel, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(tmp_path))
    base = ["atlas", "--model", tiny.spec, "--arch", TINY, "--device", "cpu", "--layers", "blocks.0.0", "--steps", "1",
            "--size", "32"]  # fmt: skip
    with torch_threads(1):
        assert main([*base, "--per-layer", "3"]) == 0
        assert capsys.readouterr().out.split("\n")[1].split()[:3] == ["blocks.0.0", "3", "0"]
        assert main([*base, "--all"]) == 0
        assert capsys.readouterr().out.split("\n")[1].split()[:3] == ["blocks.0.0", "16", "3"]  # 3 were cached
    assert main([*base, "--all", "--workers", "2"]) == 2
    assert "add --ray auto" in capsys.readouterr().err


def test_tasks_run_in_process_by_kind(tiny: LoadedModel) -> None:
    probe = Task("atlas.probe", {"layers": ["blocks.0.0"], "channels": {"blocks.0.0": 16}})
    assert map_tasks([probe], tiny).results == [{"chunks": {"blocks.0.0": CPU_CHUNK}}]
    with pytest.raises(DistributedError, match="Unknown task kind 'paint'"):
        map_tasks([Task("paint")], tiny)
    with pytest.raises(DistributedError, match="needs no_such_module"):
        map_tasks([Task("no_such_module:run")], tiny)


# --------------------------------------------------------------------------- on a local Ray cluster
# (`cluster` and `pool` come from tests/conftest.py)


@pytest.fixture
def cpus(pool: Pool) -> Pool:
    """For a test that starts workers of its own: the shared pool gives its two CPUs back first."""
    pool.close()
    return pool


@pytest.mark.ray
@pytest.mark.slow
def test_ray_atlas_equals_serial_and_a_second_run_executes_nothing(
    pool: Pool, tiny: LoadedModel, serial: dict[str, bytes], tmp_path: Path
) -> None:
    cache = Cache(tmp_path)
    seen: list = []
    report = atlas(tiny, pool=pool, chunk=3, cache=cache, progress=lambda d, t, i: seen.append(i), **SETTINGS)
    assert pool.shape.count == 2 and len(report.workers) == 2  # both CPU workers took tasks
    assert report.executed == 6 + 11 and report.retries == 0
    assert files(tmp_path) == serial  # pixel- and byte-exact, metadata included
    assert {i.channel for i in seen if i.event == "step"} <= set(LAYERS)
    assert seen[-1].channels == {"blocks.0.0": (16 * 8, 16 * 8), "blocks.2.0": (32 * 8, 32 * 8)}
    again = atlas(tiny, pool=pool, chunk=3, cache=cache, **SETTINGS)
    assert again.executed == 0
    assert [r["rendered"] for r in again.rows] == [0, 0] and [r["cached"] for r in again.rows] == [16, 32]


@pytest.mark.ray
@pytest.mark.slow
def test_a_user_error_in_a_worker_arrives_as_one_sentence_and_the_pool_goes_on(pool: Pool) -> None:
    preset = get_preset("classic", steps=1, size=32)
    wrong = Task("atlas.render", {"layer": "blocks.0.0", "units": [0], "keys": ["0" * 64], "preset": preset, "seed": 0})
    with pytest.raises(DistributedError) as err:
        pool.map([wrong])
    assert str(err.value).startswith("A worker computes other cache keys for blocks.0.0 than the driver")
    assert "Traceback" not in str(err.value)
    probe = Task("atlas.probe", {"layers": ["blocks.0.0"], "channels": {"blocks.0.0": 16}})
    assert pool.map([probe, probe]).results == [{"chunks": {"blocks.0.0": CPU_CHUNK}}] * 2


@pytest.mark.ray
@pytest.mark.slow
def test_a_killed_worker_s_task_is_rerun_elsewhere(
    pool: Pool, tiny: LoadedModel, serial: dict[str, bytes], tmp_path: Path
) -> None:
    cache = Cache(tmp_path)
    killed: list[str] = []
    events: list = []

    def progress(done: int, total: int, info) -> None:
        events.append(info)
        if info.event == "step" and not killed:  # a task has started on this worker: kill its process mid-task
            victim = next(w for w in pool.workers if w.id == info.worker)
            os.kill(victim.pid, signal.SIGKILL)
            killed.append(victim.id)

    report = atlas(tiny, pool=pool, chunk=4, cache=cache, progress=progress, **SETTINGS)
    assert killed and report.retries >= 1
    retried = {i.task for i in events if i.event == "retry"}
    assert retried and all(i.worker == killed[0] for i in events if i.event == "retry")
    finished_on = {i.task: i.worker for i in events if i.event == "done"}
    assert all(finished_on[t] != killed[0] for t in retried)  # rerun on another (or a new) worker
    assert pool.replacements >= 1 and killed[0] not in {w.id for w in pool.workers}  # a new worker in its place
    assert not [name for name in files(tmp_path) if not name.endswith((".png", ".json"))]  # no temporary files
    assert files(tmp_path) == serial  # every image complete and equal to the uninterrupted serial run


@pytest.mark.ray
@pytest.mark.slow
def test_workers_that_build_other_weights_are_refused(cpus: Pool, tmp_path: Path) -> None:
    changed = load_model(TINY, device="cpu")  # what the spec builds in every process (seeded), then changed here
    with torch.no_grad():
        next(changed.module.parameters()).add_(1.0)
    changed.fingerprint = fingerprint(changed.module)
    with pytest.raises(DistributedError, match="save it as a checkpoint"):
        atlas(changed, ray="auto", workers=1, cache=Cache(tmp_path), **SETTINGS)
    assert not any(tmp_path.rglob("*.png"))


@pytest.mark.ray
@pytest.mark.slow
def test_cli_atlas_all_on_ray_renders_only_what_is_missing(
    cpus: Pool, tiny: LoadedModel, serial: dict[str, bytes], tmp_path: Path, monkeypatch, capsys
) -> None:
    root = tmp_path / "cache"
    for name, data in serial.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    keys = plan_atlas(tiny, layers=["blocks.0.0"], cache=Cache(root), steps=8, size=32).keys["blocks.0.0"]
    for key in keys[:5]:  # lose five images of blocks.0.0
        for path in Cache(root).paths(KIND, key):
            path.unlink()
    monkeypatch.setenv("LAYER_EXPLORER_CACHE", str(root))
    code = main([
        "atlas", "--model", tiny.spec, "--arch", TINY, "--device", "cpu", "--layers", "blocks.0.0", "--all",
        "--steps", "8", "--size", "32", "--ray", "auto", "--workers", "1", "--out", str(tmp_path / "sheets"),
    ])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 0, err
    header, row = out.split("\n")[:2]
    assert row.split()[:4] == ["blocks.0.0", "16", "11", "5"]
    assert header.split()[-1] == "flagged" and re.search(r" \d+ of 16\b", row)  # the images' quality flags, counted
    assert "Ray: 1 task(s) on 1 worker(s), 0 rerun" in err
    assert files(root) == serial
    assert (tmp_path / "sheets" / "blocks.0.0-sheet.png").stat().st_size > 0
    shutil.rmtree(root)
