"""`finetune` (train a copy with a freeze point, save a checkpoint) and `compare` (base vs tuned, layer by layer)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

import explorer.models
from explorer.cli import add_model_args, load_model_arg, positive_int, print_json, print_table, progress_bar
from explorer.transfer.comparison.compare import CompareError, compare
from explorer.transfer.comparison.crossexcite import as_plugin
from explorer.transfer.reporting.report_html import save_report
from explorer.transfer.study import open_pair
from explorer.transfer.sweeping.sweep import load_sweep
from explorer.transfer.training.checkpoints import check_writable, load_resume_state
from explorer.transfer.training.finetune import FinetuneError, FinetuneSettings, finetune
from explorer.transfer.training.resume import resume, run_checkpoint
from explorer.transfer.training.runs import begin_run, finish_run


def register(subparsers: Any) -> None:
    """Add the `finetune` and `compare` subcommands."""
    d = FinetuneSettings()
    p = subparsers.add_parser(
        "finetune",
        help="fine-tune a model on an image folder with a freeze point; saves a .safetensors checkpoint",
        description="Fine-tune a copy of the model on an image folder (one sub-folder per class) or a demo "
        "dataset. Everything up to and including --freeze-after stays frozen (weights and BatchNorm statistics). "
        "The checkpoint is rewritten after every epoch, so an interrupted run keeps its last complete epoch, and "
        "`--resume` continues a killed run from there (a resume state is saved beside the checkpoint each epoch). "
        "An --out of the form DIR/NAME/NAME.safetensors is recorded as a run the app lists.",
    )
    add_model_args(p)
    p.add_argument("--data", metavar="FOLDER|demo:NAME", help="image folder, or demo:digits / demo:shapes (required)")
    p.add_argument(
        "--freeze-after", metavar="LAYER|none", help="ladder layer to freeze up to; none: train all (required)"
    )
    p.add_argument("--out", metavar="CKPT", help="checkpoint path ending in .safetensors, + .json sidecar (required)")
    p.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue an interrupted run (its folder or checkpoint) from its last complete epoch, with its own "
        "settings and data; every other option is ignored",
    )
    p.add_argument("--epochs", type=positive_int, default=d.epochs, help=f"passes over the data (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"(default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.lr, help=f"learning rate of the new head (default {d.lr:g})")
    p.add_argument(
        "--backbone-lr", type=float, default=d.backbone_lr, help=f"for trainable pretrained layers ({d.backbone_lr:g})"
    )
    p.add_argument(
        "--weight-decay",
        type=float,
        default=d.weight_decay,
        help=f"weights only, not BN or biases ({d.weight_decay:g})",
    )
    p.add_argument(
        "--warmup", type=float, default=d.warmup, help=f"fraction of steps with a rising learning rate ({d.warmup:g})"
    )
    p.add_argument("--schedule", choices=["cosine", "constant"], default=d.schedule)
    p.add_argument(
        "--bn",
        choices=["train", "frozen"],
        default=d.bn,
        help="train: trainable BatchNorms re-estimate their statistics (default); frozen: keep the base's",
    )
    p.add_argument(
        "--patience",
        type=int,
        default=d.patience,
        help=f"stop after this many epochs without a better held-out loss (default {d.patience}; 0: never)",
    )
    p.add_argument(
        "--keep-last", action="store_true", help="end with the last epoch instead of the best one by held-out loss"
    )
    p.add_argument("--augment", choices=["none", "light", "light+flip"], default=d.augment)
    p.add_argument("--val-fraction", type=float, default=d.val_fraction, help=f"held out per class ({d.val_fraction})")
    p.add_argument(
        "--input-size", type=positive_int, default=None, metavar="PX", help="train at this size (default: the model's)"
    )
    p.add_argument(
        "--max-images", type=positive_int, default=None, metavar="N", help="use a stratified subset of N images"
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint at --out")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_finetune)

    p = subparsers.add_parser(
        "compare",
        help="compare a base model and its fine-tuned checkpoint layer by layer; recommend a freeze point",
        description="On the images the fine-tune held out (when DATA is its tuning data): per ladder block, debiased "
        "CKA between the two models' activations with a 95 % interval, the same for tuned weights with base BatchNorm "
        "statistics and the reverse, weight change (absolute, per step budget, relative), BatchNorm statistic change, "
        "and linear-probe accuracy of the base features; then the advice: measured when --sweep gives a freeze "
        "sweep, else predicted from CKA (or withheld when the tuned model has not learned). Writes OUT (.json) plus "
        "an HTML summary and a CSV beside it.",
    )
    p.add_argument("--base", default=None, metavar="SPEC", help="the base model (default: the tuned one's base_spec)")
    p.add_argument("--tuned", required=True, metavar="CKPT", help="the fine-tuned checkpoint")
    p.add_argument("--data", required=True, metavar="FOLDER|demo:NAME", help="images to compare on")
    p.add_argument(
        "--out", required=True, metavar="REPORT.json", help="report path; .html and .csv are written beside it"
    )
    p.add_argument(
        "--max-images", type=positive_int, default=1000, metavar="N", help="images used (default 1000; 0: all)"
    )
    p.add_argument(
        "--batch-size", type=positive_int, default=32, help="images per forward pass: peak memory (default 32)"
    )
    p.add_argument("--grid", type=int, default=4, help="average-pool feature maps to GRID×GRID for CKA (default 4)")
    p.add_argument("--sweep", default=None, metavar="SWEEP.json", help="a freeze sweep that decides")
    p.add_argument(
        "--no-bn-parts", action="store_true", help="skip the two BatchNorm hybrids (two forward passes fewer)"
    )
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds of the probes (default 5)")
    p.add_argument("--no-probes", action="store_true", help="skip the linear probes (faster)")
    p.add_argument(
        "--input-size", type=positive_int, default=None, metavar="PX", help="compare at this size (default: tuned's)"
    )
    p.add_argument(
        "--cross-excitation",
        type=int,
        default=0,
        metavar="UNITS",
        help="render UNITS channels of up to 6 blocks in both models (same seed) and measure cross-excitation; "
        "slow on CPU (default 0: off)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--json", action="store_true", help="print the report JSON to stdout too")
    p.set_defaults(func=cmd_compare)


def _device(args: argparse.Namespace) -> str | None:
    return None if args.device in (None, "auto") else args.device


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune, print the per-epoch metrics and where the checkpoint is."""
    if args.resume:
        return _resume(args)
    missing = [f"--{n}" for n in ("data", "freeze-after", "out") if getattr(args, n.replace("-", "_")) is None]
    if missing:
        raise FinetuneError(f"finetune needs {', '.join(missing)} (or --resume RUN to continue an interrupted run).")
    freeze = None if args.freeze_after.lower() in ("none", "") else args.freeze_after
    settings = FinetuneSettings(
        freeze_after=freeze,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        backbone_lr=args.backbone_lr,
        weight_decay=args.weight_decay,
        warmup=args.warmup,
        schedule=args.schedule,
        bn=args.bn,
        patience=args.patience or None,
        keep_best=not args.keep_last,
        augment=args.augment,
        val_fraction=args.val_fraction,
        input_size=args.input_size,
        max_images=args.max_images,
        seed=args.seed,
    )
    settings.check()
    out = check_writable(args.out, overwrite=args.overwrite)  # refuse before the model loads
    model = load_model_arg(args)
    progress, epochs = _epoch_printer()
    recorded = begin_run(out, args.data)
    try:
        result = finetune(model, args.data, settings, out=out, overwrite=args.overwrite, progress=progress)
    except KeyboardInterrupt:
        kept = f"the checkpoint of the best complete epoch is at {out}" if epochs else "no epoch completed"
        print(f"error: interrupted; {kept}.", file=sys.stderr)
        return 130
    if recorded:
        finish_run(out, "stopped" if result.stopped else "done")
    return _report(args, result, freeze)


