"""Cross-excitation: does a fine-tuned unit still respond to what its pretrained self was looking for?

For a unit u of layer L, render its feature visualization in the base model (v_base) and in the tuned model
(v_tuned) from the same seed, then measure the *tuned* unit's mean activation on each, relative to a flat grey
image:  (a_tuned(v_base) − a_tuned(grey)) / (a_tuned(v_tuned) − a_tuned(grey)).
1 means the unit is as excited by the base model's picture as by its own (it still detects the same thing);
near 0 means the pretrained feature no longer drives it. Layer value: the median over the sampled units.
The same-seed renders come back too, for showing the two pictures side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from explorer import featurevis as fv
from explorer.layers import forward_until, ladder, to_nchw
from explorer.models import LoadedModel
from explorer.runtime import Progress


@dataclass
class CrossExcitation:
    """Per layer: median ratio, per-unit ratios, which units, and both models' renders (uint8, N×H×W×3)."""

    values: dict[str, float] = field(default_factory=dict)
    per_unit: dict[str, list[float]] = field(default_factory=dict)
    units: dict[str, list[int]] = field(default_factory=dict)
    renders: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    preset: str = "fast"
    seed: int = 0


def pick_layers(model: LoadedModel, names: Sequence[str] | None = None, max_layers: int = 6) -> list[str]:
    """Up to `max_layers` spatial blocks spread evenly over the depth (all given `names` when they fit)."""
    rows = [r for r in ladder(model, "blocks") if r.spatial is not None and r.channels]
    if names is not None:
        rows = [r for r in rows if r.name in set(names)]
    if len(rows) <= max_layers:
        return [r.name for r in rows]
    picks = np.unique(np.linspace(0, len(rows) - 1, max_layers).round().astype(int))
    return [rows[i].name for i in picks]


def _units(channels: int, k: int) -> list[int]:
    return sorted({int(u) for u in np.linspace(0, channels - 1, min(k, channels)).round()})


@torch.no_grad()
def _unit_means(
    model: LoadedModel, images: np.ndarray, layer: str, units: list[int], size: tuple[int, int]
) -> np.ndarray:
    """Mean activation of each image's unit (image i ↔ units[i]) at `layer`, images resized to `size`."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(255.0).to(model.device)
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False)
    out = to_nchw(forward_until(model.module, layer, model.normalize(x))).float()
    idx = torch.as_tensor(units, device=out.device)
    return out[torch.arange(len(units), device=out.device), idx].mean((1, 2)).cpu().numpy()


def cross_excitation(
    base: LoadedModel,
    tuned: LoadedModel,
    layers: Sequence[str] | None = None,
    *,
    units: int = 4,
    max_layers: int = 6,
    preset: str = "fast",
    steps: int | None = None,
    size: int | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> CrossExcitation:
    """Render `units` channels of each chosen layer in both models (same seed) and measure cross-excitation."""
    chosen = pick_layers(base, layers, max_layers)
    info = {r.name: r for r in ladder(base, "blocks")}
    plan = [(name, u) for name in chosen for u in _units(int(info[name].channels or 1), units)]
    objs = [fv.channel(name, u) for name, u in plan]
    result = CrossExcitation(preset=preset, seed=seed)
    if not objs:
        return result
    done = [0]

    def report(offset: int) -> Progress:
        def cb(d: int, t: int, preview: Any) -> None:
            if progress:
                progress(offset + d, 2 * t, preview)

        return cb

    rb = fv.render(base, objs, preset=preset, seed=seed, steps=steps, size=size, progress=report(0))
    total = len(objs) * rb.curves.shape[1]
    done[0] = total
    rt = fv.render(tuned, objs, preset=preset, seed=seed, steps=steps, size=size, progress=report(total))
    eval_size = (tuned.input_size[0], tuned.input_size[1])
    grey = np.full((1, *rb.images.shape[1:]), 128, dtype=np.uint8)
    for name in chosen:
        rows = [i for i, (n, _) in enumerate(plan) if n == name]
        us = [plan[i][1] for i in rows]
        on_base = _unit_means(tuned, rb.images[rows], name, us, eval_size)
        on_own = _unit_means(tuned, rt.images[rows], name, us, eval_size)
        floor = _unit_means(tuned, np.repeat(grey, len(rows), 0), name, us, eval_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = (on_base - floor) / (on_own - floor)
        ratio = np.where((on_own - floor) > 1e-6, ratio, np.nan)
        result.per_unit[name] = [float(r) for r in ratio]
        result.units[name] = us
        finite = ratio[np.isfinite(ratio)]
        result.values[name] = float(np.median(finite)) if finite.size else float("nan")
        result.renders[name] = {"base": rb.images[rows], "tuned": rt.images[rows]}
    return result


def as_plugin(**kwargs: Any) -> Callable[[LoadedModel, LoadedModel, list[str]], dict[str, Any]]:
    """A `compare(..., cross_excitation=...)` plug-in: ``compare(b, t, data, cross_excitation=as_plugin(units=4))``."""

    def run(base: LoadedModel, tuned: LoadedModel, names: list[str]) -> dict[str, Any]:
        cx = cross_excitation(base, tuned, names, **kwargs)
        return {"values": cx.values, "renders": cx.renders, "per_unit": cx.per_unit, "units": cx.units}

    return run
