"""Trust commands: `sanity` (do attribution maps depend on the weights?), `faithfulness` (which layer's map explains
best), `cka-map` (calibrated CKA between every layer of two models), `selectivity` (units labelled by your classes)
and `fv-quality` (grey, saturated, collapsed, weak renders). Each writes one JSON file and prints a short table."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

import explorer.models
from explorer.cli import add_model_args, load_model_arg, positive_int, print_table, progress_bar
from explorer.commands.featurevis import parse_units
from explorer.data import load_image
from explorer.errors import ExplorerError
from explorer.featurevis import get_preset
from explorer.layers import layout_of
from explorer.models import DEFAULT_SPEC
from explorer.runtime import atomic_write
from explorer.trust import (
    DEFAULT_METHODS,
    cka_map,
    faithfulness,
    fv_quality,
    load_samples,
    sanity_check,
    sanity_cost,
    selectivity,
)


class TrustCommandError(ExplorerError):
    """A command-line value the trust commands cannot use."""


def _names(text: str) -> str | list[str]:
    """'all' / 'blocks' as they are; else comma-separated names."""
    text = text.strip()
    return text if text in ("all", "blocks") else [n.strip() for n in text.split(",") if n.strip()]


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Write `data` to `path` as JSON, atomically, creating its folder."""
    atomic_write(path, json.dumps(data, indent=2, ensure_ascii=False, allow_nan=False))


def _out_arg(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--out", required=True, type=Path, metavar="FILE.json", help=f"where to write {what} (JSON)")


def register(subparsers: Any) -> None:
    """Add the `sanity`, `faithfulness`, `cka-map`, `selectivity` and `fv-quality` subcommands."""
    p = subparsers.add_parser(
        "sanity",
        help="attribution sanity check: randomize the model from the top block down, do the maps change?",
        description="Cascading randomization (Adebayo et al. 2018) on a copy of the model: after each block is "
        "randomized, from the classifier down to the stem, every method's maps are recomputed for the same image "
        "and target and compared with the original ones (Spearman of |map| and SSIM, per layer). A method passes "
        "when its maps have decorrelated (Spearman < 0.5) once the top blocks holding half the weights are random.",
    )
    p.add_argument("--image", required=True, metavar="IMG", help="an image file")
    add_model_args(p)
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help=f"comma-separated: gradient, guided_backprop and the `attribute` methods "
                   f"(default {','.join(DEFAULT_METHODS)})")  # fmt: skip
    p.add_argument("--layers", default="all", help="layers of the layer methods: 'all' or comma-separated names")
    p.add_argument("--target", default=None, help="class index or name (default: the predicted class)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    p.add_argument("--n-steps", type=positive_int, default=32, help="ig, conductance: steps (default 32)")
    p.add_argument("--grid", type=positive_int, default=7, help="ablation: patches per side (default 7)")
    _out_arg(p, "per method the Spearman and SSIM after each step")
    p.set_defaults(func=cmd_sanity)

    p = subparsers.add_parser(
        "faithfulness",
        help="deletion and insertion curves of each layer's map against random maps: which layer explains best",
        description="For each image, each layer's attribution map orders the pixels; deleting the most relevant "
        "first (into a blurred copy) should drop the predicted class's probability fast (low deletion area) and "
        "inserting them first should raise it fast (high insertion area). Random maps on each layer's own grid give "
        "the baseline. These metrics favour smooth maps; the JSON says so next to the numbers.",
    )
    p.add_argument("--data", required=True, metavar="D", help="image folder (flat or one sub-folder per class), "
                   "demo:NAME, or one image file")  # fmt: skip
    add_model_args(p)
    p.add_argument("--method", default="gradcam", help="attribution method (default gradcam)")
    p.add_argument("--layers", default="all", help="'all' (blocks with a spatial map) or comma-separated names")
    p.add_argument("--max-images", type=positive_int, default=8, help="images used (default 8)")
    p.add_argument("--steps", type=positive_int, default=16, help="points per curve minus one (default 16)")
    p.add_argument("--fill", choices=["blur", "black", "mean"], default="blur", help="what a deleted pixel becomes")
    p.add_argument("--seed", type=int, default=0)
    _out_arg(p, "per layer the areas (insertion, deletion, random_…), score and curves")
    p.set_defaults(func=cmd_faithfulness)

    p = subparsers.add_parser(
        "cka-map",
        help="calibrated CKA between every layer of two models (base vs tuned, a CNN vs a ViT, …)",
        description="Debiased linear CKA for every (layer of A, layer of B) pair on the same images, with a "
        "permutation null per pair (images of B shuffled) and a calibrated value clip((CKA - tau)/(1 - tau), 0, 1), "
        "tau the 95 % critical value (Groeger et al. 2026). Writes the matrices `raw` and `calibrated`.",
    )
    p.add_argument("--a", default=DEFAULT_SPEC, metavar="SPEC", help=f"model A (default {DEFAULT_SPEC})")
    p.add_argument("--b", required=True, metavar="SPEC", help="model B (a spec or a checkpoint)")
    p.add_argument("--data", required=True, metavar="D", help="image folder or demo:NAME")
    p.add_argument("--layers-a", default="blocks", help="'blocks' or comma-separated layer names of A")
    p.add_argument("--layers-b", default="blocks", help="'blocks' or comma-separated layer names of B")
    p.add_argument("--max-images", type=positive_int, default=200, help="images (default 200)")
    p.add_argument("--permutations", type=positive_int, default=200, help="shuffles for the null (default 200)")
    p.add_argument("--alpha", type=float, default=0.05, help="level of the critical value (default 0.05)")
    p.add_argument("--grid", type=int, default=4, help="average-pool maps to grid×grid (0: no pooling; default 4)")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="PX", help="feed both models PX px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to run")
    _out_arg(p, "the raw and calibrated matrices")
    p.set_defaults(func=cmd_cka_map)

    p = subparsers.add_parser(
        "selectivity",
        help="units labelled by your classes: class selectivity per unit, its mean per layer along the depth",
        description="On a labelled folder (one sub-folder per class) or a demo dataset: each unit's class "
        "selectivity index (Morcos et al. 2018) and top classes; per layer the mean index and its chance level "
        "(labels shuffled), the generic → specific curve. With --tuned, the same for the fine-tuned model.",
    )
    p.add_argument("--data", required=True, metavar="D", help="labelled image folder or demo:NAME")
    add_model_args(p)
    p.add_argument("--tuned", default=None, metavar="SPEC", help="also measure this model (e.g. a fine-tune)")
    p.add_argument("--layers", default="blocks", help="'blocks' or comma-separated layer names")
    p.add_argument("--max-images", type=positive_int, default=500, help="images (default 500, class-stratified)")
    p.add_argument("--input-size", type=positive_int, default=None, metavar="PX", help="feed the models PX px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-units", action="store_true", help="leave each unit's index out of the JSON")
    _out_arg(p, "per layer the mean selectivity (and per unit its index and top classes)")
    p.set_defaults(func=cmd_selectivity)

    p = subparsers.add_parser(
        "fv-quality",
        help="render units and flag grey, saturated, collapsed, weak and inactive pictures",
        description="Render the units (through the cache) and judge each picture: grey, saturated, collapsed "
        "(pixels), inactive (the objective never moved), and with --examples the activation reached against the "
        "unit's top dataset examples (weak below half of it); with --diverse N the diversity of N images.",
    )
    add_model_args(p)
    p.add_argument("--layer", required=True, help="layer name")
    p.add_argument("--channels", default="0-7", help="units: 0-15, 2,7,13 (default 0-7)")
    p.add_argument("--preset", default="fast", help="render preset (default fast)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--examples", default=None, metavar="FOLDER", help="image folder or demo:NAME for the examples")
    p.add_argument("--k", type=positive_int, default=9, help="top dataset examples per unit (default 9)")
    p.add_argument("--diverse", type=int, default=0, metavar="N", help="judge a diversity render of N images")
    _out_arg(p, "per unit its flags, activation and diversity")
    p.set_defaults(func=cmd_fv_quality)