def _resume(args: argparse.Namespace) -> int:
    """`finetune --resume RUN`: continue an interrupted run where its last complete epoch left it."""
    checkpoint = run_checkpoint(args.resume)
    load_resume_state(checkpoint)  # one line now if there is nothing to resume, before a model loads
    progress, epochs = _epoch_printer()
    recorded = begin_run(checkpoint)
    try:
        result = resume(checkpoint, device=_device(args), progress=progress)
    except KeyboardInterrupt:
        print(f"error: interrupted; `--resume {args.resume}` continues from the last complete epoch.", file=sys.stderr)
        return 130
    if recorded:
        finish_run(checkpoint, "stopped" if result.stopped else "done")
    return _report(args, result, result.metadata.get("freeze_after"))


def _epoch_printer() -> tuple[Any, list[dict[str, Any]]]:
    """A progress bar that also prints one line per completed epoch; the list the epochs are collected in."""
    bar = progress_bar("fine-tuning")
    epochs: list[dict[str, Any]] = []

    def progress(done: int, total: int, preview: Any) -> None:
        if isinstance(preview, dict) and preview.get("phase") == "val":
            epochs.append(preview)
            tqdm.write(
                f"epoch {preview['epoch']}: train loss {preview['train_loss']:.3f} acc {preview['train_acc']:.3f} · "
                f"held-out loss {preview['val_loss']:.3f} acc {preview['val_acc']:.3f} · {preview['seconds']:.0f} s",
                file=sys.stderr,
            )
        bar(done, total, preview)

    return progress, epochs


