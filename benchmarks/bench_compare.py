"""The full before/after comparison on 1,000 images, and fine-tuning throughput, for the bundled model.

    python benchmarks/bench_compare.py [--images 1000] [--sizes 500] [--device cpu] [--ft-images 128]

1. Fine-tuning throughput (training images/second, forward + backward + AdamW step) for three freeze points:
   none (every layer trains), blocks.3.2 (first half frozen) and global_pool (head only), at the model's input
   size; on CUDA too whenever a GPU is present. Then the tuned checkpoint: one epoch, every layer, 60 % held out.
2. The comparison (`explorer.transfer.comparison.compare.compare`: CKA with jackknife intervals and BatchNorm hybrids,
weight
   change, probes) of the bundled model and the run above on demo:digits, on its held-out images (at most `--images`),
   for each image count, each in a fresh process so peak memory is its own: seconds (forward passes, and CKA with
   probes, apart), peak Python-heap memory (tracemalloc; tensors are not on it) and peak resident memory (VmHWM, or
   ru_maxrss where /proc is missing) minus the resident memory once both models are loaded. A forward
   pre-hook counts the images each model sees, to show every image passes through each model exactly once.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

CHILD = r"""
import json, resource, sys, time, tracemalloc
sys.path.insert(0, {root!r})
import torch
from explorer.transfer.comparison.compare import compare
from explorer.models import load_model

def rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20

def peak_rss_mb():
    # VmHWM is this process's own peak; ru_maxrss survives exec on Linux, so a child started by a parent that
    # had just fine-tuned (3.5 GB) would report the parent's peak.
    try:
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

base = load_model(device={device!r})
tuned = load_model({ckpt!r}, device={device!r})
seen = {{"base": 0, "tuned": 0}}
def counter(key):
    def hook(_m, args):
        if args[0].shape[0] > 1:  # batches of one are the ladder's shape traces
            seen[key] += args[0].shape[0]
    return hook
handles = [base.module.register_forward_pre_hook(counter("base")),
           tuned.module.register_forward_pre_hook(counter("tuned"))]
loaded = rss_mb()
tracemalloc.start()
t0 = time.perf_counter()
report = compare(base, tuned, "demo:digits", max_images={n}, probes={probes})
seconds = time.perf_counter() - t0
_, py_peak = tracemalloc.get_traced_memory()
peak = peak_rss_mb()
for h in handles:
    h.remove()
print(json.dumps({{"images": report.data["images_used"], "seconds": seconds, "forward_s": report.seconds["forward"],
                  "probes_s": report.seconds["cka_and_probes"], "tracemalloc_peak_mb": py_peak / 2**20,
                  "rss_peak_mb": peak, "rss_loaded_mb": loaded, "seen": seen,
                  "recommendation": report.recommendation.freeze_after}}))
"""


def tuned_checkpoint(device: str, out: Path) -> None:
    """One epoch on digits training every layer, 60 % of the images held out: ~1,078 held-out images to compare on."""
    from explorer.models import load_model
    from explorer.transfer.training.finetune import FinetuneSettings, finetune

    t0 = time.perf_counter()
    r = finetune(load_model(device=device), "demo:digits", FinetuneSettings(epochs=1, val_fraction=0.6), out=out)
    print(f"tuned checkpoint: {r.metadata['data']['val_images']} held-out images, {time.perf_counter() - t0:.0f} s")


def finetune_throughput(device: str, n: int, out: Path | None) -> list[dict]:
    """Images/s of one epoch over `n` digits for three freeze points."""
    from explorer.models import load_model
    from explorer.transfer.training.finetune import FinetuneSettings, finetune

    base = load_model(device=device)
    rows = []
    for point in (None, "blocks.3.2", "global_pool"):
        s = FinetuneSettings(freeze_after=point, epochs=1, max_images=n, val_fraction=0.0, batch_size=32)
        t0 = time.perf_counter()
        r = finetune(base, "demo:digits", s)
        rows.append(
            {
                "device": device,
                "freeze_after": point or "none",
                "images": r.metadata["data"]["train_images"],
                "input": base.input_size[0],
                "images_per_s": round(r.images_per_second, 2),
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000, help="images for the headline comparison (default 1000)")
    ap.add_argument("--sizes", default="500", help="smaller image counts, to show how memory scales")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ft-images", type=int, default=128, help="images per fine-tuning throughput run")
    ap.add_argument(
        "--glibc-default",
        action="store_true",
        help="keep glibc's adaptive mmap threshold in the comparison processes (by default they run with "
        "MALLOC_MMAP_THRESHOLD_=1048576 so freed activations go back to the OS and peak memory shows what the "
        "algorithm holds, not heap fragmentation, which grows slowly with the number of batches)",
    )
    args = ap.parse_args()

    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    print("glibc malloc: " + ("default" if args.glibc_default else "MALLOC_MMAP_THRESHOLD_=1048576"), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "digits.safetensors"
        ft = finetune_throughput(args.device, args.ft_images, None)
        if torch.cuda.is_available() and args.device == "cpu":
            ft += finetune_throughput("cuda", args.ft_images * 4, None)
        tuned_checkpoint(args.device, ckpt)
        sizes = [int(s) for s in args.sizes.split(",") if s] + [args.images]
        runs = []
        for n in sizes:
            for probes in (True, False):
                code = CHILD.format(root=str(ROOT), device=args.device, ckpt=str(ckpt), n=n, probes=probes)
                env = dict(os.environ)
                if not args.glibc_default:
                    env.setdefault("MALLOC_MMAP_THRESHOLD_", "1048576")
                out = subprocess.check_output([sys.executable, "-c", code], text=True, env=env)
                res = json.loads(out.strip().splitlines()[-1])
                res["probes"] = probes
                runs.append(res)
                print(
                    f"compare {res['images']:5d} images, probes {'on ' if probes else 'off'}: {res['seconds']:6.1f} s "
                    f"(forward {res['forward_s']:.1f} s, CKA and probes {res['probes_s']:.1f} s); peak RSS "
                    f"{res['rss_peak_mb']:.0f} MB = loaded {res['rss_loaded_mb']:.0f} + "
                    f"{res['rss_peak_mb'] - res['rss_loaded_mb']:.0f} MB; tracemalloc peak "
                    f"{res['tracemalloc_peak_mb']:.1f} MB; images through base/tuned {res['seen']['base']}/"
                    f"{res['seen']['tuned']}",
                    flush=True,
                )
    print(json.dumps({"finetune": ft, "compare": runs}, indent=1))


if __name__ == "__main__":
    main()
