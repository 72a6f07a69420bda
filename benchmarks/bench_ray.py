"""The Ray back end's figures: its overhead on CPU, and the whole-network atlas on GPUs.

    python benchmarks/bench_ray.py                  # CPU: Ray vs in-process at the same threads (target <= 15 %)
    python benchmarks/bench_ray.py --suite gpu      # GPU: ResNet-50 atlas per GPU, 1 vs N workers, torch.compile
    python benchmarks/bench_ray.py --suite gpu --device cpu --model timm:test_efficientnet:untrained --size 32 \\
        --steps 2 --sample 4 --compile-layer blocks.2.0 --scaling-layers blocks.0.0 --scaling-units 8  # small, on CPU

CPU suite: the same channels of one block rendered (a) in-process as `python -m explorer atlas` does today, with
torch.set_num_threads(2), and (b) by `explorer.distributed.atlas` on a local Ray cluster of 2 CPU workers with one
thread each, alternating, the pool started and warmed up first (start-up is printed apart). Then the same at one
thread (in-process with 1 thread vs 1 worker), which isolates what Ray itself costs from how 2 threads scale. It
prints wall times, ratios, how busy the scheduler kept the workers, and whether the Ray images equal a serial
in-process render with one thread (each worker's thread count; on CPU pixels may differ between thread counts).
Ray's workers run at nice 0 here, like this process (Ray's default is 15).

GPU suite (one machine, every GPU on it):
1. atlas: for every block with a spatial output, one task of the batch the Ray atlas would use (chunk by memory,
   `explorer.distributed.atlas_tasks.probe_task`), timed at `--steps` and `--steps` / 4 steps: a task costs
   fixed + steps × per-step, so every task of the whole-network atlas at `--full-steps` steps, summed, gives its
   time on one GPU;
2. scaling: the same atlas subset on 1 Ray worker and on N (one per GPU; with one GPU, two workers sharing it),
   pools started before timing; efficiency = t1 / (N × tN). Skipped, saying so, when Ray is not installed;
3. torch.compile on/off of the render step's floor (forward + backward of the BatchNorm-folded network truncated
   at the layer, channels-last, bf16 autocast on CUDA), measured here only (the render path has no compile option).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.cache import Cache  # noqa: E402
from explorer.distributed import Pool, RayMissing, atlas, atlas_layers, require_ray  # noqa: E402
from explorer.distributed.atlas_tasks import probe_task  # noqa: E402
from explorer.featurevis import channel, get_preset, render, render_cached  # noqa: E402
from explorer.featurevis.fold import render_network  # noqa: E402
from explorer.featurevis.render import autocast, use_bf16  # noqa: E402
from explorer.layers import (
    forward_until,  # noqa: E402
    to_nchw,  # noqa: E402
)
from explorer.models import LoadedModel, load_model  # noqa: E402

SUITES = {
    "cpu": {"model": "bundled:efficientnet_lite0", "layer": "blocks.3.2", "channels": 16, "steps": 32, "size": 128},
    "gpu": {"model": "torchvision:resnet50:untrained", "steps": 16, "full_steps": 512, "size": 128, "sample": 256,
            "compile_layer": "layer3", "compile_batch": 64, "scaling_layers": "layer2,layer3",
            "scaling_units": 128},
}  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _checkpoint(model: LoadedModel, folder: Path) -> LoadedModel:
    """The model saved and loaded back as a checkpoint, so every Ray worker builds the same weights."""
    path = folder / "model.pt"
    torch.save(model.module.state_dict(), path)
    return load_model(str(path), arch=model.arch, device=model.device)


def _ray_init(**resources: Any) -> Any:
    """A local cluster whose workers run at this process's priority (Ray's default is nice 15: on a shared machine
    they would yield to everything else, and the comparison with in-process would measure that)."""
    ray = require_ray()
    os.environ.setdefault("RAY_worker_niceness", "0")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, **resources)
    return ray


def _warm(pool: Pool) -> float:
    """Start the pool's workers and wait until each has loaded the model; seconds taken."""
    t = time.perf_counter()
    pool.ready()
    return time.perf_counter() - t


# --------------------------------------------------------------------------- CPU: overhead


