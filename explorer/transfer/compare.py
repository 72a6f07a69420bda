"""Per-layer comparison of a base model and its fine-tuned copy on the user's images.

For every block of the ladder, in depth order: relative weight change (whole block and per output channel),
debiased minibatch CKA between the two models' activations with a bootstrap interval, and the cross-validated
accuracy of a linear probe on the *base* model's features; then a freeze-point recommendation
(:mod:`explorer.transfer.recommend`). Each image passes through each model exactly once; hooks pool every block's
output on the fly, so memory for CKA does not grow with the number of images.

Pooling: a block output (N, C, H, W) is average-pooled to a ``grid``×``grid`` map (default 4×4, or H×W when
smaller) and flattened, which keeps a coarse spatial layout for CKA; probes use global average pooling
(C features per image, the usual "feature extractor" setting). Vector outputs are used as they are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from explorer.data import TransformedView, eval_transform, open_dataset, stratified_subset
from explorer.errors import ExplorerError
from explorer.layers import Layout, execution_order, first_tensor, forward_hooks, guess_layout, ladder
from explorer.models import LoadedModel
from explorer.runtime import Progress, autocast, stop_requested, to_input
from explorer.transfer.cka import MinibatchCKA
from explorer.transfer.freeze import frozen_modules
from explorer.transfer.probes import ProbeResult, chance_level, probe_layers
from explorer.transfer.recommend import recommend
from explorer.transfer.report import ComparisonReport, LayerComparison


class CompareError(ExplorerError):
    """Two models that cannot be compared layer by layer, or data that cannot be used, in one sentence."""


# --------------------------------------------------------------------------- checks


def check_comparable(base: LoadedModel, tuned: LoadedModel) -> list[str]:
    """Raise CompareError unless `tuned` is the base architecture with (at most) a new head; return warnings."""
    sb, st = base.module.state_dict(), tuned.module.state_dict()
    if set(sb) != set(st):
        missing = sorted(set(sb) ^ set(st))
        raise CompareError(
            f"The tuned model ({tuned.arch}) is not the same architecture as the base ({base.arch}): "
            f"{len(missing)} weights differ by name (e.g. {missing[0]}). Compare needs two versions of one network."
        )
    odd = [k for k in sb if sb[k].shape != st[k].shape]
    owners = {k.rsplit(".", 1)[0] for k in odd}
    if len(owners) > 1:
        raise CompareError(
            f"The tuned model ({tuned.arch}) differs from the base ({base.arch}) in {len(owners)} layers' shapes "
            f"(e.g. {sorted(owners)[0]}); only the classifier may change size."
        )
    notes = []
    parent = tuned.metadata.get("base_fingerprint")
    if parent and parent != base.fingerprint:
        notes.append(
            f"The tuned model was fine-tuned from weights {parent[:12]}, not from this base "
            f"({base.short_fingerprint}): weight changes include that difference."
        )
    if base.fingerprint == tuned.fingerprint:
        notes.append("Base and tuned weights are identical: every layer will read CKA 1 and no change.")
    return notes


# --------------------------------------------------------------------------- pooling and the pass


def _pool(t: torch.Tensor, grid: int | None, layout: Layout | None = None) -> torch.Tensor:
    """A block output → (N, features) float32 for CKA: its grid (`explorer.layers` layout: NCHW, NHWC, or a ViT's
    patch tokens, class token left out) average-pooled to grid×grid; vectors as they are. `layout` defaults to the
    one the shape suggests."""
    t = t.detach()
    lay = layout or guess_layout(tuple(t.shape[1:]))
    if lay.kind == "none":
        return t.float().reshape(t.shape[0], -1).cpu()
    g = lay.to_grid(t).float()
    if grid:
        g = nn.functional.adaptive_avg_pool2d(g, (min(grid, g.shape[2]), min(grid, g.shape[3])))
    return g.reshape(g.shape[0], -1).cpu()


def _gap(t: torch.Tensor, layout: Layout | None = None) -> torch.Tensor:
    """Global-average-pooled features for the probes (N, C): the mean over the grid (patch tokens only)."""
    t = t.detach()
    lay = layout or guess_layout(tuple(t.shape[1:]))
    if lay.kind == "none":
        return t.float().reshape(t.shape[0], -1).cpu()
    return lay.pooled(t).float().cpu()


def _run(model: LoadedModel, x01: torch.Tensor, names: list[str], grid: int | None, gap: bool) -> tuple[Any, ...]:
    """One forward: pooled block outputs (and GAP features) recorded by thread-local hooks, plus logits."""
    pooled: dict[str, torch.Tensor] = {}
    gapped: dict[str, torch.Tensor] = {}

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is None or name in pooled:
            return
        pooled[name] = _pool(t, grid)
        if gap:
            gapped[name] = _gap(t)

    x = to_input(model.normalize(x01.to(model.device)), model.device)
    with torch.inference_mode(), autocast(model.device), forward_hooks(model.module, dict.fromkeys(names, on_output)):
        logits = model.module(x)
    return pooled, gapped, logits.float().cpu()


def _loader(dataset: Any, indices: list[int], model: LoadedModel, batch_size: int, size: int | None) -> DataLoader:
    """[0, 1] images resized and cropped as `model` expects; each model normalises them its own way."""
    return DataLoader(
        TransformedView(dataset, indices, eval_transform(model, size, normalize=False)[0]),
        batch_size=batch_size,
        shuffle=False,
    )


# --------------------------------------------------------------------------- weights


def _weight_changes(
    base: nn.Module, tuned: nn.Module, name: str, order: list[str]
) -> tuple[float | None, list[float], bool]:
    """(relative change of the block's parameters, per output channel of its last conv/linear, new head?)"""
    pb = dict(base.get_submodule(name).named_parameters())
    pt = dict(tuned.get_submodule(name).named_parameters())
    if not pb:
        return None, [], False
    if any(pb[k].shape != pt[k].shape for k in pb):
        return None, [], True
    num = sum(float((pt[k].detach().double() - pb[k].detach().double()).pow(2).sum()) for k in pb)
    den = sum(float(pb[k].detach().double().pow(2).sum()) for k in pb)
    whole = math.sqrt(num / den) if den > 0 else None
    inside = [n for n in order if n == name or n.startswith(name + ".")]
    last = None
    for n in reversed(inside):
        w = getattr(base.get_submodule(n), "weight", None)
        if isinstance(w, torch.Tensor) and w.dim() >= 2:
            last = n
            break
    channels: list[float] = []
    if last is not None:
        wb = base.get_submodule(last).weight.detach().double().flatten(1)
        wt = tuned.get_submodule(last).weight.detach().double().flatten(1)
        channels = ((wt - wb).norm(dim=1) / wb.norm(dim=1).clamp_min(1e-12)).tolist()
    return whole, channels, False


class _Minibatches:
    """Gathers forward chunks' pooled features into CKA minibatches of `size` rows (memory: one minibatch)."""

    def __init__(self, names: list[str], size: int) -> None:
        self.size = size
        self.cka = {n: MinibatchCKA(debiased=True) for n in names}
        self.buf: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {n: ([], []) for n in names}
        self.rows = 0

    def add(self, base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], rows: int) -> None:
        for n, (xs, ys) in self.buf.items():
            xs.append(base[n])
            ys.append(tuned[n])
        self.rows += rows
        while self.rows >= self.size:
            self._emit(self.size)

    def _emit(self, k: int) -> None:
        for n, (xs, ys) in self.buf.items():
            x, y = torch.cat(xs), torch.cat(ys)
            self.cka[n].update(x[:k], y[:k])
            self.buf[n] = ([x[k:]], [y[k:]])
        self.rows -= k

    def finish(self) -> dict[str, MinibatchCKA]:
        if self.rows >= 4:  # a last, smaller minibatch (weighted by its size)
            self._emit(self.rows)
        return self.cka


