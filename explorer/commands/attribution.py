"""`attribute` (per-layer attribution maps of an image) and `examples` (dataset examples of a layer's channels)."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from explorer.attribution import METHODS, attribute, method_cost
from explorer.attribution.export import grid_png, magnitudes_csv
from explorer.cli import add_model_args, load_model_arg, positive_int, progress_bar
from explorer.data import load_image, resolve_data
from explorer.errors import ExplorerError
from explorer.exemplars import dataset_examples, patch_image


class CommandError(ExplorerError):
    """A command-line value the command cannot use."""


def register(subparsers: Any) -> None:
    """Add the `attribute` and `examples` subcommands."""
    p = subparsers.add_parser(
        "attribute",
        help="per-layer attribution maps of an image (Grad-CAM, Integrated Gradients, ...)",
        description="Attribute the predicted (or given) class of an image to every chosen layer. Writes one overlay "
        "PNG per layer, grid.png with all of them above their colour bar, magnitudes.csv (every raw value), the "
        "model's view of the image, and attribution.json with the raw magnitudes, the top "
        "channels of each layer and the cost. The cost is printed before the work starts.",
    )
    p.add_argument("image", metavar="IMAGE", help="an image file")
    add_model_args(p)
    p.add_argument("--layers", default="all", help="'all' (blocks with a spatial map), 'blocks', or comma-separated "
                   "layer names (see `python -m explorer layers`)")  # fmt: skip
    p.add_argument("--method", default="gradcam", choices=list(METHODS), help="attribution method (default gradcam)")
    p.add_argument("--target", default=None, help="class index or name (default: the predicted class)")
    p.add_argument("--scale", default="shared", choices=["shared", "layer"],
                   help="one colour scale for all layers (default) or one per layer")  # fmt: skip
    p.add_argument("--mode", default=None, choices=["positive", "signed", "abs"],
                   help="how signs are coloured (default: the method's own)")  # fmt: skip
    p.add_argument("--n-steps", type=positive_int, default=32, help="ig, conductance: steps (default 32)")
    p.add_argument("--grid", type=positive_int, default=7, help="ablation: patches per side (default 7)")
    p.add_argument("--top", type=positive_int, default=5, help="top channels per layer in the JSON (default 5)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    p.add_argument("--json", action="store_true", help="also print the JSON summary on stdout")
    p.set_defaults(func=cmd_attribute)

    p = subparsers.add_parser(
        "examples",
        help="the images (and patches) of a folder that excite each channel of a layer most",
        description="One pass over the images of FOLDER; for every channel of the layer, the k images with the "
        "largest activation (and, with --bottom, the k most negative). Writes the receptive-field patch of each as "
        "PNG and index.json. Results are cached by model, folder contents, layer and k.",
    )
    p.add_argument("folder", metavar="FOLDER", help="a folder of images (subfolders included), or demo:NAME")
    add_model_args(p)
    p.add_argument("--layer", required=True, action="append", help="layer name (repeat for several)")
    p.add_argument("--k", type=positive_int, default=9, help="examples per channel (default 9)")
    p.add_argument("--channels", default="all", help="'all' or e.g. '0-15,32' (default all)")
    p.add_argument("--bottom", action="store_true", help="also write the k most negative examples")
    p.add_argument("--patch-size", type=positive_int, default=None, help="resize patches to this many pixels")
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per forward (default 32)")
    p.add_argument("--no-cache", action="store_true", help="recompute even if cached")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created)")
    p.set_defaults(func=cmd_examples)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def _layers_arg(text: str) -> str | list[str]:
    text = text.strip()
    return text if text in ("all", "blocks") else [n.strip() for n in text.split(",") if n.strip()]


def _target_arg(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def cmd_attribute(args: argparse.Namespace) -> int:
    image = load_image(args.image)
    model = load_model_arg(args)
    layers = _layers_arg(args.layers)
    target = _target_arg(args.target)
    options = {"n_steps": args.n_steps, "grid": args.grid}
    cost = method_cost(model, 1, layers, args.method, target, **options)
    if not cost.available:
        raise CommandError(cost.reason)
    print(cost.describe(), file=sys.stderr)
    res = attribute(model, image, layers, args.method, target, progress=progress_bar(f"{args.method}"), **options)
    args.out.mkdir(parents=True, exist_ok=True)
    Image.fromarray((res.images[0].numpy() * 255).round().astype("uint8")).save(args.out / "input.png")
    files = {}
    for i, (name, pic) in enumerate(res.overlays(scale=args.scale, mode=args.mode).items()):
        files[name] = f"{i:02d}_{_safe(name)}.png"
        pic.save(args.out / files[name])
    mode = args.mode or res.display
    scales = res.scale(args.scale, mode, image=0)
    summary = res.summary(k=args.top)
    summary.update(image=str(args.image), model=model.spec, scale=args.scale, mode=mode)
    for name, rec in summary["layers"].items():
        rec["png"] = files[name]
        rec["colour_range"] = list(scales[name])
    (args.out / "attribution.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False))
    title = f"{args.method} · {Path(args.image).name} · {model.spec}"
    (args.out / "grid.png").write_bytes(grid_png(res, args.scale, title=title))
    (args.out / "magnitudes.csv").write_text(magnitudes_csv(res))
    done = f"{len(files)} overlays, grid.png, magnitudes.csv and attribution.json written to {args.out}"
    print(f"{done} ({res.seconds:.1f} s).", file=sys.stderr)
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def parse_channels(text: str, n: int) -> list[int]:
    """'all' or '0-15,32' → channel indices, each checked against the layer's `n` channels."""
    if text.strip() == "all":
        return list(range(n))
    out: list[int] = []
    for part in text.split(","):
        part = part.strip()
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise CommandError(f"Cannot read channels {part!r}: use e.g. '0-15,32' or 'all'.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi >= n:
            raise CommandError(f"Channels {part} are out of range: the layer has {n} channels (0–{n - 1}).")
        out.extend(range(lo, hi + 1))
    return list(dict.fromkeys(out))


def cmd_examples(args: argparse.Namespace) -> int:
    folder = resolve_data(args.folder)
    model = load_model_arg(args)
    results = dataset_examples(
        model, folder, args.layer, args.k, batch_size=args.batch_size, cache=not args.no_cache,
        progress=progress_bar("examples"),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    index: dict[str, Any] = {"model": model.spec, "model_fingerprint": model.fingerprint, "folder": str(folder),
                             "k": args.k, "layers": {}}  # fmt: skip
    written = 0
    for name, ex in results.items():
        channels = parse_channels(args.channels, ex.channels)
        sub = args.out / _safe(name)
        sub.mkdir(exist_ok=True)
        kinds = ("top", "bottom") if args.bottom else ("top",)
        recs: dict[str, Any] = {}
        for c in channels:
            rec: dict[str, Any] = {}
            for kind in kinds:
                items = []
                for e in ex.examples(c, kind):
                    png = f"c{c:04d}_{kind}{e.rank + 1}.png"
                    patch_image(model, e.path, e.box, args.patch_size).save(sub / png)
                    written += 1
                    items.append({"rank": e.rank + 1, "file": ex.files[e.image], "value": e.value,
                                  "position": [e.y, e.x], "box": list(e.box), "png": f"{sub.name}/{png}"})  # fmt: skip
                rec[kind] = items
            recs[str(c)] = rec
        index["layers"][name] = {
            "channels": ex.channels, "grid": list(ex.grid), "receptive_field": list(ex.rf.size),
            "receptive_field_kind": ex.rf.kind, "receptive_field_note": ex.rf.note,
            "stride": list(ex.rf.stride), "images_used": ex.images_used, "cached": ex.cached,
            "skipped": [{"file": f, "reason": r} for f, r in ex.skipped], "examples": recs,
        }  # fmt: skip
    (args.out / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=False))
    first = next(iter(results.values()))
    skipped = f"; {len(first.skipped)} files skipped (see index.json)" if first.skipped else ""
    print(f"{written} patches and index.json written to {args.out} from {first.images_used} images{skipped}.",
          file=sys.stderr)  # fmt: skip
    return 0
