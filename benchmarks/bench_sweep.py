"""What a full freeze sweep costs next to one fine-tune, and what the fine-tuning defaults reach, on demo:digits.

    python benchmarks/bench_sweep.py [--device cpu] [--input-size 64] [--epochs 3] [--skip-defaults]

1. The fine-tuning defaults (``FinetuneSettings()``: augmentation, warm-up, best epoch by held-out loss), training
   every layer at `--input-size`: held-out accuracy of the kept epoch and wall time (the issue's "≥ 95 % in ≤ 3
   minutes on 2 CPU cores" check; the best frozen-feature probe is printed beside it).
2. ``--demo``: the Compare page's *Run the demo*, its three steps with the page's own settings
   (:mod:`explorer.ui.compare.demo`): fine-tune, compare, sweep; seconds each (target: fine-tune < 90 s).
3. In one process, one after the other: one train-everything run with the sweep's recipe (``sweep_settings``: no
   augmentation, early stopping, same split), then the full default sweep (``points="auto"``, both routes, seeds
   "auto", evaluation "auto"). Prints every
   task and the ratio sweep / one run (target ≤ 2.5), in wall time and in CPU time of this process, with the load
   average before and after each part: on a shared machine wall time moves with the others' work (and CPU time
   too, less), so a ratio only counts when the load stayed near or below the number of cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere


def defaults_run(base: object, size: int) -> dict[str, object]:
    """The fine-tune defaults, every layer trainable, at `size` px: held-out accuracy and seconds."""
    from explorer.transfer.training.finetune import FinetuneSettings, finetune

    t0 = time.perf_counter()
    r = finetune(base, "demo:digits", FinetuneSettings(input_size=size))  # type: ignore[arg-type]
    m = r.metadata["metrics"]
    row = {
        "heldout_acc": round(m["val_acc"], 4),
        "best_epoch": r.metadata["best_epoch"],
        "heldout_images": r.metadata["data"]["val_images"],
        "seconds": round(time.perf_counter() - t0, 1),
        "images_per_s": round(r.images_per_second, 1),
        "history": [(e["epoch"], round(e["val_acc"], 4), round(e["val_loss"], 4)) for e in r.epochs],
    }
    print("fine-tune at the defaults:", json.dumps(row), flush=True)
    return row


def demo_run(base: object) -> dict[str, object]:
    """The first-visit demo's three steps, timed, with the constants the button uses."""
    from explorer.data import resolve_data
    from explorer.transfer.comparison.compare import compare
    from explorer.transfer.study import DEMO, comparison_settings, sweep_budget
    from explorer.transfer.sweeping.sweep import sweep
    from explorer.transfer.training.finetune import finetune

    root = str(resolve_data(DEMO.data))
    t0 = time.perf_counter()
    run = finetune(base, DEMO.data, DEMO.finetune)  # type: ignore[arg-type]
    t1 = time.perf_counter()
    tuned = run.to_loaded_model(base)  # type: ignore[arg-type]
    c = DEMO.compare
    report = compare(base, tuned, root, **comparison_settings(c["images"], c["input"], c["probes"]))  # type: ignore[arg-type]
    t2 = time.perf_counter()
    sweep(base, root, settings=sweep_budget(DEMO.sweep), seeds=DEMO.seeds)  # type: ignore[arg-type]
    t3 = time.perf_counter()
    row = {
        "finetune_s": round(t1 - t0, 1),
        "heldout_acc": round(run.metadata["metrics"]["val_acc"], 4),
        "compare_s": round(t2 - t1, 1),
        "compare_images": report.data["images_used"],
        "sweep_s": round(t3 - t2, 1),
        "total_s": round(t3 - t0, 1),
        "load_after": round(os.getloadavg()[0], 2),
    }
    print("demo:", json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--input-size", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=None, help="most epochs per task (default: the sweep's)")
    ap.add_argument("--skip-defaults", action="store_true", help="skip part 1")
    ap.add_argument("--demo", action="store_true", help="time the first-visit demo (part 2)")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's). On a shared, busy machine use 1: two threads that wait for each "
        "other can run 10× slower, while one thread's CPU time stays what the work costs",
    )
    args = ap.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from explorer.models import load_model
    from explorer.transfer.sweeping.sweep import EPOCHS, sweep, sweep_settings
    from explorer.transfer.training.finetune import finetune

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    base = load_model(device=args.device)
    out: dict[str, object] = {}
    if not args.skip_defaults:
        out["defaults"] = defaults_run(base, args.input_size)
    if args.demo:
        out["demo"] = demo_run(base)
    epochs = args.epochs or EPOCHS
    s = sweep_settings(epochs, input_size=args.input_size)
    print(f"load average before: {os.getloadavg()[0]:.2f} ({os.cpu_count()} cores)", flush=True)
    t0, c0 = time.perf_counter(), time.process_time()
    one = finetune(base, "demo:digits", s)
    one_s, one_cpu = time.perf_counter() - t0, time.process_time() - c0
    print(f"load average after the run: {os.getloadavg()[0]:.2f}", flush=True)
    print(
        f"one train-everything run (the sweep's recipe: at most {epochs} epochs, early stopping, {args.input_size} "
        f"px, no augmentation): {one_s:.1f} s, "
        f"held-out {100 * one.metadata['metrics']['val_acc']:.1f} %",
        flush=True,
    )
    t1, c1 = time.perf_counter(), time.process_time()
    report = sweep(base, "demo:digits", points="auto", settings=s)
    sweep_s, sweep_cpu = time.perf_counter() - t1, time.process_time() - c1
    print(f"load average after the sweep: {os.getloadavg()[0]:.2f}", flush=True)
    for o in report.options:
        print(
            f"  {o.route:8s} {o.point:12s} {100 * o.accuracy:5.1f} % [{100 * o.low:.1f}, {100 * o.high:.1f}] "
            f"{o.trainable:>9,} trainable {o.seconds:6.1f} s {o.seeds} seed(s) {o.status} "
            f"loss {100 * o.loss:.1f} [{100 * o.loss_low:.1f}, {100 * o.loss_high:.1f}]",
            flush=True,
        )
    print(
        f"sweep: {sweep_s:.1f} s ({json.dumps({k: round(v, 1) for k, v in report.seconds.items()})}); "
        f"{len(report.options)} options",
        flush=True,
    )
    print(f"recommended: {report.chosen.label if report.chosen else None} — {report.choice.reason}")
    print(f"scored by {report.evaluation}; test accuracy {report.choice.test_accuracy} ({report.choice.test_note})")
    print(
        f"RATIO sweep / one train-everything run = {sweep_s / one_s:.2f} wall ({sweep_s:.1f} / {one_s:.1f} s), "
        f"{sweep_cpu / one_cpu:.2f} CPU ({sweep_cpu:.1f} / {one_cpu:.1f} s); target ≤ 2.5",
        flush=True,
    )
    out.update(
        cpu_ratio=sweep_cpu / one_cpu,
        one_run_s=one_s,
        sweep_s=sweep_s,
        ratio=sweep_s / one_s,
        seconds=report.seconds,
        options=report.rows(),
        choice=report.choice.reason,
        test_accuracy=report.choice.test_accuracy,
        evaluation=report.evaluation,
    )
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
