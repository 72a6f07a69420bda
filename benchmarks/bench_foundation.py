"""Model load time and ladder build time on this machine.

    python benchmarks/bench_foundation.py [--repeat 5] [--device cpu]

Loads are timed in fresh subprocesses (cold: imports included) and in-process (warm: imports done), so the
numbers say both what a first `streamlit run` costs and what switching models costs inside the app.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

SPECS = [
    "bundled:efficientnet_lite0",
    "bundled:efficientnet_lite2",
    "torchvision:resnet50:untrained",
    "torchvision:vit_b_16:untrained",
    "timm:convnext_tiny:untrained",
]

COLD = """
import time, json
t0 = time.perf_counter()
from explorer.models import load_model
t1 = time.perf_counter()
m = load_model({spec!r}, device={device!r})
t2 = time.perf_counter()
print(json.dumps({{"import_s": t1 - t0, "load_s": t2 - t1}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    import torch

    from explorer.layers import ladder
    from explorer.models import load_model

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    cold_code = COLD.format(spec=SPECS[0], device=args.device)
    cold = [json.loads(subprocess.check_output([sys.executable, "-c", cold_code], cwd=ROOT)) for _ in range(3)]
    print(
        f"cold start {SPECS[0]}: import {statistics.median(c['import_s'] for c in cold):.2f} s, "
        f"load {statistics.median(c['load_s'] for c in cold):.2f} s (median of 3 fresh processes)"
    )
    print(
        f"{'model':34s} {'load s (median)':>16s} {'ladder s (median)':>18s} {'blocks':>7s} {'full':>5s} {'params':>12s}"
    )
    for spec in SPECS:
        loads, ladders = [], []
        for _ in range(args.repeat):
            t = time.perf_counter()
            m = load_model(spec, device=args.device)
            loads.append(time.perf_counter() - t)
            t = time.perf_counter()
            rows = ladder(m, "blocks")
            ladders.append(time.perf_counter() - t)
        full = ladder(m, "full")
        n_params = sum(p.numel() for p in m.module.parameters())
        print(
            f"{spec:34s} {statistics.median(loads):16.3f} {statistics.median(ladders):18.3f} "
            f"{len(rows):7d} {len(full):5d} {n_params:12,d}"
        )


if __name__ == "__main__":
    main()
