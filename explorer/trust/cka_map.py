"""Calibrated CKA between any two models, every pair of layers: which layer of A represents the images like which
layer of B, beyond what chance alignment gives.

Both models see the same images (each through its own resize, crop and normalisation). Every block's output is
average-pooled to a `grid` × `grid` map (vectors as they are, a ViT's patch tokens as their grid) and turned into a
linear Gram matrix; the debiased CKA of every (layer of A, layer of B) pair is the U-centred HSIC ratio of
:mod:`explorer.transfer.comparison.cka` (Nguyen, Raghu & Kornblith 2021), computed for all pairs at once. The plain
(biased) CKA is kept beside it (`plain`) to show how much width alone inflates it.

Calibration (Gröger, Wen & Brbić 2026): width and depth alone inflate similarity scores, so each value is set
against a permutation null: the images of B are shuffled (`permutations` times, one shuffle shared by all B layers),
which keeps each representation and destroys the correspondence. With τ the (1 − α) quantile of the observed value
and its K null values together, the calibrated value is clip((CKA − τ) / (1 − τ), 0, 1): 0 when the pair is not
more similar than shuffled images are 1 − α of the time, 1 only for CKA = 1; the p-value is (1 + #{null ≥ CKA}) /
(K + 1). The best pair is calibrated against the null of the *maximum* over all pairs (the same shuffles), which
accounts for having searched the whole matrix. The debiased estimator already reads about 0 on unrelated images, so
its null is centred on 0 and τ is of the order of 1/n: with a few hundred images calibration lowers each value by
about 0.01; it matters with few images and for the best pair.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from explorer.errors import msg
from explorer.layers import LayerInfo, Layout, first_tensor, forward_hooks, ladder, layout_of
from explorer.models import LoadedModel
from explorer.runtime import Progress
from explorer.transfer.comparison.cka import center_gram
from explorer.trust.samples import Samples, TrustError, load_samples
from explorer.trust.values import jsonable


@dataclass
class CKAMap:
    """Debiased CKA of every (layer of A, layer of B) pair, with its permutation null and calibrated value."""

    a: str
    b: str
    a_layers: list[str]
    b_layers: list[str]
    raw: np.ndarray  # (LA, LB) debiased CKA
    calibrated: np.ndarray
    p_values: np.ndarray
    tau: np.ndarray  # the (1 - alpha) critical value of each pair
    null_mean: np.ndarray
    images: int
    permutations: int
    alpha: float
    grid: int | None
    plain: np.ndarray | None = None  # the plain (biased) CKA, which width inflates: for comparison only
    source: str = ""
    best: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the matrices `raw` and `calibrated` (rows: layers of A; columns: layers of B), p-values,
        critical values and null means, and the best pair."""
        return jsonable(
            {
                "a": self.a,
                "b": self.b,
                "data": self.source,
                "images": self.images,
                "permutations": self.permutations,
                "alpha": self.alpha,
                "grid": self.grid,
                "measure": "debiased linear CKA (U-centred HSIC)",
                "calibration": "clip((CKA - tau) / (1 - tau), 0, 1), tau = (1 - alpha) quantile of observed + null",
                "a_layers": self.a_layers,
                "b_layers": self.b_layers,
                "raw": self.raw,
                "calibrated": self.calibrated,
                "plain": self.plain,
                "p_values": self.p_values,
                "tau": self.tau,
                "null_mean": self.null_mean,
                "best": self.best,
                "notes": self.notes,
                "seconds": round(self.seconds, 2),
            }
        )


# --------------------------------------------------------------------------- features


def map_layers(model: LoadedModel, layers: str | Sequence[str] = "blocks") -> list[LayerInfo]:
    """'blocks' (every block with a single-tensor output) or names, in execution order."""
    rows = [r for r in ladder(model, "blocks") if r.name and r.out_shape]
    if isinstance(layers, str) and layers == "blocks":
        return rows
    names = [layers] if isinstance(layers, str) else list(layers)
    full = {r.name: r for r in ladder(model, "full")}
    missing = [n for n in names if n not in full]
    if missing:
        raise TrustError(f"{model.spec} has no layer {missing[0]!r} (see `python -m explorer layers`).")
    return sorted((full[n] for n in dict.fromkeys(names)), key=lambda r: r.order)


