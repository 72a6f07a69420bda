"""Clipped borders: how much of a rendered tile's outer ring is fully saturated, against its centre.

    python benchmarks/bench_saturation.py                       # the table in docs/benchmarks.md
    python benchmarks/bench_saturation.py --layers blocks.1.0 --units 4 --variants before,fast --sheets /tmp/sat

A pixel is *saturated* when any of its channels is 0 or 255 (the sigmoid pinned it to a corner of the colour box).
The *ring* is the outer 10 % of the tile on each side; the *centre* is the rest. For each layer it renders the same
units with each variant of the fast preset (same seed) and prints the mean saturated fraction of ring and centre,
their ratio, the mean final activation (so a fix that lowers saturation by giving up activation shows it), and
seconds per image (the machine may be shared: timings are indicative). Variants:

- ``before``: the fast preset as it was (pad 6 with constant grey, jitter 4);
- ``wrap``: the image read as a torus (no constant pad), jitter 4 only;
- ``fast``: the fast preset as it is now: the torus, plus a random roll over the whole period for layers at most
  8× smaller than the input (here conv_stem to blocks.2.x; none for blocks.4.1 and deeper).

`--sheets DIR` writes one contact sheet per variant, to look at.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from explorer.featurevis import channel, contact_sheet, render  # noqa: E402
from explorer.featurevis.presets import FAST, Preset  # noqa: E402
from explorer.models import load_model  # noqa: E402

LAYERS = "conv_stem,bn1,blocks.0.0,blocks.1.0,blocks.1.1,blocks.2.0,blocks.4.1,blocks.5.3,blocks.6.0"
VARIANTS: dict[str, Preset] = {
    "before": FAST.replace(transforms={"pad": 6, "wrap": False, "roll": 0.0, "roll_stride": 0}),
    "wrap": FAST.replace(transforms={"roll": 0.0}),
    "fast": FAST,
}
RING = 0.10


def saturation(image: np.ndarray, ring: float = RING) -> tuple[float, float]:
    """(ring, centre) fractions of pixels with any channel at 0 or 255 in an (H, W, 3) uint8 image."""
    sat = ((image == 0) | (image == 255)).any(axis=-1)
    h, w = sat.shape
    b = max(1, round(min(h, w) * ring))
    outer = np.ones_like(sat)
    outer[b:-b, b:-b] = False
    return float(sat[outer].mean()), float(sat[~outer].mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="bundled:efficientnet_lite0")
    ap.add_argument("--layers", default=LAYERS)
    ap.add_argument("--units", type=int, default=8, help="units 0..N-1 of each layer")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheets", type=Path, default=None, help="write a contact sheet per variant here")
    args = ap.parse_args()
    model = load_model(args.model)
    layers = [s.strip() for s in args.layers.split(",") if s.strip()]
    variants = [s.strip() for s in args.variants.split(",") if s.strip()]
    print(f"{args.model}, units 0–{args.units - 1}, seed {args.seed}, ring = outer {RING:.0%} of each side")
    print("| layer | variant | ring saturated | centre saturated | ring / centre | mean final activation | s / image |")
    print("|---|---|---|---|---|---|---|")
    sheets: dict[str, list[tuple[str, np.ndarray]]] = {v: [] for v in variants}
    for layer in layers:
        for name in variants:
            objs = [channel(layer, u) for u in range(args.units)]
            start = time.perf_counter()
            result = render(model, objs, VARIANTS[name], seed=args.seed)
            seconds = (time.perf_counter() - start) / len(objs)
            fractions = np.array([saturation(im) for im in result.images])
            ring, centre = fractions.mean(axis=0)
            ratio = f"{ring / centre:.1f}" if centre > 0 else ("—" if ring == 0 else "∞")
            print(
                f"| {layer} | {name} | {ring:.2%} | {centre:.2%} | {ratio} | {float(result.final.mean()):.2f} "
                f"| {seconds:.2f} |",
                flush=True,
            )
            sheets[name] += [(f"{layer}:{u}", im) for u, im in enumerate(result.images)]
    if args.sheets is not None:
        args.sheets.mkdir(parents=True, exist_ok=True)
        for name, items in sheets.items():
            sheet = contact_sheet([im for _, im in items], [label for label, _ in items], cols=args.units)
            sheet.save(args.sheets / f"saturation-{name}.png")
        print(f"contact sheets in {args.sheets}/saturation-<variant>.png")


if __name__ == "__main__":
    main()
