"""Units labelled by the user's own classes: class selectivity per unit, and its mean per layer along the depth of
the network, a measured "generic → specific" curve (no label set is downloaded: the classes are the folder's).

A unit's response to an image is its channel's spatial mean (a vector layer's value), clipped at 0 as after a ReLU:
the index needs non-negative responses (Morcos et al. 2018 read post-ReLU units). With μ_c the unit's mean response
over the images of class c, the class selectivity index is

    SI = (μ_max − μ_rest) / (μ_max + μ_rest),   μ_max = max_c μ_c,   μ_rest = the mean of the other classes' μ_c,

0 for a unit that responds to every class alike, 1 for one that responds to a single class only. A unit silent on
every image has no index (counted as *silent*). With few images per class the index is biased upward (noise makes
one class come out on top), so each layer also reports the mean index with the labels shuffled: the chance level.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.layers import first_tensor, forward_hooks, layout_of
from explorer.models import LoadedModel
from explorer.runtime import Progress
from explorer.trust.cka_map import map_layers
from explorer.trust.samples import Samples, TrustError, load_samples
from explorer.trust.values import jsonable, nan_mean

TOP_CLASSES = 3


def class_means(responses: np.ndarray, labels: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """(classes, units) mean response per class; NaN for a class without images."""
    r = np.asarray(responses, dtype=np.float64)
    y = np.asarray(labels)
    out = np.full((n_classes, r.shape[1]), np.nan)
    for c in range(n_classes):
        if (y == c).any():
            out[c] = r[y == c].mean(0)
    return out


def selectivity_index(
    responses: np.ndarray, labels: Sequence[int] | np.ndarray, n_classes: int | None = None
) -> np.ndarray:
    """Class selectivity index of each unit (see the module docstring) from (images, units) responses ≥ 0;
    NaN for a silent unit."""
    r = np.clip(np.asarray(responses, dtype=np.float64), 0.0, None)
    y = np.asarray(labels)
    k = int(n_classes if n_classes is not None else y.max() + 1)
    means = class_means(r, y, k)
    means = means[np.isfinite(means).all(1)]  # classes present
    if means.shape[0] < 2:
        raise TrustError("Class selectivity needs images of at least two classes.")
    top = means.max(0)
    rest = (means.sum(0) - top) / (means.shape[0] - 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        si = (top - rest) / (top + rest)
    return np.where(top + rest > 0, si, np.nan)


@dataclass
class LayerSelectivity:
    """One layer: every unit's index and top classes, the mean over live units, and the chance level."""

    layer: str
    depth: float  # position along the layers measured, 0 (first) … 1 (last)
    index: np.ndarray  # (units,)
    top_classes: np.ndarray  # (units, TOP_CLASSES) class indices by mean response, strongest first
    chance: float  # mean index with the labels shuffled

    @property
    def units(self) -> int:
        return int(self.index.size)

    @property
    def silent(self) -> int:
        return int((~np.isfinite(self.index)).sum())

    @property
    def mean(self) -> float:
        live = self.index[np.isfinite(self.index)]
        return float(live.mean()) if live.size else float("nan")

    @property
    def median(self) -> float:
        live = self.index[np.isfinite(self.index)]
        return float(np.median(live)) if live.size else float("nan")


@dataclass
class SelectivityReport:
    """Class selectivity of every unit of the chosen layers of one model, on one labelled image set."""

    model: str
    fingerprint: str
    source: str
    classes: list[str]
    images: int
    layers: list[LayerSelectivity] = field(default_factory=list)
    seconds: float = 0.0

    def curve(self) -> list[tuple[str, float, float]]:
        """(layer, mean index, chance) along the depth: the measured generic → specific curve."""
        return [(ls.layer, ls.mean, ls.chance) for ls in self.layers]

    def to_dict(self, units: bool = True) -> dict[str, Any]:
        """JSON-ready: per layer the mean, median and chance index, and (with `units`) every unit's index and top
        classes by name."""
        rows = []
        for ls in self.layers:
            row: dict[str, Any] = {
                "layer": ls.layer,
                "depth": ls.depth,
                "units": ls.units,
                "silent": ls.silent,
                "mean_selectivity": ls.mean,
                "median_selectivity": ls.median,
                "chance_selectivity": ls.chance,
            }
            if units:
                row["unit_selectivity"] = ls.index
                row["unit_top_classes"] = [[self.classes[c] for c in t] for t in ls.top_classes.tolist()]
            rows.append(row)
        return jsonable(
            {
                "model": self.model,
                "model_fingerprint": self.fingerprint,
                "data": self.source,
                "classes": self.classes,
                "images": self.images,
                "index": "(mu_max - mu_rest) / (mu_max + mu_rest) of the unit's spatial-mean response clipped at 0",
                "seconds": round(self.seconds, 2),
                "layers": rows,
            }
        )


@torch.no_grad()
def unit_responses(
    model: LoadedModel,
    samples: Samples,
    layers: Sequence[str],
    *,
    input_size: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
) -> dict[str, np.ndarray]:
    """Layer → (images, units) responses: each channel's spatial mean (patch tokens only for a ViT), clipped at 0."""
    layouts = {n: layout_of(model, n) for n in layers}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in layers}
    seen: set[str] = set()

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is None or name in seen:
            return
        seen.add(name)
        lay = layouts[name]
        v = lay.pooled(t) if lay.grid is not None else t.reshape(t.shape[0], -1)
        parts[name].append(v.detach().float().clamp_min(0).cpu().numpy())

    n = len(samples)
    for i in range(0, n, batch_size):
        seen.clear()
        xb = model.normalize(samples.subset(i, i + batch_size).batch01(model, input_size).to(model.device))
        with forward_hooks(model.module, dict.fromkeys(layers, on_output)):
            model.module(xb)
        if progress:
            progress(min(i + batch_size, n), n, {"phase": "selectivity", "model": model.spec})
    return {k: np.concatenate(v) for k, v in parts.items()}


def selectivity(
    model: LoadedModel,
    data: str | Path | Samples,
    layers: str | Sequence[str] = "blocks",
    *,
    max_images: int | None = 500,
    input_size: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> SelectivityReport:
    """Class selectivity of every unit of `layers` on a labelled image folder or 'demo:NAME' (at most
    `max_images`, class-stratified), with the chance level of each layer (labels shuffled once, seeded)."""
    started = time.perf_counter()
    samples = load_samples(data, max_images, seed, labelled=True)
    names = [r.name for r in map_layers(model, layers)]
    if not names:
        raise TrustError("No layer to measure.")
    resp = unit_responses(model, samples, names, input_size=input_size, batch_size=batch_size, progress=progress)
    labels = np.asarray(samples.labels)
    k = len(samples.classes)
    shuffled = np.random.default_rng(seed).permutation(labels)
    out = []
    for i, n in enumerate(names):
        r = resp[n]
        means = class_means(np.clip(r, 0, None), labels, k)
        order = np.argsort(-np.nan_to_num(means, nan=-np.inf), axis=0)[:TOP_CLASSES].T
        chance = float(nan_mean(selectivity_index(r, shuffled, k)))
        depth = i / max(1, len(names) - 1)
        out.append(LayerSelectivity(n, depth, selectivity_index(r, labels, k), order, chance))
    return SelectivityReport(
        model=model.spec,
        fingerprint=model.fingerprint,
        source=samples.source,
        classes=list(samples.classes),
        images=len(samples),
        layers=out,
        seconds=time.perf_counter() - started,
    )