def pooled(t: torch.Tensor, lay: Layout, grid: int | None) -> torch.Tensor:
    """A layer output → (N, features) float64 on the CPU, read through its layout (`explorer.layers.layout_of`):
    its grid average-pooled to grid × grid; vectors as they are."""
    if lay.kind == "none" or lay.grid is None:
        return t.detach().reshape(t.shape[0], -1).double().cpu()
    g = lay.to_grid(t.detach()).float()
    if grid:
        g = F.adaptive_avg_pool2d(g, (min(grid, g.shape[2]), min(grid, g.shape[3])))
    return g.reshape(g.shape[0], -1).double().cpu()


@torch.no_grad()
def layer_grams(
    model: LoadedModel,
    samples: Samples,
    layers: Sequence[str],
    *,
    grid: int | None = 4,
    input_size: int | None = None,
    batch_size: int = 32,
    progress: Progress | None = None,
    offset: int = 0,
    total: int | None = None,
) -> dict[str, torch.Tensor]:
    """Layer → the linear Gram matrix (n × n, float64) of its pooled, column-centred features on the samples."""
    layouts = {n: layout_of(model, n) for n in layers}  # traced before any hook is on (a trace is a forward)
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    seen: dict[str, bool] = {}

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is not None and not seen.get(name):
            seen[name] = True
            feats[name].append(pooled(t, layouts[name], grid))

    x01 = samples.batch01(model, input_size)
    n = x01.shape[0]
    for i in range(0, n, batch_size):
        seen.clear()
        xb = model.normalize(x01[i : i + batch_size].to(model.device))
        with forward_hooks(model.module, dict.fromkeys(layers, on_output)):
            model.module(xb)
        if progress:
            progress(offset + min(i + batch_size, n), total or n, {"phase": "features", "model": model.spec})
    out = {}
    for name, parts in feats.items():
        f = torch.cat(parts)
        f = f - f.mean(0, keepdim=True)
        out[name] = f @ f.T
    return out


# --------------------------------------------------------------------------- the map


def critical_value(observed: torch.Tensor, null: torch.Tensor, alpha: float) -> torch.Tensor:
    """τ: the ceil((1 − α)(K + 1))-th smallest of the observed value and its K null values (elementwise over
    leading dimensions; `null` has the permutations last)."""
    k = null.shape[-1]
    combined = torch.sort(torch.cat([observed.unsqueeze(-1), null], -1), -1).values
    idx = min(max(math.ceil((1.0 - alpha) * (k + 1)) - 1, 0), k)
    return combined[..., idx]


