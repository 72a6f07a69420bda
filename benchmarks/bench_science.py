"""The default freeze sweep on real and generated data: what it chose, against the best option it measured.

    python benchmarks/bench_science.py [textures-240] [textures-600] [shapes] [digits] [--out results.json]

One torch thread (honest CPU figures on a shared machine), the bundled EfficientNet-Lite0, every default of
``explorer.transfer.sweeping.sweep.sweep`` (margin 2 points, seeds auto, evaluation auto, the data's own input size).
Generated sets come from ``explorer.data.synthetic.generated_folder`` (seed 0) under /tmp/layer-explorer-science.
Prints one JSON record per data set: evaluation, scored images, every option (accuracy, status, loss upper bound,
seeds, seed SD, converged, seconds), the best, the choice, its held-apart test accuracy, seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SETS = {
    "textures-240": ("textures", 240),
    "textures-600": ("textures", 600),
    "shapes": ("shapes", 300),
    "digits": (None, None),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sets", nargs="*", default=list(SETS), choices=list(SETS))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    from explorer.data.synthetic import generated_folder
    from explorer.models import load_model
    from explorer.transfer.sweeping.sweep import sweep

    model = load_model("bundled:efficientnet_lite0")
    rows = {}
    for name in args.sets:
        kind, n = SETS[name]
        data = "demo:digits" if kind is None else str(generated_folder(kind, f"/tmp/layer-explorer-science/{name}", n))
        load = os.getloadavg()[0]
        t = time.time()
        r = sweep(model, data)
        c = r.choice
        rows[name] = {
            "seconds": round(time.time() - t, 1),
            "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2),
            "evaluation": r.evaluation,
            "scored": r.data["scored_images"],
            "input_size": r.settings["input_size"],
            "options": [
                {
                    "option": o.key,
                    "accuracy": round(o.accuracy, 4),
                    "status": o.status,
                    "loss_high": round(o.loss_high, 4),
                    "seeds": o.seeds,
                    "seed_sd": None if o.seeds < 2 else round(o.seed_sd, 4),
                    "converged": o.converged,
                    "seconds": round(o.seconds, 1),
                }  # fmt: skip
                for o in r.options
            ],
            "best": r.best.key if r.best else None,
            "best_accuracy": r.best.accuracy if r.best else None,
            "chosen": r.chosen.key if r.chosen else None,
            "chosen_accuracy": r.chosen.accuracy if r.chosen else None,
            "test_accuracy": c.test_accuracy,
            "test_note": c.test_note,
            "reason": c.reason,
        }
        print(json.dumps({name: rows[name]}, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
