"""Attribution results as files: the overlay grid PNG (with its colour bar), magnitudes as JSON and CSV.

Shared by the Attribution page's downloads and `python -m explorer attribute`; no Streamlit here.
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from explorer.attribution.colour import DEFAULT_CMAP, colorize
from explorer.attribution.result import AttributionResult

GRID_COLUMNS = 6


def fmt(v: float) -> str:
    return f"{v:.3g}" if v else "0"


def peak(res: AttributionResult, name: str) -> float:
    """The largest value of `name`'s map for the first image (of |value| unless the method reads positive)."""
    return res.peaks(0)[name]


def grid_png(res: AttributionResult, scale: str, *, columns: int = GRID_COLUMNS, title: str = "") -> bytes:
    """Every layer's overlay in one labelled PNG, with the colour bar and its range underneath."""
    pics, ranges = res.overlays(scale=scale), res.scale(scale, image=0)
    cmap = DEFAULT_CMAP[res.display]
    cw, ch = next(iter(pics.values())).size
    pad, label_h, title_h, bar_h = 8, 20, 30, 58
    rows = math.ceil(len(pics) / columns)
    width = pad + columns * (cw + pad)
    canvas = Image.new("RGB", (width, title_h + rows * (ch + label_h + pad) + bar_h), "white")
    draw = ImageDraw.Draw(canvas)
    font, small = ImageFont.load_default(size=16), ImageFont.load_default(size=12)
    draw.text((pad, 7), title.replace("×", "x").replace("−", "-"), fill="black", font=font)  # the font is ASCII
    for i, (name, pic) in enumerate(pics.items()):
        x, y = pad + (i % columns) * (cw + pad), title_h + (i // columns) * (ch + label_h + pad)
        canvas.paste(pic, (x, y))
        h, w = res.maps[name].shape[1:]
        value = f"max {fmt(ranges[name][1])}" if scale == "layer" else f"peak {fmt(peak(res, name))}"
        draw.text((x, y + ch + 3), fit_label(draw, name, f" · {h}x{w} · {value}", small, cw), fill="#333", font=small)
    vmin, vmax = ranges[res.layers[0]] if scale == "shared" else (-1.0, 1.0) if res.display != "positive" else (0, 1)
    bar_w, y0 = min(560, width - 2 * pad), canvas.height - bar_h + 8
    strip = colorize(np.linspace(vmin, vmax, bar_w)[None].repeat(14, 0), vmin, vmax, cmap)
    canvas.paste(Image.fromarray(strip), (pad, y0))
    left, right = (fmt(vmin), fmt(vmax)) if scale == "shared" else ("-max" if vmin < 0 else "0", "max of each layer")
    draw.text((pad, y0 + 18), left, fill="#333", font=small)
    draw.text((pad + bar_w, y0 + 18), right, fill="#333", font=small, anchor="ra")
    what = "shared colour scale (raw values)" if scale == "shared" else "per-layer normalisation"
    draw.text((pad + bar_w + 16, y0), what, fill="#333", font=small)
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def fit_label(draw: ImageDraw.ImageDraw, name: str, tail: str, font: Any, width: int) -> str:
    """`name + tail` within `width` pixels: the name loses its leading part ('…encoder_layer_10'), then the tail."""
    text = name + tail
    if draw.textlength(text, font=font) <= width:
        return text
    for cut in range(1, len(name)):
        short = "…" + name[cut:] + tail
        if draw.textlength(short, font=font) <= width:
            return short
    return "…" + name.rsplit(".", 1)[-1]


def top_channels(scores: dict[str, Any], layer: str, k: int) -> list[tuple[int, float]]:
    """The `k` channels of `layer` with the largest score for the first image."""
    if layer not in scores:
        return []
    s = scores[layer][0]
    return [(int(c), float(s[c])) for c in s.argsort(descending=True)[: min(k, s.numel())]]


def magnitudes_json(res: AttributionResult, scale: str, scores: dict[str, Any], k: int) -> str:
    """The result's summary with each layer's colour range, top channels (gradient × activation) and raw map."""
    data = res.summary(k=k)
    ranges = res.scale(scale, image=0)
    data.update(scale=scale, channel_score="gradient × activation summed over space")
    for name, rec in data["layers"].items():
        rec["colour_range"] = list(ranges[name])
        rec["top_channels"] = [{"channel": c, "score": s} for c, s in top_channels(scores, name, k)]
        rec["map"] = res.maps[name][0].tolist()
    return json.dumps(data, ensure_ascii=False)


def magnitudes_csv(res: AttributionResult) -> str:
    """Every raw map value, one row each: layer, row, col, value (layers in execution order)."""
    buf = io.StringIO()
    out = csv.writer(buf)
    out.writerow(["layer", "row", "col", "value"])
    for name in res.layers:
        m = res.maps[name][0].numpy()
        rows, cols = np.indices(m.shape)
        out.writerows(
            zip([name] * m.size, rows.ravel().tolist(), cols.ravel().tolist(), m.ravel().tolist(), strict=True)
        )
    return buf.getvalue()