def _pair(
    model: LoadedModel, root: Path, layer: str, n: int, steps: int, size: int, workers: int, rounds: int
) -> tuple[list[float], list[float], Any, Any]:
    """Alternate an in-process render at `workers` threads and a Ray atlas on `workers` 1-thread workers."""
    objs = [channel(layer, u) for u in range(n)]
    t_in, t_ray = [], []
    with Pool(model, "auto", device="cpu", workers=workers) as pool:
        t_start = _warm(pool)
        warm = Cache(root / f"warm{workers}")  # one short task per worker, as in-process had a warm-up render
        atlas(model, pool=pool, layers=[layer], per_layer=workers, steps=2, size=size, chunk=1, cache=warm)
        for r in range(rounds):
            torch.set_num_threads(workers)
            t = time.perf_counter()
            local = render_cached(
                model, objs, "classic", steps=steps, size=size, cache=Cache(root / f"in{workers}-{r}")
            )
            t_in.append(time.perf_counter() - t)
            torch.set_num_threads(1)  # the driver only waits
            report = atlas(model, pool=pool, layers=[layer], per_layer=n, steps=steps, size=size,
                           cache=Cache(root / f"ray{workers}-{r}"))  # fmt: skip
            t_ray.append(report.seconds)
            busy = report.busy_seconds / (report.seconds * len(report.workers))
            print(f"  round {r + 1}: in-process 1 x {workers} thread(s) {t_in[-1]:7.2f} s, Ray {workers} worker(s) x 1 "
                  f"thread {t_ray[-1]:7.2f} s ({report.executed} tasks of {report.chunks[layer]} channels on "
                  f"{len(report.workers)} workers, busy {busy:.0%}): ratio {t_ray[-1] / t_in[-1]:.3f}")  # fmt: skip
    print(f"  ({workers} worker(s) loaded the model in {t_start:.2f} s, not counted above)")
    return t_in, t_ray, local, report


def cpu_suite(a: argparse.Namespace, s: dict[str, Any]) -> None:
    model = load_model(a.model or s["model"], device="cpu")
    layer, n = a.layer or s["layer"], a.channels or s["channels"]
    steps, size = a.steps or s["steps"], a.size or s["size"]
    print(f"# {model.spec}, {layer}: {n} channels, {size} px, {steps} steps, classic; {platform.processor() or ''} "
          f"{torch.get_num_threads()} threads available, torch {torch.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}; {a.rounds} rounds, in-process and Ray alternating")  # fmt: skip
    render(model, [channel(layer, 0)], "classic", steps=2, size=size)  # warm-up
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = _checkpoint(model, root)
        t = time.perf_counter()
        _ray_init(num_cpus=2, object_store_memory=200 * 2**20)
        print(f"local Ray cluster started in {time.perf_counter() - t:.2f} s (not counted below)")
        print("same total threads: 2")
        in2, ray2, two, report2 = _pair(model, root, layer, n, steps, size, 2, a.rounds)
        print("same compute: 1 thread (what Ray itself costs)")
        in1, ray1, one, report1 = _pair(model, root, layer, n, steps, size, 1, a.rounds)
        images = report2.images(layer), report1.images(layer)
    for label, t_in, t_ray in (("2 threads", in2, ray2), ("1 thread", in1, ray1)):
        ratio = float(np.median(t_ray)) / float(np.median(t_in))
        print(f"median at {label}: in-process {np.median(t_in):.2f} s, Ray {np.median(t_ray):.2f} s; ratio Ray / "
              f"in-process {ratio:.3f} (overhead {ratio - 1:+.1%}; target <= +15 %)")  # fmt: skip
    same = all(np.array_equal(im, one.images) for im in images)
    print(f"Ray images (2 and 1 workers) == serial 1-thread render, same seeds: {same}  (max |diff| vs the 2-thread "
          f"render: {int(np.abs(images[0].astype(int) - two.images).max())})")  # fmt: skip


# --------------------------------------------------------------------------- GPU: atlas, scaling, compile