def calibrate(observed: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """clip((s − τ) / (1 − τ), 0, 1), the calibrated score (1 where s = 1)."""
    return ((observed - tau) / (1.0 - tau).clamp_min(1e-12)).clamp(0.0, 1.0)


def cka_matrix(ka: torch.Tensor, kb: torch.Tensor) -> torch.Tensor:
    """(LA, LB) CKA from stacked U-centred Grams (LA, n, n) and (LB, n, n)."""
    fa, fb = ka.reshape(ka.shape[0], -1), kb.reshape(kb.shape[0], -1)
    na, nb = fa.norm(dim=1), fb.norm(dim=1)
    return (fa @ fb.T) / (na[:, None] * nb[None, :]).clamp_min(1e-300)


def calibrated_map(
    grams_a: dict[str, torch.Tensor],
    grams_b: dict[str, torch.Tensor],
    *,
    permutations: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict[str, Any]:
    """From linear Gram matrices of the same n images (layer → n × n): the debiased CKA of every pair (`raw`), its
    calibrated value, p-value, τ and null mean, the plain (biased) CKA for comparison, and the best pair (see the
    module docstring)."""
    if permutations < 1:
        raise TrustError("The permutation null needs at least 1 permutation.")
    if not 0.0 < alpha < 1.0:
        raise TrustError(f"alpha must lie between 0 and 1, not {alpha}.")
    ka = torch.stack([center_gram(g, unbiased=True) for g in grams_a.values()])
    kb = torch.stack([center_gram(g, unbiased=True) for g in grams_b.values()])
    n = ka.shape[1]
    raw = cka_matrix(ka, kb)
    plain = cka_matrix(
        torch.stack([center_gram(g) for g in grams_a.values()]), torch.stack([center_gram(g) for g in grams_b.values()])
    )
    gen = torch.Generator().manual_seed(seed)
    null = torch.empty(*raw.shape, permutations, dtype=raw.dtype)
    for k in range(permutations):
        p = torch.randperm(n, generator=gen)
        null[..., k] = cka_matrix(ka, kb[:, p][:, :, p])
    tau = critical_value(raw, null, alpha)
    p_values = (1.0 + (null >= raw.unsqueeze(-1)).sum(-1)) / (permutations + 1)
    best_at = divmod(int(raw.argmax()), raw.shape[1])
    best_null = null.reshape(-1, permutations).amax(0)
    best_raw = raw[best_at]
    best_tau = critical_value(best_raw, best_null, alpha)
    names_a, names_b = list(grams_a), list(grams_b)
    return {
        "raw": raw.numpy(),
        "plain": plain.numpy(),
        "calibrated": calibrate(raw, tau).numpy(),
        "p_values": p_values.numpy(),
        "tau": tau.numpy(),
        "null_mean": null.mean(-1).numpy(),
        "best": {
            "a": names_a[best_at[0]],
            "b": names_b[best_at[1]],
            "raw": float(best_raw),
            "calibrated": float(calibrate(best_raw, best_tau)),
            "p_value": float((1.0 + (best_null >= best_raw).sum()) / (permutations + 1)),
            "note": "calibrated against the maximum over every pair under the same shuffles",
        },
    }


def cka_map(
    a: LoadedModel,
    b: LoadedModel,
    data: str | Path | Samples,
    *,
    layers_a: str | Sequence[str] = "blocks",
    layers_b: str | Sequence[str] = "blocks",
    max_images: int | None = 200,
    permutations: int = 200,
    alpha: float = 0.05,
    grid: int | None = 4,
    input_size: int | None = None,
    batch_size: int = 32,
    seed: int = 0,
    progress: Progress | None = None,
) -> CKAMap:
    """Calibrated debiased CKA of every (layer of `a`, layer of `b`) pair on the same images of `data` (a class
    folder, a flat image folder, 'demo:NAME' or `Samples`), `max_images` of them (stratified when labelled)."""
    started = time.perf_counter()
    samples = load_samples(data, max_images, seed)
    if len(samples) < 8:
        raise TrustError(f"The CKA map needs at least 8 images; {samples.source} gave {len(samples)}.")
    la = [r.name for r in map_layers(a, layers_a)]
    lb = [r.name for r in map_layers(b, layers_b)]
    n = len(samples)
    same = a is b and la == lb
    total = n if same else 2 * n
    ga = layer_grams(a, samples, la, grid=grid, input_size=input_size, batch_size=batch_size, progress=progress,
                     total=total)  # fmt: skip
    gb = ga if same else layer_grams(
        b, samples, lb, grid=grid, input_size=input_size, batch_size=batch_size, progress=progress, offset=n,
        total=total,
    )  # fmt: skip
    res = calibrated_map(ga, gb, permutations=permutations, alpha=alpha, seed=seed)
    notes = []
    if a.fingerprint == b.fingerprint:
        notes.append(msg("A and B have the same weights: the diagonal reads 1."))
    if n < 50:
        notes.append(msg(f"Only {n} images: the null is wide and calibrated values are low; use more images."))
    return CKAMap(
        a=a.spec,
        b=b.spec,
        a_layers=la,
        b_layers=lb,
        raw=res["raw"],
        calibrated=res["calibrated"],
        p_values=res["p_values"],
        tau=res["tau"],
        null_mean=res["null_mean"],
        images=n,
        permutations=permutations,
        alpha=alpha,
        grid=grid,
        plain=res["plain"],
        source=samples.source,
        best=res["best"],
        notes=notes,
        seconds=time.perf_counter() - started,
    )
