"""`sweep`: measure held-out accuracy and cost at each freeze point, by fine-tuning and by a linear classifier."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import explorer.models
from explorer.cli import (
    add_model_args,
    add_ray_args,
    load_model_arg,
    positive_int,
    print_json,
    print_table,
    progress_bar,
)
from explorer.errors import ExplorerError
from explorer.transfer.sweeping.sweep import SweepError, sweep, sweep_settings


def register(subparsers: Any) -> None:
    """Add the `sweep` subcommand."""
    d = sweep_settings()
    p = subparsers.add_parser(
        "sweep",
        help="measure held-out accuracy and cost of freezing at several points (fine-tune and linear routes)",
        description="For each freeze point and route, train under one budget (early stopping on an inner "
        "validation split, a minimum number of steps) and score on images no training saw: a held-out split, or "
        "k-fold cross-validation when the split is too small to resolve the margin. Report accuracy with a 95 % "
        "interval, its spread over seeds, trainable parameters, seconds and images/s; recommend the cheapest option "
        "whose upper 95 % bound on its loss against the best is below the margin (a paired bootstrap over images "
        "and seeds, simultaneous over all options), else the best; report the choice's accuracy on images that took "
        "no part in choosing. Each finished task is written to OUT at once; rerunning the same command resumes "
        "where it stopped. Writes OUT (.json) and a CSV and HTML summary beside it.",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="FOLDER|demo:NAME", help="image folder or demo:NAME")
    p.add_argument(
        "--points",
        default="auto",
        metavar="auto|L1,L2,…",
        help="freeze points: auto (none, the last block of each stage, head only) or ladder layers and 'none'",
    )
    p.add_argument("--routes", default="finetune,linear", help="finetune and/or linear (default both)")
    p.add_argument(
        "--epochs", type=positive_int, default=d.epochs, help=f"most epochs per task ({d.epochs}; early stopping)"
    )
    p.add_argument(
        "--seeds",
        type=_seeds,
        default="auto",
        help="training seeds per fine-tune option, or auto (default: a second seed where a run takes < 30 s)",
    )
    p.add_argument(
        "--margin", type=float, default=2.0, metavar="POINTS", help="non-inferiority margin in accuracy points (2)"
    )
    p.add_argument(
        "--evaluation",
        choices=["auto", "holdout", "cv"],
        default="auto",
        help="held-out split, k-fold cross-validation, or auto (cross-validate when the split cannot resolve the "
        "margin)",
    )
    p.add_argument("--folds", type=positive_int, default=5, help="folds of the cross-validation (5)")
    p.add_argument("--out", required=True, metavar="SWEEP.json", help="results; .csv and .html are written beside it")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr, help=f"new head (default {d.lr:g})")
    p.add_argument("--backbone-lr", type=float, default=d.backbone_lr, help=f"trainable layers ({d.backbone_lr:g})")
    p.add_argument(
        "--augment",
        choices=["none", "light", "light+flip"],
        default=d.augment,
        help="none (default) lets every frozen prefix be computed once; augmentation trains every task on images",
    )
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"held out per class ({d.val_fraction})")
    p.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        metavar="PX",
        help="(default: the data's own size, at most the model's, as finetune)",
    )
    p.add_argument("--max-images", type=positive_int, default=None, metavar="N", help="a stratified subset of N images")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the split and of the first training seed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_ray_args(p, "each (point, route, seed) as a task")
    p.set_defaults(func=cmd_sweep)


def _seeds(text: str) -> int | str:
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


def _settings(args: argparse.Namespace) -> Any:
    return sweep_settings(
        args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        augment=args.augment,
        val_fraction=args.val_fraction,
        input_size=args.input_size,
        max_images=args.max_images,
        seed=args.seed,
    )


def _runner(args: argparse.Namespace) -> Any:
    """With --ray, the Ray runner of explorer.distributed (RayMissing in one line without Ray); else None."""
    if args.ray is None:
        if args.workers:
            raise ExplorerError("--workers sets up Ray workers: add --ray auto (or a cluster address).")
        return None
    # start-up cost: explorer.distributed (Ray back end, ~15 ms) loads only for the commands that use it, not for --help
    from explorer.distributed import ray_sweep_runner

    return ray_sweep_runner(args.ray, workers=args.workers, device=args.device)


def _driver_model(args: argparse.Namespace) -> Any:
    """With --ray, this process loads the model on its CPU (to plan and check); the workers load it on --device."""
    return explorer.models.load_model(args.model, arch=args.arch, device="cpu")


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run (or resume) the sweep, print one row per option and the recommendation."""
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise SweepError(f"The sweep output must end in .json (got {out.name}); CSV and HTML go beside it.")
    settings = _settings(args)
    settings.check()
    points: str | list[str] = "auto" if args.points.strip() == "auto" else [p for p in args.points.split(",") if p]
    routes = tuple(r.strip() for r in args.routes.split(",") if r.strip())
    runner = _runner(args)
    model = load_model_arg(args) if runner is None else _driver_model(args)
    try:
        report = sweep(
            model,
            args.data,
            points=points,
            routes=routes,
            seeds=args.seeds,
            margin=args.margin / 100,
            evaluation=args.evaluation,
            folds=args.folds,
            settings=settings,
            out=out,
            runner=runner,
            progress=progress_bar("sweeping"),
        )
    except KeyboardInterrupt:
        print(f"error: interrupted; finished tasks are kept in {out}: rerun the command to resume.", file=sys.stderr)
        return 130
    if runner is not None:
        run = runner.last
        print(
            f"Ray: {run.executed if run else 0} task(s) on {len(run.workers) if run else 0} worker(s), "
            f"{run.retries if run else 0} rerun after a worker died",
            file=sys.stderr,
        )
    if args.json:
        print_json(report.to_dict())
        return 0
    cols = ("point", "route", "accuracy", "low", "high", "seed_sd", "trainable", "seconds", "loss_vs_best", "status")
    print_table([{c: r[c] for c in cols} for r in report.rows()])
    c = report.choice
    d = report.data
    print(f"\nscored on: {report.evaluation}, {d.get('scored_images')} images")
    if c.point is None:
        print(f"no recommendation: {c.withheld}")
    else:
        print(f"recommended: {report.chosen.label if report.chosen else c.point}")
        print(c.reason)
        if c.test_accuracy is not None:
            print(
                f"test accuracy: {100 * c.test_accuracy:.1f} % ({c.test_note}); on the images that chose it: "
                f"{100 * (c.choice_accuracy or 0):.1f} %"
            )
    print(f"decision: {c.test}")
    for note in report.notes:
        print(f"note: {note}")
    print(f"wrote {out}, {out.with_suffix('.csv')}, {out.with_suffix('.html')}")
    return 0