def atlas_extrapolation(model: LoadedModel, name: str, steps: int, full_steps: int, size: int, sample: int) -> float:
    """Per block, one atlas task (the batch Ray would use) timed at `steps` and `steps // 4` steps: a task costs
    fixed + steps × per-step; the whole network's atlas is the sum over its tasks at `full_steps`, on one device."""
    preset = get_preset("classic", steps=steps, size=size)
    layers = atlas_layers(model)
    args = {"layers": [n for n, _ in layers], "channels": dict(layers), "preset": preset}
    chunks = probe_task(model, args, lambda d, t: None)["chunks"]
    short = max(1, steps // 4)
    print(f"\n## atlas: {name} on {model.device}, {size} px → {model.input_size[0]} px; one task per block timed at "
          f"{short} and {steps} steps, extrapolated to all channels at {full_steps} steps (classic)")  # fmt: skip
    print(f"{'layer':<12} {'channels':>8} {'batch':>5} {'fixed s':>8} {'s/img-step':>11} {'tasks':>5} {'total s':>9}")
    total = 0.0
    for layer, n in layers:
        b = min(chunks[layer], n, sample)
        objs = [channel(layer, u) for u in range(b)]
        render(model, objs, preset.replace(steps=1), batch_size=b)  # warm-up: kernels, allocator
        took = {}
        for k in (short, steps):
            _sync(model.device)
            t = time.perf_counter()
            render(model, objs, preset.replace(steps=k), batch_size=b)
            _sync(model.device)
            took[k] = time.perf_counter() - t
        per_step = max((took[steps] - took[short]) / max(steps - short, 1), 0.0)
        fixed = max(took[short] - short * per_step, 0.0)
        tasks = -(-n // b)
        seconds = tasks * (fixed + full_steps * per_step)
        total += seconds
        print(f"{layer:<12} {n:>8} {b:>5} {fixed:>8.3f} {per_step / b:>11.6f} {tasks:>5} {seconds:>9.1f}")
    n_all = sum(n for _, n in layers)
    print(f"whole network: {n_all} channels × {full_steps} steps ≈ {total:.0f} s = {total / 3600:.2f} h per device")
    return total


def scaling(model: LoadedModel, name: str, layers: list[str], units: int, steps: int, size: int) -> float | None:
    """Wall time of the same atlas subset on 1 Ray worker and on N, in tasks small enough that each of the N gets
    about four; returns the efficiency t1 / (N × tN)."""
    try:
        ray = _ray_init(**({"num_cpus": 2} if model.device.type == "cpu" else {}))
    except RayMissing as exc:
        print(f"\n## scaling: skipped ({exc})")
        return None
    dev = model.device.type
    gpus = int(ray.cluster_resources().get("GPU", 0)) if dev == "cuda" else 0
    n, share = (gpus, 1.0) if gpus > 1 else (2, 0.5 if dev == "cuda" else 1.0)
    what = f"{n} GPUs" if gpus > 1 else ("2 workers sharing 1 GPU (0.5 each)" if dev == "cuda" else "2 CPU workers")
    chunk = max(1, len(layers) * units // (4 * n))
    print(f"\n## scaling: {name}, {', '.join(layers)} × {units} channels, {steps} steps, {size} px, tasks of {chunk} "
          f"channels; 1 worker vs {what}")  # fmt: skip
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        for count, per in ((1, 1.0), (n, share)):
            with Pool(model, "auto", device=dev, workers=count, gpus_per_worker=per) as pool:
                started = _warm(pool)
                r = atlas(model, pool=pool, layers=layers, per_layer=units, steps=steps, size=size, chunk=chunk,
                          cache=Cache(Path(tmp) / f"w{count}"))  # fmt: skip
            times[count] = r.seconds
            print(f"{count} worker(s): {r.seconds:8.2f} s ({r.executed} tasks; start-up {started:.1f} s not included)")
    eff = times[1] / (n * times[n])
    print(f"speed-up {times[1] / times[n]:.2f}× on {n} workers, efficiency {eff:.0%}")
    return eff


def sequential_prefix(module: nn.Module, path: list[str]) -> nn.Module | None:
    """The network up to `path` as nn.Sequential, for models whose forward runs their children in order."""
    children = dict(module.named_children())
    if path[0] not in children:
        return None
    names = list(children)
    parts = [children[k] for k in names[: names.index(path[0])]]
    last = children[path[0]] if len(path) == 1 else sequential_prefix(children[path[0]], path[1:])
    return None if last is None else nn.Sequential(*parts, last)


def compile_comparison(model: LoadedModel, name: str, layer: str, batch: int, reps: int = 10) -> None:
    """Forward + backward of the folded network truncated at `layer`: eager vs torch.compile."""
    dev = model.device
    net = render_network(model, [layer])
    prefix = sequential_prefix(net, layer.split("."))
    x = torch.rand(batch, 3, *model.input_size, device=dev).contiguous(memory_format=torch.channels_last)
    print(f"\n## torch.compile: {name} up to {layer}, batch {batch}, {model.input_size[0]} px on {dev}")
    with torch.no_grad():
        ref = forward_until(net, layer, x[:2])
        hw = to_nchw(ref).shape[-2:]
        if prefix is None or not torch.allclose(prefix(x[:2]), ref, rtol=1e-4, atol=1e-4):
            print("skipped: this network's forward is not its children in order (no sequential prefix)")
            return
    bf16 = use_bf16(dev, model.input_size, hw)

    def step(fn: Any) -> None:
        xi = x.detach().requires_grad_(True)
        with autocast(dev, bf16):
            out = fn(xi)
        torch.autograd.grad(to_nchw(out).float()[:, 0].mean(), xi)

    def timed(fn: Any) -> tuple[float, float]:
        _sync(dev)
        t = time.perf_counter()
        step(fn)  # the first call: compilation for the compiled module
        _sync(dev)
        first = time.perf_counter() - t
        step(fn)
        times = []
        for _ in range(reps):
            _sync(dev)
            t = time.perf_counter()
            step(fn)
            _sync(dev)
            times.append(time.perf_counter() - t)
        return first, float(np.median(times))

    _, eager = timed(prefix)
    try:
        first, compiled = timed(torch.compile(prefix))
    except Exception as exc:  # inductor needs a compiler toolchain; say why instead of failing the whole run
        print(f"eager {eager * 1000:.2f} ms/step; compiled: failed ({type(exc).__name__}: {str(exc)[:120]})")
        return
    print(f"eager {eager * 1000:.2f} ms/step, compiled {compiled * 1000:.2f} ms/step ({'bf16' if bf16 else 'fp32'}): "
          f"{eager / compiled:.2f}× (compilation {first:.1f} s)")  # fmt: skip


def gpu_suite(a: argparse.Namespace, s: dict[str, Any]) -> None:
    device = a.device or "cuda"
    built = load_model(a.model or s["model"], device=device)
    steps, size = a.steps or s["steps"], a.size or s["size"]
    where = torch.cuda.get_device_name(built.device) if built.device.type == "cuda" else platform.processor()
    print(f"# {built.spec} on {built.device} ({where}); torch {torch.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        model = _checkpoint(built, Path(tmp))
        per_device = atlas_extrapolation(
            model, built.spec, steps, a.full_steps or s["full_steps"], size, a.sample or s["sample"]
        )
        layers = (a.scaling_layers or s["scaling_layers"]).split(",")
        eff = scaling(model, built.spec, layers, a.scaling_units or s["scaling_units"], steps, size)
        n = max(torch.cuda.device_count(), 1) if model.device.type == "cuda" else 1
        if eff is not None and n > 1:
            print(f"whole network on the {n} GPUs here: {per_device / (n * eff) / 3600:.2f} h")
        layer, batch = a.compile_layer or s["compile_layer"], a.compile_batch or s["compile_batch"]
        compile_comparison(model, built.spec, layer, batch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--suite", choices=list(SUITES), default="cpu")
    ap.add_argument("--model", default=None, help="model spec (default: the suite's)")
    ap.add_argument("--device", default=None, help="gpu suite: cuda (default) or cpu, to run its code small")
    ap.add_argument("--layer", default=None, help="cpu suite: the block rendered")
    ap.add_argument("--channels", type=int, default=None, help="cpu suite: channels rendered")
    ap.add_argument("--rounds", type=int, default=3, help="cpu suite: in-process / Ray pairs, alternating")
    ap.add_argument("--steps", type=int, default=None, help="steps timed")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels")
    ap.add_argument("--full-steps", type=int, default=None, help="gpu suite: steps the extrapolation is for")
    ap.add_argument("--sample", type=int, default=None, help="gpu suite: at most this many channels timed per block")
    ap.add_argument("--scaling-layers", default=None, help="gpu suite: blocks of the scaling run")
    ap.add_argument("--scaling-units", type=int, default=None, help="gpu suite: channels per block in it")
    ap.add_argument("--compile-layer", default=None, help="gpu suite: where the compiled network stops")
    ap.add_argument("--compile-batch", type=int, default=None)
    a = ap.parse_args()
    s = SUITES[a.suite]
    (cpu_suite if a.suite == "cpu" else gpu_suite)(a, s)


if __name__ == "__main__":
    main()
