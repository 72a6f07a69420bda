"""The Progression page's picture for any model, from the command line: one row per stage, the first units of
its representative block, with a header saying which model, which weights, which preset and how the stages map.

    python benchmarks/progression_png.py --model torchvision:vit_b_16:untrained --preset fast \
        --out docs/progression-vit.png

Renders go through the disk cache (`render_cached`), exactly as the page renders them.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import time
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from explorer import featurevis as fv  # noqa: E402
from explorer.models import load_model  # noqa: E402


def ascii_text(text: str) -> str:
    """PIL's default font has no dashes or multiplication sign."""
    return text.replace("—", "-").replace("–", "-").replace("×", "x").replace("→", "->")


def header(lines: list[str], width: int) -> Image.Image:
    """White strip with wrapped text lines, as wide as the sheet."""
    font = ImageFont.load_default(size=15)
    lines = [ascii_text(line) for line in lines]
    wrapped = [w for line in lines for w in (textwrap.wrap(line, max(40, width // 8)) or [""])]
    strip = Image.new("RGB", (width, 10 + 20 * len(wrapped)), "white")
    draw = ImageDraw.Draw(strip)
    for i, line in enumerate(wrapped):
        draw.text((8, 6 + 20 * i), line, fill=(30, 30, 30), font=font)
    return strip


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--preset", default="fast")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--per-stage", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.manual_seed(args.seed)  # an untrained model's random weights: the same on every run
    model = load_model(args.model, device="cpu")
    stages = fv.stage_map(model)
    preset = fv.get_preset(args.preset, steps=args.steps)
    rows, started = [], time.perf_counter()
    for st in stages.stages:
        objs = [fv.channel(st.representative, u) for u in range(args.per_stage)]
        res = fv.render_cached(model, objs, preset, seed=args.seed)
        short = st.representative.rsplit(".", 1)[-1] if len(st.representative) > 20 else st.representative
        rows.append((f"{st.name}\n{short}", list(res.images)))
        print(f"{st.name}: {st.representative} ({time.perf_counter() - started:.0f} s)", flush=True)
    sheet = fv.labelled_rows(rows)
    weights = f"RANDOM weights (untrained, torch seed {args.seed})" if not model.pretrained else "pretrained weights"
    lines = [
        f"{model.spec} - {weights}",
        f"preset {preset.name}: {preset.steps} steps, {preset.size} px image, seed {args.seed}; "
        f"units 0-{args.per_stage - 1} of each stage's block; the network always sees {model.input_size[0]} px.",
        stages.note,
    ]
    top = header(lines, sheet.width)
    out = Image.new("RGB", (sheet.width, top.height + sheet.height), "white")
    out.paste(top, (0, 0))
    out.paste(sheet, (0, top.height))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out.save(args.out)
    print(f"wrote {args.out} ({out.width}×{out.height}) in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
