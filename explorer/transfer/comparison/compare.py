"""Per-layer comparison of a base model and its fine-tuned copy, on images the tuned model never trained on.

Images: when they are the tuning data, only the images the fine-tune held out (the split saved in its checkpoint,
:mod:`explorer.transfer.training.heldout`); otherwise every image, and the report says plainly whether the data are
different or the split unknown (then the tuned model's accuracy is not reported). Each image passes once through
the base, the tuned model and, with BatchNorm, two hybrids that tell statistics from weights (tuned weights + base
statistics; base weights + tuned statistics, :mod:`explorer.transfer.comparison.weights`). For every block of the
ladder, in
depth order: debiased CKA with the base (full sample, 95 % jackknife interval over images, and again on two
disjoint halves), weight change (relative, absolute RMS, per step budget) and BatchNorm statistic change, and the
cross-validated accuracy of a linear probe on the *base* features. Then the advice
(:mod:`explorer.transfer.advice.recommend`).

Pooling (:mod:`explorer.transfer.comparison.pooling`, through each layer's layout): a block output (N, C, H, W), or a
ViT's
patch tokens as their grid (the class token left out, its CKA reported apart as ``cka_class_token``), is
average-pooled to a ``grid``×``grid`` map (default 4×4, or H×W when smaller) and flattened, which keeps a coarse
spatial layout for CKA; probes use global average pooling (C features per image, the usual "feature extractor"
setting). Vector outputs are used as they are. Pooled features of every layer are held in memory until the Gram
matrices are built (checked against a budget first)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from explorer.data import TransformedView, eval_transform, open_dataset, stratified_subset
from explorer.errors import ExplorerError, msg
from explorer.layers import LayerInfo, Layout, check_input_size, first_tensor, forward_hooks, ladder, layout_of
from explorer.models import LoadedModel, logits_of
from explorer.runtime import Progress, StopSignal, autocast, stop_requested, to_input
from explorer.transfer.advice.recommend import with_sweep
from explorer.transfer.comparison.assemble import build_report, layer_rows
from explorer.transfer.comparison.cka import layer_cka, split_halves
from explorer.transfer.comparison.pooling import gap_features, pooled_features
from explorer.transfer.comparison.probes import ProbeResult, probe_layers
from explorer.transfer.comparison.weights import has_bn_stats, hybrid
from explorer.transfer.reporting.report import ComparisonReport
from explorer.transfer.sweeping.sweep_report import SweepReport, sweep_mismatch
from explorer.transfer.training.heldout import HeldOut, file_list_sha256, heldout_images, labels_of

# (base, tuned, layer names) -> {"values": {layer: float}, "renders": {layer: {...}}, "units": …, "per_unit": …}
CrossExcitation = Callable[[LoadedModel, LoadedModel, list[str]], dict[str, dict[str, object]]]

FEATURE_BUDGET_BYTES = 3_000_000_000  # pooled features held for the Gram matrices, all models together


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
            msg(
                f"The tuned model was fine-tuned from weights {parent[:12]}, not from this base "
                f"({base.short_fingerprint}): weight changes include that difference."
            )
        )
    if base.fingerprint == tuned.fingerprint:
        notes.append(msg("Base and tuned weights are identical: every layer will read CKA 1 and no change."))
    return notes


# --------------------------------------------------------------------------- pooling and the pass


def _run(
    model: LoadedModel,
    x01: torch.Tensor,
    layouts: dict[str, Layout],
    grid: int | None,
    gap: bool,
) -> tuple[Any, ...]:
    """One forward: pooled block outputs (patch tokens only for a ViT), GAP features and class tokens recorded by
    thread-local hooks, plus logits."""
    pooled: dict[str, torch.Tensor] = {}
    gapped: dict[str, torch.Tensor] = {}
    tokens: dict[str, torch.Tensor] = {}

    def on_output(name: str, _mod: nn.Module, out: Any) -> None:
        t = first_tensor(out)
        if t is None or name in pooled:
            return
        lay = layouts.get(name)
        pooled[name] = pooled_features(t, grid, lay)
        if gap:
            gapped[name] = gap_features(t, lay)
        cls = lay.prefix_tokens(t) if lay is not None else None
        if cls is not None:
            tokens[name] = cls[:, 0].detach().float().cpu()

    x = to_input(model.normalize(x01.to(model.device)), model.device)
    with torch.inference_mode(), autocast(model.device), forward_hooks(model.module, dict.fromkeys(layouts, on_output)):
        logits = logits_of(model.module(x))
    return pooled, gapped, logits.float().cpu(), tokens


def _loader(dataset: Any, indices: list[int], model: LoadedModel, batch_size: int, size: int | None) -> DataLoader:
    """[0, 1] images resized and cropped as `model` expects; each model normalises them its own way."""
    return DataLoader(
        TransformedView(dataset, indices, eval_transform(model, size, normalize=False)[0]),
        batch_size=batch_size,
        shuffle=False,
    )


def _feature_bytes(rows: list[LayerInfo], grid: int | None, images: int, models: int) -> int:
    """Bytes of pooled float32 features `images` images put in memory for `models` models."""
    per_image = 0
    for r in rows:
        shape = r.out_shape
        if len(shape) == 3:
            hw = r.spatial or (1, 1)
            cells = min(grid, hw[0]) * min(grid, hw[1]) if grid else hw[0] * hw[1]
            per_image += (r.channels or 1) * cells
        else:
            per_image += int(np.prod(shape)) if shape else 1
    return 4 * per_image * images * models


def _models(base: LoadedModel, tuned: LoadedModel, bn_parts: bool) -> dict[str, LoadedModel]:
    """The networks every image passes through: base, tuned, and the two BatchNorm hybrids (private copies)."""
    out = {"base": base, "tuned": tuned}
    if bn_parts and has_bn_stats(base.module):
        out["weights"] = dataclasses.replace(tuned, module=hybrid(tuned.module, base.module))
        out["stats"] = dataclasses.replace(base, module=hybrid(base.module, tuned.module))
    return out


def _forward(
    models: dict[str, LoadedModel],
    loader: DataLoader,
    names: list[str],
    grid: int | None,
    probes: bool,
    stop: Callable[[], bool],
    tick: Callable[[int], None],
) -> tuple[Any, ...]:
    """Every image once through each model: pooled features per model and layer, base GAP features, logits, labels,
    and per token layer the class token of base and tuned."""
    feats: dict[str, dict[str, list[torch.Tensor]]] = {m: {n: [] for n in names} for m in models}
    gaps: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    cls: dict[str, dict[str, list[torch.Tensor]]] = {m: {} for m in ("base", "tuned")}
    logits, labels = [], []
    layouts = {n: layout_of(models["base"], n) for n in names}
    for x01, y in loader:
        if stop():
            raise CompareError("The comparison was cancelled.")
        for key, model in models.items():
            pooled, gapped, out, tokens = _run(model, x01, layouts, grid, key == "base")  # a quick probe always
            for n in names:
                feats[key][n].append(pooled[n])
            if key in cls:
                for n, t in tokens.items():
                    cls[key].setdefault(n, []).append(t)
            if key == "base":
                for n in gapped:
                    gaps[n].append(gapped[n])
            if key == "tuned":
                logits.append(out)
        labels.append(y)
        tick(len(y))
    both = [n for n in cls["base"] if len(cls["tuned"].get(n, [])) == len(cls["base"][n])]
    class_tokens = {n: {k: torch.cat(cls[k][n]) for k in cls} for n in both}
    return feats, gaps, torch.cat(logits), torch.cat(labels), class_tokens


# --------------------------------------------------------------------------- CKA per layer


# --------------------------------------------------------------------------- the comparison


@dataclasses.dataclass
class _Plan:
    """What a comparison will measure: the layers, the images, the networks each image goes through."""

    rows: list[LayerInfo]
    names: list[str]
    dataset: Dataset
    source: str
    classes: list[str]
    held: HeldOut
    indices: list[int]
    models: dict[str, LoadedModel]
    notes: list[str]


def _plan(
    base: LoadedModel,
    tuned: LoadedModel,
    data: str | Path | Dataset,
    max_images: int | None,
    seed: int,
    grid: int | None,
    bn_parts: bool,
) -> _Plan:
    notes = check_comparable(base, tuned)
    rows = ladder(base, "blocks")
    names = [r.name for r in rows]
    if [r.name for r in ladder(tuned, "blocks")] != names:
        raise CompareError("The two models' layer ladders differ: compare needs two versions of one network.")
    dataset = open_dataset(data)
    source = str(data) if not isinstance(data, Dataset) else type(data).__name__
    held = heldout_images(tuned.metadata, dataset, source)
    labels = labels_of(dataset)
    sub = stratified_subset([labels[i] for i in held.indices], max_images, seed)
    idx = sorted(held.indices[i] for i in sub)
    if len(idx) < 8:
        raise CompareError(f"Comparing needs at least 8 images; only {len(idx)} are usable here ({held.note})")
    models = _models(base, tuned, bn_parts)
    need = _feature_bytes(rows, grid, len(idx), len(models))
    if need > FEATURE_BUDGET_BYTES:
        raise CompareError(
            f"Comparing {len(idx)} images would hold {need / 2**30:.1f} GiB of features; use fewer "
            "images (max_images) or a coarser grid."
        )
    classes = list(getattr(dataset, "classes", []))
    return _Plan(rows, names, dataset, source, classes, held, idx, models, notes)


def compare(
    base: LoadedModel,
    tuned: LoadedModel,
    data: str | Path | Dataset,
    *,
    max_images: int | None = 1000,
    batch_size: int = 32,
    grid: int | None = 4,
    probes: bool = True,
    probe_folds: int = 5,
    similar_cka: float = 0.9,
    seed: int = 0,
    input_size: int | None = None,
    bn_parts: bool = True,
    cross_excitation: CrossExcitation | None = None,
    sweep: SweepReport | None = None,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> ComparisonReport:
    """Compare `base` and `tuned` block by block on an image folder ('demo:digits', a path, or a dataset).

    Uses the tuned model's held-out images when `data` is its tuning data (see the module docstring), at most
    `max_images` of them (stratified; None: all), resized and cropped as the *tuned* model expects (or to
    `input_size` px) and normalised per model, `batch_size` at a time. `bn_parts` adds the two BatchNorm hybrids
    (one more forward each). `sweep`: a measured freeze sweep, which then decides the advice. `cross_excitation`
    is an optional plug-in ``(base, tuned, layer_names) -> {"values": {layer: float}, "renders": {...}}``, e.g.
    ``explorer.transfer.comparison.crossexcite.as_plugin(units=4)``.
    """
    t0 = time.perf_counter()
    stop = stop_requested(should_stop)
    if input_size:  # a ViT runs only at its own size
        check_input_size(tuned, (input_size, input_size))
    plan = _plan(base, tuned, data, max_images, seed, grid, bn_parts)
    if sweep is not None:  # a sweep belongs to its data, base model and input size: refused elsewhere
        why = sweep_mismatch(
            sweep,
            base_fingerprint=base.fingerprint,
            data_sha256=file_list_sha256(plan.dataset),
            input_size=input_size or tuned.input_size[0],
        )
        if why:
            raise CompareError(why)
    loader = _loader(plan.dataset, plan.indices, tuned, max(1, batch_size), input_size)
    total = len(loader) + (len(plan.names) if probes else 0)
    done = [0, 0]

    def tick(n: int) -> None:
        done[0], done[1] = done[0] + 1, done[1] + n
        if progress:
            progress(done[0], total, {"phase": "forward", "images": done[1]})

    t1 = time.perf_counter()
    feats, gaps, logits, labels, class_tokens = _forward(plan.models, loader, plan.names, grid, probes, stop, tick)
    t2 = time.perf_counter()
    halves = split_halves(len(labels), seed)
    ckas = {n: layer_cka({k: torch.cat(v[n]) for k, v in feats.items()}, halves) for n in plan.names}
    token_ckas = {n: layer_cka(v, halves) for n, v in class_tokens.items()}
    del feats
    if probes:
        probe_res = _probes(gaps, labels.numpy(), probe_folds, seed, progress, done[0], total, stop)
    else:  # the gate still needs to know what the frozen features give: one quick probe before the head (seconds)
        last = [n for n in plan.names[:-1] if gaps.get(n)][-1:]
        probe_res = _probes({n: gaps[n] for n in last}, labels.numpy(), 3, seed, None, 0, 0, stop)
    t3 = time.perf_counter()
    layers = layer_rows(base, tuned, plan.rows, ckas, probe_res)
    settings: dict[str, int | float | bool | str | None] = {
        "batch_size": batch_size,
        "grid": grid,
        "probe_folds": probe_folds,
        "seed": seed,
        "similar_cka": similar_cka,
        "bn_parts": len(plan.models) > 2,
    }
    report = build_report(
        base,
        tuned,
        plan.source,
        plan.classes,
        plan.held,
        layers,
        probe_res,
        ckas,
        logits,
        labels,
        similar_cka,
        plan.notes,
        settings,
        input_size,
    )
    for row in report.layers:
        if row.name in token_ckas:
            c = token_ckas[row.name]
            row.cka_class_token, row.cka_class_token_low, row.cka_class_token_high = c.value, c.low, c.high
    report.seconds = {"setup": t1 - t0, "forward": t2 - t1, "cka_and_probes": t3 - t2}
    _cross_excitation(report, base, tuned, plan.names, cross_excitation)
    report.seconds["total"] = time.perf_counter() - t0
    return report if sweep is None else with_sweep(report, sweep, base)


def _cross_excitation(
    report: ComparisonReport, base: LoadedModel, tuned: LoadedModel, names: list[str], plugin: CrossExcitation | None
) -> None:
    cross_excitation = plugin
    if cross_excitation is not None:
        _add_cross_excitation(report, cross_excitation(base, tuned, names))
    else:
        report.warnings.append(
            msg(
                "Cross-excitation was not measured "
                "(pass cross_excitation=explorer.transfer.comparison.crossexcite.as_plugin())."
            )
        )


def _probes(
    gaps: dict[str, list[torch.Tensor]],
    labels: np.ndarray,
    folds: int,
    seed: int,
    progress: Progress | None,
    offset: int,
    total: int,
    stop: Callable[[], bool],
) -> dict[str, ProbeResult | None]:
    arrays = {n: torch.cat(v).numpy() for n, v in gaps.items()}

    def probe_progress(i: int, _total: int, info: Any = None) -> None:
        if progress:
            progress(offset + i, total, info)

    return probe_layers(arrays, labels, folds=folds, seed=seed, progress=probe_progress, should_stop=stop)


def _add_cross_excitation(report: ComparisonReport, cx: dict[str, dict[str, Any]]) -> None:
    for row in report.layers:
        row.cross_excitation = cx.get("values", {}).get(row.name)
    units, per_unit = cx.get("units", {}), cx.get("per_unit", {})
    report.renders = {
        name: {**pics, "units": units.get(name, []), "per_unit": per_unit.get(name, [])}
        for name, pics in cx.get("renders", {}).items()
    }
