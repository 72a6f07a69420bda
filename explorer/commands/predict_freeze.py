"""`predict-freeze`: where to freeze, predicted in seconds from one pass of the base model (no training)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from explorer.cli import add_model_args, load_model_arg, positive_int, print_json, print_table, progress_bar
from explorer.transfer.sweeping.predict import (
    DEFAULT_ESTIMATOR,
    ESTIMATORS,
    FOLDS,
    SAMPLE,
    PredictError,
    predict_freeze,
)
from explorer.transfer.training.checkpoints import write_atomic


def register(subparsers: Any) -> None:
    """Add the `predict-freeze` subcommand."""
    p = subparsers.add_parser(
        "predict-freeze",
        help="predict where to freeze (point and route) in seconds, from one pass of the base model; no training",
        description="Score every freeze point a sweep would try (none, stage ends, head only) with transferability "
        "estimators computed on one pass of the base model over a stratified sample of the images: a "
        "cross-validated linear probe, LogME, k-nearest-neighbour and nearest-centroid accuracy, Fisher's "
        "ratio. Predicts an option (a linear classifier on a point, or fine-tuning after it) with the reason; "
        "the sample is the training part of the split a sweep with the same --max-images, --val-fraction and "
        "--seed makes, so that sweep can measure the prediction on images it never saw. Writes OUT (.json).",
    )
    add_model_args(p)
    p.add_argument("--data", required=True, metavar="FOLDER|demo:NAME", help="image folder or demo:NAME")
    p.add_argument("--out", required=True, metavar="PREDICTION.json", help="where to write the prediction (JSON)")
    p.add_argument(
        "--input-size",
        type=positive_int,
        default=None,
        metavar="PX",
        help="(default: the sweep's, the data's own size at most the model's)",
    )
    p.add_argument(
        "--max-images",
        type=positive_int,
        default=None,
        metavar="N",
        help="the stratified subset the split is made of, as the sweep's --max-images (default: every image)",
    )
    p.add_argument(
        "--sample",
        type=positive_int,
        default=SAMPLE,
        metavar="N",
        help=f"score at most N images of the split's training part (default {SAMPLE})",
    )
    p.add_argument("--val-fraction", type=float, default=0.2, help="held out per class, as the sweep's (0.2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split, the sample and the folds (default 0)")
    p.add_argument(
        "--estimator",
        choices=list(ESTIMATORS),
        default=DEFAULT_ESTIMATOR,
        help=f"the estimator whose prediction is the headline (default {DEFAULT_ESTIMATOR}; every one is computed)",
    )
    p.add_argument("--folds", type=positive_int, default=FOLDS, help=f"cross-validation folds (default {FOLDS})")
    p.add_argument(
        "--pixel-check",
        action="store_true",
        help="predict training every layer when the raw pixels (8×8) score higher than the pretrained features at "
        "some point (off by default: it did not measure better, docs/science.md §5)",
    )
    p.add_argument("--json", action="store_true", help="print the prediction as JSON")
    p.set_defaults(func=cmd_predict_freeze)


def cmd_predict_freeze(args: argparse.Namespace) -> int:
    """Predict, write OUT, print one row per point and the predicted option."""
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise PredictError(f"The prediction is written as JSON: --out must end in .json (got {out.name}).")
    if out.exists() and out.is_dir():
        raise PredictError(f"--out {out} is a folder; give a file name ending in .json.")
    model = load_model_arg(args)
    report = predict_freeze(
        model,
        args.data,
        input_size=args.input_size,
        max_images=args.max_images,
        sample=args.sample,
        seed=args.seed,
        val_fraction=args.val_fraction,
        estimator=args.estimator,
        folds=args.folds,
        pixel_check=args.pixel_check,
        progress=progress_bar("predicting"),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(out, json.dumps(report.to_dict(), indent=1).encode())
    if args.json:
        print_json(report.to_dict())
        return 0
    rows = [{"point": r.layer, "features": r.features, **r.scores} for r in report.layers]
    rows.append({"point": "(raw pixels)", "features": 3 * report.settings["pixel_grid"] ** 2, **report.pixels})
    print_table(rows)
    p = report.prediction
    print(f"\npredicted: {p.label}")
    print(p.reason)
    others = [f"{k}: {q.label}" for k, q in report.predictions.items() if k != p.estimator and q.label != p.label]
    if others:
        print(f"other estimators differ: {'; '.join(others)}")
    print(f"{report.seconds:.1f} s on {report.data['images']} images; wrote {out}")
    return 0