# --------------------------------------------------------------------------- handlers


def _target(text: str | None) -> int | str | None:
    if text is None:
        return None
    return int(text) if text.strip().lstrip("-").isdigit() else text


def cmd_sanity(args: argparse.Namespace) -> int:
    image = load_image(args.image)
    model = load_model_arg(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    layers = _names(args.layers)
    options = {"n_steps": args.n_steps, "grid": args.grid}
    print(f"about {sanity_cost(model, methods, layers, **options)} passes through the network", file=sys.stderr)
    res = sanity_check(model, image, methods, layers, _target(args.target), seed=args.seed,
                       progress=progress_bar("sanity"), **options)  # fmt: skip
    res.image = str(args.image)
    _write_json(args.out, res.to_dict())
    top = res.steps[res.top_step]
    print(f"{model.spec} · {Path(args.image).name} · target {res.target_name} · top of the network: {top} and above")
    print_table([
        {"method": m.method, "spearman_top": m.top_spearman, "ssim_top": m.top_ssim, "spearman_all": m.final_spearman,
         "ssim_all": m.final_ssim, "verdict": "pass" if m.passed else "FAIL"}
        for m in res.methods.values()
    ])  # fmt: skip
    for name, why in res.skipped.items():
        print(f"skipped {name}: {why}")
    print(f"wrote {args.out} ({res.seconds:.0f} s)", file=sys.stderr)
    return 0


def cmd_faithfulness(args: argparse.Namespace) -> int:
    model = load_model_arg(args)
    rep = faithfulness(model, args.data, args.method, _names(args.layers), max_images=args.max_images,
                       steps=args.steps, fill=args.fill, seed=args.seed,
                       progress=progress_bar("faithfulness"))  # fmt: skip
    _write_json(args.out, rep.to_dict())
    print(f"{model.spec} · {args.method} · {rep.images} images · fill {rep.fill} · most faithful first")
    print_table([
        {"rank": i, "layer": n, "score": rep.layers[n].score, "deletion": rep.layers[n].areas["deletion"],
         "random_deletion": rep.layers[n].areas["random_deletion"], "insertion": rep.layers[n].areas["insertion"],
         "random_insertion": rep.layers[n].areas["random_insertion"],
         "beats_random": "yes" if rep.layers[n].beats_random else "no"}
        for i, n in enumerate(rep.ranking, 1)
    ])  # fmt: skip
    print(f"wrote {args.out} ({rep.seconds:.0f} s)", file=sys.stderr)
    return 0


def cmd_cka_map(args: argparse.Namespace) -> int:
    if not 0.0 < args.alpha < 1.0:
        raise TrustCommandError(f"--alpha must lie between 0 and 1, not {args.alpha}.")
    device = None if args.device == "auto" else args.device
    a = explorer.models.load_model(args.a, device=device)
    b = a if args.b == args.a else explorer.models.load_model(args.b, device=device)
    res = cka_map(a, b, args.data, layers_a=_names(args.layers_a), layers_b=_names(args.layers_b),
                  max_images=args.max_images, permutations=args.permutations, alpha=args.alpha,
                  grid=args.grid or None, input_size=args.input_size, seed=args.seed,
                  progress=progress_bar("cka-map"))  # fmt: skip
    _write_json(args.out, res.to_dict())
    print(f"A {a.spec} ({len(res.a_layers)} layers) · B {b.spec} ({len(res.b_layers)} layers) · {res.images} images")
    rows = []
    if res.a_layers == res.b_layers:
        for i, n in enumerate(res.a_layers):
            rows.append({"layer": n, "raw": float(res.raw[i, i]), "calibrated": float(res.calibrated[i, i]),
                         "tau": float(res.tau[i, i]), "p_value": float(res.p_values[i, i])})  # fmt: skip
        print("diagonal (the same layer in both):")
        print_table(rows)
    plain = f"plain (biased) {float(np.mean(res.plain)):.3f}, " if res.plain is not None else ""
    print(f"mean over all pairs: {plain}raw (debiased) {float(np.mean(res.raw)):.3f}, "
          f"calibrated {float(np.mean(res.calibrated)):.3f}")  # fmt: skip
    best = res.best
    print(f"best pair: {best['a']} ~ {best['b']}: raw {best['raw']:.3f}, calibrated {best['calibrated']:.3f} "
          f"(p = {best['p_value']:.3f}, against the maximum over all pairs)")  # fmt: skip
    for note in res.notes:
        print(f"note: {note}")
    print(f"wrote {args.out} ({res.seconds:.0f} s)", file=sys.stderr)
    return 0


def cmd_selectivity(args: argparse.Namespace) -> int:
    model = load_model_arg(args)
    samples = load_samples(args.data, args.max_images, args.seed, labelled=True)
    layers = _names(args.layers)
    rep = selectivity(model, samples, layers, input_size=args.input_size, seed=args.seed,
                      progress=progress_bar("selectivity"))  # fmt: skip
    data: dict[str, Any] = {"base": rep.to_dict(units=not args.no_units)}
    tuned = None
    if args.tuned:
        tmodel = explorer.models.load_model(args.tuned, device=None if args.device == "auto" else args.device)
        tuned = selectivity(tmodel, samples, layers, input_size=args.input_size, seed=args.seed,
                            progress=progress_bar("selectivity (tuned)"))  # fmt: skip
        data["tuned"] = tuned.to_dict(units=not args.no_units)
    _write_json(args.out, data)
    print(f"{model.spec} · {rep.images} images of {len(rep.classes)} classes · mean index of live units per layer")
    rows = []
    by_tuned = {ls.layer: ls for ls in tuned.layers} if tuned else {}
    for ls in rep.layers:
        row: dict[str, Any] = {"layer": ls.layer, "units": ls.units, "silent": ls.silent, "mean": ls.mean,
                               "chance": ls.chance}  # fmt: skip
        if ls.layer in by_tuned:
            row["tuned_mean"] = by_tuned[ls.layer].mean
            row["tuned_chance"] = by_tuned[ls.layer].chance
        rows.append(row)
    print_table(rows)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def cmd_fv_quality(args: argparse.Namespace) -> int:
    model = load_model_arg(args)
    get_preset(args.preset)
    channels = parse_units(args.channels)
    lay = layout_of(model, args.layer)
    if lay.grid is None:
        raise TrustCommandError(f"{args.layer} has no channels on a grid to render.")
    res = fv_quality(model, args.layer, channels, args.preset, seed=args.seed, examples_folder=args.examples, k=args.k,
                     diverse=args.diverse, progress=progress_bar("rendering"))  # fmt: skip
    _write_json(args.out, {"model": model.spec, "model_fingerprint": model.fingerprint, "layer": args.layer,
                           "preset": args.preset, "seed": args.seed, "units": [u.to_dict() for u in res]})  # fmt: skip
    print_table([
        {"channel": u.channel, "activation": u.activation, "examples": u.examples, "ratio": u.ratio,
         "diversity": u.diversity, "flags": ", ".join(u.flags) or "-"}
        for u in res
    ])  # fmt: skip
    flagged = sum(1 for u in res if u.flags)
    print(f"{flagged} of {len(res)} units flagged · wrote {args.out}", file=sys.stderr)
    return 0
