"""Feature-visualization quality by preset: how often renders come out grey, saturated, collapsed, inactive or weak
(far below the unit's top dataset examples), and how diverse diversity renders are.

    python benchmarks/bench_fv_quality.py                                  # the table in docs/trust.md
    python benchmarks/bench_fv_quality.py --layers blocks.1.1 --units 8 --presets fast --json /tmp/q.json

For each layer it picks `--units` channels spread evenly over the layer (the same ones for every preset), renders
them with each preset (same seed, through the render cache), and judges them with `explorer.trust.fv_quality`
against their top-`--k` dataset examples in `--examples` (default: the sample photographs in assets/). With
`--diverse N` it also renders a diversity set of N images for the first `--diverse-units` units per layer with the
first preset and reports the mean diversity, next to the diversity of N plain renders of the same unit from N seeds
(what the diversity term should beat). Prints one markdown row per (preset, layer), then the units flagged with the
first preset and not with the second: its failure cases.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.data import ASSETS_DIR  # noqa: E402
from explorer.featurevis import channel, render_cached  # noqa: E402
from explorer.layers import ladder  # noqa: E402
from explorer.models import load_model  # noqa: E402
from explorer.trust import FLAG_TEXT, diversity_score, fv_quality  # noqa: E402

LAYERS = "conv_stem,blocks.1.1,blocks.2.1,blocks.3.2,blocks.5.3,blocks.6.0"


def spread(channels: int, n: int) -> list[int]:
    """`n` channel indices spread evenly over `channels`."""
    return sorted({int(round(v)) for v in np.linspace(0, channels - 1, min(n, channels))})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="bundled:efficientnet_lite0")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--units", type=int, default=4, help="units per layer (default 4)")
    ap.add_argument("--presets", default="fast,classic")
    ap.add_argument("--examples", default=str(ASSETS_DIR), help="folder for the top dataset examples")
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--diverse", type=int, default=4, help="images per diversity render (0: none)")
    ap.add_argument("--diverse-units", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None, help="also write every unit's record here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model, device="cpu")
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    layers = [n.strip() for n in args.layers.split(",") if n.strip()]
    rows = {r.name: r for r in ladder(model, "full")}
    width = {n: int(rows[n].channels or 0) for n in layers}
    records: dict[str, dict[str, list]] = {p: {} for p in presets}
    flags = list(FLAG_TEXT)
    print(f"model {model.spec}; examples: top {args.k} of {args.examples}; {torch.get_num_threads()} thread(s)")
    print()
    print("| preset | layer | units | " + " | ".join(flags) + " | activation / examples (median) | s per unit |")
    print("|---|---|---:|" + "---:|" * len(flags) + "---:|---:|")
    for preset in presets:
        for layer in layers:
            channels = spread(width[layer], args.units)
            t = time.perf_counter()
            res = fv_quality(model, layer, channels, preset, examples_folder=args.examples, k=args.k)
            per = (time.perf_counter() - t) / len(channels)
            records[preset][layer] = [u.to_dict() for u in res]
            counts = [sum(f in u.flags for u in res) for f in flags]
            ratios = [u.ratio for u in res if u.ratio is not None]
            med = f"{np.median(ratios):.2f}" if ratios else "–"
            print(f"| {preset} | {layer} | {len(res)} | " + " | ".join(map(str, counts)) + f" | {med} | {per:.1f} |",
                  flush=True)  # fmt: skip
    if args.diverse >= 2:
        print()
        print(
            f"| {presets[0]}, {args.diverse} images | layer | units | diversity render | {args.diverse} seeds | flags |"
        )
        print("|---|---|---:|---:|---:|---|")
        for layer in layers:
            channels = spread(width[layer], args.units)[: args.diverse_units]
            res = fv_quality(model, layer, channels, presets[0], diverse=args.diverse)
            div = [u.diversity for u in res if u.diversity is not None]
            seeds = []
            for c in channels:
                ims = [
                    render_cached(model, [channel(layer, c)], presets[0], seed=s).images[0] for s in range(args.diverse)
                ]
                seeds.append(diversity_score(model, ims, layer))
            seen = sorted({f for u in res for f in u.flags}) or ["–"]
            records.setdefault(f"{presets[0]}-diversity", {})[layer] = [u.to_dict() for u in res]
            print(f"| | {layer} | {len(res)} | {np.mean(div):.4f} | {np.mean(seeds):.4f} | {', '.join(seen)} |",
                  flush=True)  # fmt: skip
    if len(presets) >= 2:
        a, b = presets[0], presets[1]
        print()
        print(f"Flagged with {a} and not with {b} (the failure cases of {a}):")
        for layer in layers:
            for ua, ub in zip(records[a][layer], records[b][layer], strict=True):
                extra = sorted(set(ua["flags"]) - set(ub["flags"]))
                if extra:
                    ratio = f"{ua['ratio']:.2f}" if ua["ratio"] is not None else "–"
                    print(f"- {layer} unit {ua['channel']}: {', '.join(extra)} (activation / examples {ratio})")
    if args.json:
        args.json.write_text(json.dumps(records, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
