"""Faithfulness per layer: does removing what a layer's map points at lower the class score (Petsiuk et al. 2018,
RISE; Samek et al. 2017, MoRF/LeRF)?

For every image and every layer, the map (upsampled to the input) orders the pixels. Two curves of the target
class's probability, each at `steps` + 1 fractions of the pixels:

- **deletion** (MoRF, most relevant first): the most relevant pixels first are replaced by the fill image; a
  faithful map makes the probability fall early, so a *low* area is good;
- **insertion**: starting from the fill image, the most relevant pixels first are put back; a *high* area is good.
  Deleting the *least* relevant first (LeRF) makes the same images in the opposite order (after a fraction f is
  deleted, the most relevant 1 − f are left, as after inserting 1 − f), so its area equals the insertion area and
  insertion stands for both.

The fill (the "blurred-image baseline") is the image blurred with a Gaussian of σ = `BLUR_SIGMA` × its side, so a
deleted pixel keeps its colour and the network sees no sharp edge of a black hole. Every curve is also measured for a
**random map** drawn on the layer's own grid and upsampled the same way, which has the same smoothness as the layer's
map: these metrics favour smooth maps (deleting a blob removes an object faster and leaves an image the network has
never seen), and a random map of the same grain carries that bias without any information. A layer's
**score** is its gain over that random map: (insertion − deletion) − (random insertion − random deletion).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from explorer.attribution import attribute, get_method, method_problem, resolve_layers
from explorer.data import load_image
from explorer.errors import msg
from explorer.models import LoadedModel, logits_of
from explorer.runtime import Progress, StopSignal, stop_requested
from explorer.trust.samples import Samples, TrustError, load_samples
from explorer.trust.values import jsonable

CURVES = ("deletion", "insertion")
FILLS = ("blur", "black", "mean")
BLUR_SIGMA = 0.03  # of the image side
BIAS_NOTE = msg(
    "Deletion and insertion favour smooth maps: removing a contiguous blob destroys an object faster, and the "
    "half-deleted images are unlike anything the network was trained on. Compare a layer with the random map on its "
    "own grid (same smoothness, no information), not across layers of different resolution by raw areas alone."
)


def fill_image(x01: torch.Tensor, fill: str = "blur") -> torch.Tensor:
    """What a deleted pixel becomes: the image blurred, black, or its mean colour ((N, 3, H, W) in [0, 1])."""
    if fill == "black":
        return torch.zeros_like(x01)
    if fill == "mean":
        return x01.mean(dim=(2, 3), keepdim=True).expand_as(x01).clone()
    if fill != "blur":
        raise TrustError(f"Unknown fill {fill!r}: use {', '.join(FILLS)}.")
    # start-up cost: torchvision takes ~1 s to import; only the blur fill needs it
    from torchvision.transforms.functional import gaussian_blur

    sigma = max(1.0, BLUR_SIGMA * max(x01.shape[-2:]))
    k = int(2 * round(3 * sigma) + 1)
    k = min(k, 2 * (min(x01.shape[-2:]) // 2) - 1)
    return gaussian_blur(x01, [k, k], [sigma, sigma])


def orders(saliency: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Pixel indices from most to least relevant; ties broken at random (seeded), not by position."""
    flat = saliency.detach().double().flatten().cpu()
    jitter = torch.rand(flat.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    span = float(flat.max() - flat.min()) or 1.0
    return torch.argsort(flat + jitter * span * 1e-9, descending=True)


@torch.no_grad()
def probabilities(model: LoadedModel, x01: torch.Tensor, target: int, batch_size: int = 32) -> np.ndarray:
    """The target class's softmax probability for each [0, 1] image of a batch."""
    out = []
    for i in range(0, x01.shape[0], batch_size):
        xb = model.normalize(x01[i : i + batch_size].to(model.device))
        out.append(logits_of(model.module(xb)).float().softmax(-1)[:, target].cpu())
    return torch.cat(out).numpy().astype(np.float64)


def perturbation_curves(
    model: LoadedModel,
    x01: torch.Tensor,
    saliency: torch.Tensor,
    target: int,
    *,
    steps: int = 16,
    fill: str | torch.Tensor = "blur",
    seed: int = 0,
    curves: Sequence[str] = CURVES,
) -> dict[str, np.ndarray]:
    """Curve name → the target probability at fractions 0, 1/steps, …, 1 of the pixels (see the module docstring).

    `x01`: one image (3, H, W) in [0, 1]; `saliency`: (h, w) relevance, upsampled to (H, W) bilinearly.
    """
    x = x01[None] if x01.dim() == 3 else x01
    h, w = x.shape[-2:]
    sal = saliency.detach().float()
    if tuple(sal.shape) != (h, w):
        sal = F.interpolate(sal[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
    base = fill_image(x, fill) if isinstance(fill, str) else fill.to(x).expand_as(x)
    order = orders(sal, seed)
    counts = [round(k * h * w / steps) for k in range(steps + 1)]
    ranks = torch.empty(h * w, dtype=torch.long)
    ranks[order] = torch.arange(h * w)
    out: dict[str, np.ndarray] = {}
    for name in curves:
        if name not in CURVES:
            raise TrustError(f"Unknown curve {name!r}: use {', '.join(CURVES)}.")
        masks = torch.stack([(ranks < c).view(1, h, w) for c in counts]).to(x.dtype)  # 1 = taken from the other image
        if name == "insertion":
            batch = base * (1 - masks) + x * masks
        else:
            batch = x * (1 - masks) + base * masks
        out[name] = probabilities(model, batch, target)
    return out


def area(curve: Sequence[float] | np.ndarray) -> float:
    """The area under a curve sampled at equal fractions of [0, 1] (trapezoid rule)."""
    y = np.asarray(curve, dtype=np.float64)
    return float(np.trapezoid(y, dx=1.0 / max(1, len(y) - 1)))


def random_map(grid: tuple[int, int], seed: int) -> torch.Tensor:
    """A map of uniform noise on a layer's own grid: the baseline with that layer's smoothness."""
    return torch.rand(grid, generator=torch.Generator().manual_seed(seed))


@dataclass
class LayerFaithfulness:
    """Mean curves (and their areas) of one layer's maps and of random maps on its grid, over the images."""

    layer: str
    grid: tuple[int, int]
    curves: dict[str, np.ndarray]  # CURVES and "random_" + CURVES → (steps + 1,)
    areas: dict[str, float] = field(default_factory=dict)

    @property
    def score(self) -> float:
        a = self.areas
        return (a["insertion"] - a["deletion"]) - (a["random_insertion"] - a["random_deletion"])

    @property
    def beats_random(self) -> bool:
        a = self.areas
        return a["deletion"] < a["random_deletion"] and a["insertion"] > a["random_insertion"]


@dataclass
class FaithfulnessReport:
    """Per layer, how much removing what its map points at changes the prediction; layers ranked by score."""

    model: str
    fingerprint: str
    method: str
    source: str
    images: int
    steps: int
    fill: str
    layers: dict[str, LayerFaithfulness]
    original_probability: float  # mean over images, target class, unperturbed
    fill_probability: float  # mean over images, target class, on the fill image alone
    seconds: float = 0.0

    @property
    def ranking(self) -> list[str]:
        """Layers from the most to the least faithful (score, best first)."""
        return sorted(self.layers, key=lambda n: -self.layers[n].score)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per layer the areas (`deletion`, `insertion`, `random_deletion`, `random_insertion`), the
        score and the mean curves."""
        return jsonable(
            {
                "model": self.model,
                "model_fingerprint": self.fingerprint,
                "method": self.method,
                "data": self.source,
                "images": self.images,
                "steps": self.steps,
                "fractions": [k / self.steps for k in range(self.steps + 1)],
                "fill": self.fill,
                "blur_sigma": BLUR_SIGMA if self.fill == "blur" else None,
                "original_probability": self.original_probability,
                "fill_probability": self.fill_probability,
                "bias_note": BIAS_NOTE,
                "score": "(insertion - deletion) - (random_insertion - random_deletion); higher is better",
                "ranking": self.ranking,
                "seconds": round(self.seconds, 2),
                "layers": {
                    n: {
                        "grid": list(lf.grid),
                        **lf.areas,
                        "score": lf.score,
                        "beats_random": lf.beats_random,
                        "curves": {k: v for k, v in lf.curves.items()},
                    }
                    for n, lf in self.layers.items()
                },
            }
        )


def faithfulness(
    model: LoadedModel,
    data: str | Path | Samples | Any,
    method: str = "gradcam",
    layers: str | Sequence[str] = "all",
    target: Any = None,
    *,
    max_images: int | None = 8,
    steps: int = 16,
    fill: str = "blur",
    seed: int = 0,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> FaithfulnessReport:
    """Deletion and insertion curves of every layer's `method` map on the images of `data` (a folder, a demo,
    `Samples`, or one image: a path or PIL image), against random maps on each layer's grid; the target is each
    image's predicted class unless `target` (an index or a class name) names one for every image."""
    started = time.perf_counter()
    get_method(method)
    problem = method_problem(model, method)
    if problem:
        raise TrustError(problem)
    if steps < 2:
        raise TrustError("The curves need at least 2 steps.")
    stop = stop_requested(should_stop)
    samples = _as_samples(data, max_images, seed)
    names = [r.name for r in resolve_layers(model, layers)]
    x01 = samples.batch01(model)
    sums: dict[str, dict[str, np.ndarray]] = {}
    grids: dict[str, tuple[int, int]] = {}
    originals, fills = [], []
    total = len(samples) * (len(names) + 1)
    done = 0
    for i in range(len(samples)):
        if stop():
            raise TrustError("The faithfulness measure was cancelled.")
        xi = x01[i]
        res = attribute(model, model.normalize(xi[None].to(model.device)), names, method, target)
        tgt = res.target[0]
        base = fill_image(xi[None], fill)
        originals.append(float(probabilities(model, xi[None], tgt)[0]))
        fills.append(float(probabilities(model, base, tgt)[0]))
        random_by_grid: dict[tuple[int, int], dict[str, np.ndarray]] = {}
        for n in res.layers:
            m = res.maps[n][0]
            grids[n] = (int(m.shape[-2]), int(m.shape[-1]))
            got = perturbation_curves(model, xi, m, tgt, steps=steps, fill=base, seed=seed + i)
            if grids[n] not in random_by_grid:
                noise = random_map(grids[n], seed * 7919 + i)
                random_by_grid[grids[n]] = perturbation_curves(model, xi, noise, tgt, steps=steps, fill=base, seed=i)
            got.update({f"random_{k}": v for k, v in random_by_grid[grids[n]].items()})
            acc = sums.setdefault(n, {k: np.zeros(steps + 1) for k in got})
            for k, v in got.items():
                acc[k] += v
            done += 1
            if progress:
                progress(done, total, {"phase": "faithfulness", "image": i, "layer": n})
        done += 1
        if progress:
            progress(done, total, {"phase": "faithfulness", "image": i})
    count = len(samples)
    out = {}
    for n in names:
        if n not in sums:
            continue
        curves = {c: v / count for c, v in sums[n].items()}
        out[n] = LayerFaithfulness(n, grids[n], curves, {c: area(v) for c, v in curves.items()})
    return FaithfulnessReport(
        model=model.spec,
        fingerprint=model.fingerprint,
        method=method,
        source=samples.source,
        images=count,
        steps=steps,
        fill=fill,
        layers=out,
        original_probability=float(np.mean(originals)),
        fill_probability=float(np.mean(fills)),
        seconds=time.perf_counter() - started,
    )


def _as_samples(data: Any, max_images: int | None, seed: int) -> Samples:
    """A folder/demo/Samples as it is; one image file or PIL image as a sample of one."""
    if isinstance(data, Image.Image):
        return Samples("image", ["image"], [data.convert("RGB")], [-1])
    if isinstance(data, (str, Path)) and Path(data).is_file():
        return Samples(str(data), [str(data)], [load_image(data)], [-1])
    return load_samples(data, max_images, seed)
