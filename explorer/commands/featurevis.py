"""Feature-visualization commands: `render` (units of one layer to PNG files) and `atlas` (fill the cache)."""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from explorer.cache import Cache
from explorer.cli import add_model_args, add_ray_args, load_model_arg, positive_int, print_table, progress_bar
from explorer.errors import ExplorerError
from explorer.featurevis.objectives import OBJECTIVE_KINDS, channel, for_unit
from explorer.featurevis.presets import PRESETS
from explorer.featurevis.sheet import contact_sheet
from explorer.featurevis.store import render_cached
from explorer.layers import layout_of
from explorer.trust.fvquality import flagged_labels


def parse_units(text: str) -> list[int]:
    """'0-15' / '2,7,13' / '0-3,8' → sorted unique unit indices."""
    units: set[int] = set()
    for part in text.replace(" ", "").split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ExplorerError(f"Cannot read units {text!r}: use a range like 0-15 or a list like 2,7,13.")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ExplorerError(f"The range {part} runs backwards: write it low-high.")
        units.update(range(lo, hi + 1))
    return sorted(units)


def _add_render_settings(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=list(PRESETS), default="classic", help="render settings (default classic)")
    p.add_argument("--steps", type=positive_int, default=None, help="optimisation steps (default: the preset's)")
    p.add_argument("--size", type=positive_int, default=None, help="image side in pixels (default: the preset's)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="images per batch (default: by device)")
    p.add_argument("--no-cache", action="store_true", help="render again even when the cache has the images")


def register(subparsers: Any) -> None:
    """Add the `render` and `atlas` subcommands."""
    p = subparsers.add_parser(
        "render",
        help="feature visualizations of units of one layer, one PNG per unit plus a contact sheet",
        description="Render what excites each unit of a layer (activation maximization). Writes "
        "<layer>-<unit>.png per unit at the rendered size and <layer>-sheet.png. Results are cached.",
    )
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name, e.g. blocks.2.1 (see `layers`)")
    p.add_argument("--channels", "--units", dest="channels", default="0-7", help="units: 0-15, 2,7,13 (default 0-7)")
    p.add_argument("--objective", choices=list(OBJECTIVE_KINDS), default="channel", help="what to maximise")
    _add_render_settings(p)
    p.add_argument("--out", required=True, type=Path, help="output folder (created if missing)")
    p.set_defaults(func=cmd_render)

    p = subparsers.add_parser(
        "atlas",
        help="render K units (or all) of every block into the cache (for the app's pages), here or on Ray",
        description="Render the first K units of every block of the model into the cache, so the Progression "
        "and Layer pages open instantly. With --out, also writes one contact sheet per block. Only images "
        "missing from the cache are rendered. With --ray, (layer x channel chunk) tasks run on a Ray cluster, "
        "one worker per GPU (pip install -r requirements-ray.txt).",
    )
    add_model_args(p)
    units = p.add_mutually_exclusive_group()
    units.add_argument("--per-layer", type=positive_int, default=8, help="units per block (default 8)")
    units.add_argument("--all", action="store_true", help="every unit of every block (the whole network)")
    p.add_argument("--layers", default=None, help="comma-separated blocks (default: every block with a grid output)")
    _add_render_settings(p)
    p.add_argument("--out", type=Path, default=None, help="also write <layer>-sheet.png here")
    ray = add_ray_args(p, "(layer × channel chunk) tasks")
    ray.add_argument("--chunk", type=positive_int, default=None, help="units per task (default: 8 CPU, by GPU memory)")
    p.set_defaults(func=cmd_atlas)


def _channels_of(model: Any, layer: str) -> int:
    lay = layout_of(model, layer)  # any module that runs, containers included; LayerError otherwise
    if lay.kind == "none":
        raise ExplorerError(f"Cannot visualise it: {lay.problem(layer)}")
    return int(lay.channels or 0)


def _cache(no_cache: bool) -> Any:
    if not no_cache:
        return Cache()
    return Cache(tempfile.mkdtemp(prefix="layer-explorer-nocache-"))


def cmd_render(args: argparse.Namespace) -> int:
    units = parse_units(args.channels)
    model = load_model_arg(args)
    n_channels = _channels_of(model, args.layer)
    bad = [u for u in units if u >= n_channels]
    if bad:
        raise ExplorerError(f"Layer {args.layer} has {n_channels} units (0-{n_channels - 1}); {bad[0]} is not one.")
    objectives, names = [], []
    for u in units:
        objs = for_unit(args.objective, args.layer, u)
        objectives += objs
        names += [f"{args.layer}-{u}" if len(objs) == 1 else f"{args.layer}-{u}-{k}" for k in range(len(objs))]
    start = time.perf_counter()
    result = render_cached(
        model, objectives, args.preset, seed=args.seed, steps=args.steps, size=args.size,
        progress=progress_bar(f"render {args.layer}"), batch_size=args.batch_size, cache=_cache(args.no_cache),
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in zip(names, result.png, strict=True):
        (args.out / f"{name}.png").write_bytes(data)
    labels, flagged = flagged_labels(result.images, [n.removeprefix(f"{args.layer}-") for n in names])
    sheet = args.out / f"{args.layer}-sheet.png"
    contact_sheet(result.images, labels, cols=min(8, len(names))).save(sheet)
    hits = int(result.hits.sum())
    print(
        f"wrote {len(names)} images and {sheet.name} to {args.out} in {time.perf_counter() - start:.1f} s "
        f"({hits} from the cache, {len(names) - hits} rendered); quality flags: {flagged}"
    )
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    # start-up cost: explorer.distributed (Ray back end, ~15 ms) loads only for the commands that use it, not for --help
    from explorer.distributed import atlas_layers

    if args.per_layer < 1:
        raise ExplorerError("--per-layer must be at least 1.")
    wanted = [w.strip() for w in args.layers.split(",") if w.strip()] if args.layers else None
    if args.ray is None and (args.workers or args.chunk):
        raise ExplorerError("--workers and --chunk set up Ray workers: add --ray auto (or a cluster address).")
    if args.ray is not None:
        return _atlas_on_ray(args, wanted)
    model = load_model_arg(args)
    cache = _cache(args.no_cache)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    table = []
    for name, n_units in atlas_layers(model, wanted):
        units = list(range(n_units if args.all else min(args.per_layer, n_units)))
        start = time.perf_counter()
        result = render_cached(
            model, [channel(name, u) for u in units], args.preset, seed=args.seed, steps=args.steps,
            size=args.size, progress=progress_bar(name), batch_size=args.batch_size, cache=cache,
        )  # fmt: skip
        labels, flagged = flagged_labels(result.images, [str(u) for u in units])
        if args.out:
            contact_sheet(result.images, labels, cols=min(8, len(units))).save(args.out / f"{name}-sheet.png")
        table.append(
            {"layer": name, "units": len(units), "cached": int(result.hits.sum()),
             "seconds": round(time.perf_counter() - start, 1), "flagged": flagged}
        )  # fmt: skip
    print_table(table)
    print(f"cache: {cache.root}", file=sys.stderr)
    return 0


def _atlas_on_ray(args: argparse.Namespace, layers: list[str] | None) -> int:
    """`atlas --ray`: the same images, rendered by (layer x chunk) tasks on Ray workers (explorer.distributed)."""
    # start-up cost: explorer.distributed (Ray back end, ~15 ms) loads only for the commands that use it, not for --help
    from explorer.distributed import atlas

    report = atlas(
        args.model, arch=args.arch, layers=layers, per_layer=None if args.all else args.per_layer,
        preset=args.preset, seed=args.seed, steps=args.steps, size=args.size, cache=_cache(args.no_cache),
        ray=args.ray, device=args.device, workers=args.workers, chunk=args.chunk, batch_size=args.batch_size,
        progress=progress_bar("atlas"),
    )  # fmt: skip
    rows = report.rows
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for row in rows:
        layer = row["layer"]
        images = report.images(layer)
        labels, row["flagged"] = flagged_labels(images, [str(u) for u in report.plan.units[layer]])
        if args.out:
            contact_sheet(images, labels, cols=min(8, len(labels))).save(args.out / f"{layer}-sheet.png")
    print_table(rows)
    print(
        f"Ray: {report.executed} task(s) on {len(report.workers)} worker(s), {report.retries} rerun after a worker "
        f"died, {report.seconds:.1f} s; cache: {report.cache_root}",
        file=sys.stderr,
    )
    return 0
