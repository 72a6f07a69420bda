"""All-blocks Grad-CAM in one pass against a loop of Captum LayerGradCam calls; dataset-examples throughput.

    python benchmarks/bench_attribution.py [--quick] [--batch 8] [--repeat 3] [--device cpu] [--threads N]
        [--json out.json]

For each model (the bundled EfficientNet-Lite0 and torchvision ResNet-50 with weights=None), in the same run:
`attribute(model, x, "all", "gradcam")` (one forward and one backward with hooks on every block) and a loop of
`LayerGradCam(model, layer).attribute(x)`, one per layer (a forward and a partial backward each). Reported: the
median time of each (runs alternate, so load on a shared machine hits both alike), the speed-up of the medians
and of the minima, the target 0.5 × L, and the largest absolute difference between the maps.
Then the dataset-examples pass (`dataset_examples`, cache off) over the generated shapes demo: images per second.
`--quick` uses batch 2, one repeat and 24 images, for a noisy first look on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

SPECS = ["bundled:efficientnet_lite0", "torchvision:resnet50:untrained"]


def _batch(model, n: int) -> torch.Tensor:
    from explorer.data import load_image, sample_images

    paths = list(sample_images().values())
    images = [load_image(paths[i % len(paths)]) for i in range(n)]
    x = model.preprocess(images)
    return torch.where(torch.arange(n, device=x.device).view(-1, 1, 1, 1) % 2 == 1, x.flip(-1), x)


def _interleaved(fns: dict, repeat: int) -> tuple[dict, dict]:
    """Time each function `repeat` times, alternating them so load on a shared machine hits all alike.

    Returns ({name: [seconds, ...]}, {name: last output}); one untimed warm-up call each first.
    """
    outs = {k: f() for k, f in fns.items()}
    times: dict = {k: [] for k in fns}
    for _ in range(repeat):
        for k, f in fns.items():
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            t = time.perf_counter()
            outs[k] = f()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[k].append(time.perf_counter() - t)
    return times, outs


def bench_gradcam(spec: str, batch: int, repeat: int, device: str | None) -> dict:
    from captum.attr import LayerGradCam

    from explorer.attribution import attribute, resolve_layers
    from explorer.layers import hook_count, resolve
    from explorer.models import load_model

    model = load_model(spec, device=device)
    x = _batch(model, batch)
    with torch.no_grad():
        target = model.module(x).argmax(1)
    layers = [i.name for i in resolve_layers(model, "all")]

    def ours():
        return attribute(model, x, layers, "gradcam", target=target)

    def loop():
        m = model.module
        return {n: LayerGradCam(m, resolve(m, n)).attribute(x, target=target)[:, 0].detach() for n in layers}

    times, outs = _interleaved({"ours": ours, "loop": loop}, repeat)
    res, ref = outs["ours"], outs["loop"]
    t_ours, t_loop = statistics.median(times["ours"]), statistics.median(times["loop"])
    diff = max(float((res.maps[n] - ref[n].detach().cpu()).abs().max()) for n in layers)
    scale = max(float(ref[n].detach().abs().max()) for n in layers)
    assert hook_count(model.module) == 0
    return {
        "model": spec, "device": str(model.device), "batch": batch, "layers": len(layers),
        "one_pass_s": t_ours, "captum_loop_s": t_loop, "speedup": t_loop / t_ours, "target": 0.5 * len(layers),
        "speedup_of_minima": min(times["loop"]) / min(times["ours"]), "times": times,
        "max_abs_diff": diff, "max_abs_value": scale,
    }  # fmt: skip


def bench_examples(n_images: int, batch: int, device: str | None, layers: list[str]) -> dict:
    from explorer.data import demo_dataset, list_images
    from explorer.exemplars import dataset_examples
    from explorer.models import load_model

    model = load_model(SPECS[0], device=device)
    files = list_images(demo_dataset("shapes"))[:n_images]
    tmp = Path(tempfile.mkdtemp(prefix="bench-examples-"))
    try:
        for i, f in enumerate(files):
            shutil.copy(f, tmp / f"{i:04d}{f.suffix}")
        dataset_examples(model, tmp, layers, k=9, batch_size=batch, cache=False)  # warm-up
        t = time.perf_counter()
        res = dataset_examples(model, tmp, layers, k=9, batch_size=batch, cache=False)
        seconds = time.perf_counter() - t
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    used = next(iter(res.values())).images_used
    return {"model": SPECS[0], "layers": layers, "images": used, "batch": batch, "seconds": seconds,
            "images_per_s": used / seconds}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="batch 2, 1 repeat, 24 images: a noisy first look")
    ap.add_argument("--batch", type=int, default=None, help="images per batch (default 8; quick 2)")
    ap.add_argument("--repeat", type=int, default=None, help="timed repeats, median reported (default 3; quick 1)")
    ap.add_argument("--images", type=int, default=None, help="images for the examples pass (default 120; quick 24)")
    ap.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 steadies a busy machine)")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (2 if args.quick else 8)
    repeat = args.repeat or (1 if args.quick else 3)
    n_images = args.images or (24 if args.quick else 120)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch} at 224 px, "
          f"median of {repeat}{' (quick)' if args.quick else ''}")  # fmt: skip
    rows = []
    print(f"{'model':32s} {'layers':>6s} {'one pass s':>10s} {'Captum loop s':>13s} {'speed-up':>8s} {'(minima)':>8s} "
          f"{'target':>6s} {'max |diff|':>10s} {'max |map|':>9s}")  # fmt: skip
    for spec in SPECS:
        r = bench_gradcam(spec, batch, repeat, args.device)
        rows.append(r)
        print(f"{spec:32s} {r['layers']:6d} {r['one_pass_s']:10.3f} {r['captum_loop_s']:13.3f} {r['speedup']:8.1f} "
              f"{r['speedup_of_minima']:8.1f} {r['target']:6.1f} {r['max_abs_diff']:10.1e} "
              f"{r['max_abs_value']:9.2e}")  # fmt: skip
    ex = bench_examples(n_images, 32, args.device, ["blocks.3.2", "conv_head"])
    print(f"dataset examples ({ex['model']}, layers {', '.join(ex['layers'])}, {ex['images']} images, batch "
          f"{ex['batch']}): {ex['seconds']:.2f} s, {ex['images_per_s']:.1f} images/s")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"gradcam": rows, "examples": ex, "quick": args.quick}, indent=2))


if __name__ == "__main__":
    main()