def _report(args: argparse.Namespace, result: Any, freeze: str | None) -> int:
    """Print the epochs, the kept epoch and where the checkpoint is (or the JSON summary)."""
    summary = {
        "checkpoint": str(result.checkpoint),
        "best_epoch": result.metadata.get("best_epoch"),
        "heldout_accuracy": result.metadata.get("metrics", {}).get("val_acc"),
        "epochs": result.epochs,
        "images_per_second": result.images_per_second,
        "seconds": result.seconds,
        "parameters": result.metadata.get("parameters"),
        "freeze_after": freeze,
    }
    if args.json:
        print_json(summary)
        return 0
    print_table([{k: round(v, 4) if isinstance(v, float) else v for k, v in e.items()} for e in result.epochs])
    p = result.metadata.get("parameters", {})
    m = result.metadata.get("metrics", {})
    if isinstance(m.get("val_acc"), float):
        print(f"kept epoch {result.metadata.get('best_epoch')}: held-out accuracy {100 * m['val_acc']:.1f} % "
              f"on {result.metadata['data']['val_images']} images · {result.seconds:.0f} s in all")  # fmt: skip
    print(
        f"checkpoint {result.checkpoint} (+ {Path(str(result.checkpoint)).with_suffix('.json').name}) · "
        f"{p.get('trainable', 0):,} trainable / {p.get('non_trainable', 0):,} frozen parameters · "
        f"{result.images_per_second:.1f} images/s"
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    """Run the comparison, write report.json/.html/.csv, print the table and the recommendation."""
    out = Path(args.out)
    if out.suffix.lower() != ".json":
        raise CompareError(f"The report path must end in .json (got {out.name}); .html and .csv go beside it.")
    device = _device(args)
    base = load_model_arg(argparse.Namespace(model=args.base, arch=None, device=args.device)) if args.base else None
    base, tuned = open_pair(
        args.tuned, open_model=lambda spec, arch: explorer.models.load_model(spec, arch=arch, device=device), base=base
    )
    plugin = None
    if args.cross_excitation > 0:
        plugin = as_plugin(units=args.cross_excitation, progress=progress_bar("rendering"))
    report = compare(
        base,
        tuned,
        args.data,
        max_images=args.max_images or None,
        batch_size=args.batch_size,
        grid=args.grid,
        probes=not args.no_probes,
        bn_parts=not args.no_bn_parts,
        sweep=load_sweep(args.sweep) if args.sweep else None,
        probe_folds=args.folds,
        seed=args.seed,
        input_size=args.input_size,
        cross_excitation=plugin,
        progress=progress_bar("comparing"),
    )
    written = save_report(report, out)
    if args.json:
        print_json(report.to_dict())
        return 0
    cols = ("index", "name", "cka", "cka_low", "cka_high", "cka_weights", "cka_stats", "weight_rms", "weight_per_step",
            "bn_shift", "probe_acc", "cross_excitation")  # fmt: skip
    print_table([{c: r[c] for c in cols} for r in report.rows()])
    rec = report.recommendation
    acc = f"{100 * report.tuned_accuracy:.1f} %" if report.tuned_accuracy is not None else "not reported"
    print(f"\nimages: {report.heldout.get('note')} Tuned accuracy on them: {acc}.")
    if rec.source == "withheld":
        print(f"no freeze point: {rec.reason}")
        for t in rec.try_next:
            print(f"try: {t}")
    else:
        kind = "measured" if rec.source == "sweep" else "predicted from CKA (no sweep)"
        print(f"freeze point ({kind}): {rec.freeze_after or 'none (train every layer)'}")
        print(rec.reason)
        if rec.agreement:
            print(rec.agreement)
        print(f"{rec.trainable:,} trainable / {rec.non_trainable:,} non-trainable of {rec.total:,} parameters")
    print(f"the classic transfer-learning 2x2 guide: {rec.guide.size} data, {rec.guide.similarity} task: "
          f"{rec.guide.advice}")  # fmt: skip
    for w in [*rec.caveats, *report.warnings]:
        print(f"note: {w}")
    print("wrote " + ", ".join(str(p) for p in written))
    return 0