# --------------------------------------------------------------------------- the comparison


def compare(
    base: LoadedModel,
    tuned: LoadedModel,
    data: str | Path | Dataset,
    *,
    max_images: int | None = 1000,
    batch_size: int = 32,
    cka_batch: int = 64,
    grid: int | None = 4,
    n_boot: int = 1000,
    probes: bool = True,
    probe_folds: int = 5,
    similar_cka: float = 0.9,
    seed: int = 0,
    input_size: int | None = None,
    cross_excitation: Callable[..., dict[str, Any]] | None = None,
    progress: Progress | None = None,
    should_stop: Any = None,
) -> ComparisonReport:
    """Compare `base` and `tuned` block by block on an image folder ('demo:digits', a path, or a dataset).

    Images are shuffled with `seed` (so every CKA minibatch mixes classes), resized and cropped as the
    *tuned* model expects (or to `input_size` px), and normalised per model. `max_images` caps the images
    used (stratified subset; None: all). Images go through the models `batch_size` at a time (peak memory);
    CKA minibatches hold `cka_batch` images (fewer when needed for ≥ 10 minibatches, so the bootstrap works).
    `cross_excitation` is an optional plug-in ``(base, tuned, layer_names) -> {"values": {layer: float},
    "renders": {...}}``, e.g. ``explorer.transfer.crossexcite.as_plugin(units=4)``.
    """
    t0 = time.perf_counter()
    stop = stop_requested(should_stop)
    notes = check_comparable(base, tuned)
    rows = ladder(base, "blocks")
    names = [r.name for r in rows]
    if [r.name for r in ladder(tuned, "blocks")] != names:
        raise CompareError("The two models' layer ladders differ: compare needs two versions of one network.")
    dataset = open_dataset(data)
    labels_all = np.asarray(getattr(dataset, "targets", []), dtype=np.int64)
    classes = list(getattr(dataset, "classes", []))
    if labels_all.size < 8:
        raise CompareError("Comparing needs at least 8 images (CKA and probes need several per minibatch).")
    rng = np.random.default_rng(seed)
    idx = np.asarray(stratified_subset(labels_all.tolist(), max_images, seed))
    idx = idx[rng.permutation(idx.size)].tolist()
    same_classes = list(tuned.class_names) == classes
    mb = max(8, min(cka_batch, len(idx) // 10))  # ≥ ~10 minibatches for the bootstrap when data allow
    batches = _Minibatches(names, mb)
    feats: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    correct, n_seen, done, ys = 0, 0, 0, []
    loader = _loader(dataset, idx, tuned, max(1, batch_size), input_size)
    total_steps = len(loader) + (len(names) if probes else 0)
    t1 = time.perf_counter()
    for x01, y in loader:
        if stop():
            raise CompareError("The comparison was cancelled.")
        pb, gb, _ = _run(base, x01, names, grid, probes)
        pt, _, logits = _run(tuned, x01, names, grid, False)
        batches.add(pb, pt, len(y))
        for n in names if probes else ():
            feats[n].append(gb[n])
        if same_classes:
            correct += int((logits.argmax(1) == y).sum())
        n_seen += len(y)
        ys.append(y)
        done += 1
        if progress:
            progress(done, total_steps, {"phase": "forward", "images": n_seen})
    t2 = time.perf_counter()
    labels = torch.cat(ys).numpy()  # from the loader: an unreadable file was replaced by a readable one
    ckas = batches.finish()

    probe_res: dict[str, ProbeResult | None] = {}
    if probes:
        arrays = {n: torch.cat(v).numpy() for n, v in feats.items()}
        feats.clear()
        offset = done

        def probe_progress(i: int, _total: int, preview: Any) -> None:
            if progress:
                progress(offset + i, total_steps, preview)

        probe_res = probe_layers(
            arrays, labels, folds=probe_folds, seed=seed, progress=probe_progress, should_stop=stop
        )
    t3 = time.perf_counter()

    order = execution_order(base.module, base.input_size)
    frozen = (
        set(frozen_modules(tuned, tuned.metadata.get("freeze_after"))) if tuned.metadata.get("freeze_after") else set()
    )
    layers = []
    for i, r in enumerate(rows):
        est = ckas[r.name].estimate(n_boot=n_boot, seed=seed)
        wc, wch, new_head = _weight_changes(base.module, tuned.module, r.name, order)
        stateful = [n for n in order if (n == r.name or n.startswith(r.name + ".")) and _stateful(base.module, n)]
        pr = probe_res.get(r.name)
        layers.append(
            LayerComparison(
                name=r.name,
                index=i,
                type=r.type,
                stage=r.stage,
                channels=r.channels,
                params=r.params,
                cka=est.value,
                cka_low=est.low,
                cka_high=est.high,
                weight_change=wc,
                weight_change_channels=wch,
                probe_acc=pr.accuracy if pr else None,
                probe_std=pr.std if pr else None,
                frozen_in_tuned=bool(stateful) and all(n in frozen for n in stateful),
                new_head=new_head,
            )
        )
    renders: dict[str, Any] = {}
    if cross_excitation is not None:
        cx = cross_excitation(base, tuned, names)
        for row in layers:
            row.cross_excitation = cx.get("values", {}).get(row.name)
        units, per_unit = cx.get("units", {}), cx.get("per_unit", {})
        renders = {
            name: {**pics, "units": units.get(name, []), "per_unit": per_unit.get(name, [])}
            for name, pics in cx.get("renders", {}).items()
        }
    else:
        notes.append(
            "Cross-excitation was not measured (pass cross_excitation=explorer.transfer.crossexcite.as_plugin())."
        )
    tuned_acc = correct / n_seen if same_classes and n_seen else None
    n_classes = len(classes)
    rec = recommend(
        base,
        layers,
        n_images=int(labels_all.size),
        n_classes=n_classes,
        tuned_accuracy=tuned_acc,
        chance=chance_level(labels),
        tuned_freeze_after=tuned.metadata.get("freeze_after"),
        similar_cka=similar_cka,
    )
    return ComparisonReport(
        base={"spec": base.spec, "arch": base.arch, "fingerprint": base.fingerprint},
        tuned={
            "spec": tuned.spec,
            "arch": tuned.arch,
            "fingerprint": tuned.fingerprint,
            "freeze_after": tuned.metadata.get("freeze_after"),
            "metrics": tuned.metadata.get("metrics", {}),
        },
        data={
            "source": str(data) if not isinstance(data, Dataset) else type(data).__name__,
            "images_total": int(labels_all.size),
            "images_used": n_seen,
            "classes": classes,
            "input_size": [input_size, input_size] if input_size else list(tuned.input_size),
        },
        settings={
            "batch_size": batch_size,
            "cka_batch": mb,
            "grid": grid,
            "n_boot": n_boot,
            "probe_folds": probe_folds,
            "seed": seed,
            "similar_cka": similar_cka,
            "cka": "debiased minibatch CKA (Nguyen et al. 2021), linear kernel",
            "pooling": f"CKA: average pool to {grid}x{grid} grid; probes: global average pool",
        },
        layers=layers,
        recommendation=rec,
        tuned_accuracy=tuned_acc,
        chance=chance_level(labels),
        warnings=notes,
        seconds={"setup": t1 - t0, "forward": t2 - t1, "probes": t3 - t2, "total": time.perf_counter() - t0},
        renders=renders,
    )


def _stateful(module: nn.Module, name: str) -> bool:
    m = module.get_submodule(name)
    return any(True for _ in m.parameters(recurse=False)) or any(True for _ in m.buffers(recurse=False))
