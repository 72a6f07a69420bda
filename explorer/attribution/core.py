"""`attribute(model, inputs, layers, method, target)`: one call shape for every layer attribution method.

Grad-CAM, Gradient × Activation and Activation come from ONE forward (and one backward) with hooks on every
chosen layer, through `explorer.layers.capture`; Guided Grad-CAM adds one guided backprop pass, shared by all
layers. The per-layer methods (Integrated Gradients, Conductance, ablation, DeepLift) run Captum's layer classes
on a shadow of the model (see `sanitize.py`), one layer at a time. The gradient never lands in `.grad` of the
shared parameters: the backward is `torch.autograd.grad` towards the input only.
"""

from __future__ import annotations

import difflib
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from PIL import Image
from torch.nn import functional as F

from explorer.attribution.methods import (
    METHODS,
    AttributionError,
    Options,
    ablation_groups,
    captum_batch_size,
    layer_problem,
    make_options,
    method_cost,
    method_problem,
    resolve_layers,
)
from explorer.attribution.result import AttributionResult
from explorer.attribution.sanitize import shadow
from explorer.errors import ExplorerError
from explorer.layers import LayerInfo, capture, resolve
from explorer.runtime import Progress

ONE_PASS = ("gradcam", "gradxact", "activation", "guided_gradcam")  # all layers from one forward (and backward)

warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU", module=r"captum\.")
warnings.filterwarnings("ignore", message="Input Tensor .* did not already require gradients", module=r"captum\.")

# --------------------------------------------------------------------------- inputs and targets


def prepare(model: Any, inputs: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (PIL image(s), image path(s), or a normalised (N,3,H,W) / (3,H,W) tensor) → (batch on the model's
    device, the same images as (N,H,W,3) floats in [0, 1] on the CPU for overlays)."""
    if isinstance(inputs, torch.Tensor):
        x = inputs.detach()
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if x.dim() != 4 or x.shape[1] != 3:
            raise AttributionError(f"Expected a batch of RGB images (N,3,H,W); got a tensor of shape {tuple(x.shape)}.")
        x = x.to(model.device, torch.float32)
        mean = torch.tensor(model.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(model.std, device=x.device).view(1, 3, 1, 1)
        images01 = (x * std + mean).clamp(0, 1)
    else:
        items = inputs if isinstance(inputs, (list, tuple)) else [inputs]
        if not items:
            raise AttributionError("No image was given.")
        pil = [_open(im) for im in items]
        images01 = torch.stack([model.to_tensor01(im) for im in pil]).to(model.device)
        x = model.normalize(images01)
    return x, images01.permute(0, 2, 3, 1).float().cpu()


def _open(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    from explorer.data import load_image

    try:
        return load_image(item)
    except ExplorerError:
        raise
    except ValueError as exc:  # DataError: already one sentence for the user
        raise AttributionError(str(exc)) from None


def resolve_target(model: Any, target: Any, n: int, logits: torch.Tensor | None = None) -> torch.Tensor:
    """Target class per image: None → the predicted class; an index, a class name, or one per image."""
    classes = list(model.class_names)
    k = logits.shape[1] if logits is not None else len(classes)
    if target is None:
        if logits is None:
            raise AttributionError("The predicted class is needed but no forward pass was made.")
        return logits.detach().argmax(1)
    items = target.tolist() if isinstance(target, torch.Tensor) else target
    items = list(items) if isinstance(items, (list, tuple)) else [items] * n
    if len(items) != n:
        raise AttributionError(f"{len(items)} targets were given for {n} images.")
    out = []
    for t in items:
        if isinstance(t, str) and not t.strip().lstrip("-").isdigit():
            lower = [c.lower() for c in classes]
            if t.strip().lower() not in lower:
                close = difflib.get_close_matches(t, classes, n=3)
                hint = f" Did you mean: {', '.join(close)}?" if close else ""
                raise AttributionError(f"The model has no class called {t!r}.{hint}")
            t = lower.index(t.strip().lower())
        t = int(t)
        if not 0 <= t < k:
            raise AttributionError(f"Target class {t} is out of range: the model has {k} classes (0–{k - 1}).")
        out.append(t)
    return torch.tensor(out, dtype=torch.long)


def baseline_tensor(model: Any, x: torch.Tensor, baseline: Any) -> torch.Tensor:
    """The Integrated-Gradients baseline for batch `x`: a tensor as given, a black image, or zeros."""
    if isinstance(baseline, torch.Tensor):
        b = baseline.to(x.device, x.dtype)
        return b.expand_as(x).clone() if b.shape != x.shape else b
    if baseline == "black":
        return model.normalize(torch.zeros_like(x))
    if baseline in ("zeros", "mean"):
        return torch.zeros_like(x)
    raise AttributionError(f"Unknown baseline {baseline!r}: use 'black', 'zeros' or a tensor.")


# --------------------------------------------------------------------------- one pass for all layers


def one_pass(
    model: Any, x: torch.Tensor, layers: Sequence[str], target: Any = None, *, grads: bool = True
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Activations (and gradients of the target logit) of every layer from one forward and one backward.

    Returns (activations, gradients, logits, target per image). Each layer's first call is recorded.
    """
    xg = x.detach().requires_grad_(grads)
    if xg.is_cuda:
        xg = xg.contiguous(memory_format=torch.channels_last)
    with torch.set_grad_enabled(grads), capture(model.module, list(layers), grads=grads) as cap:
        logits = model.module(xg)
    tgt = resolve_target(model, target, x.shape[0], logits).to(logits.device)
    if grads:
        score = logits.gather(1, tgt[:, None]).sum()
        torch.autograd.grad(score, xg)  # fills cap.gradients through tensor hooks; nothing lands in .grad
    acts = cap.activations
    grads_out = {n: cap.gradients.get(n, torch.zeros_like(acts[n])) for n in acts} if grads else {}
    return acts, grads_out, logits.detach(), tgt


def _as_map(t: torch.Tensor) -> torch.Tensor:
    """A per-image attribution reduced to (N, h, w): (N,h,w) stays, (N,L) → (N,1,L), (N,) → (N,1,1)."""
    if t.dim() == 1:
        return t.view(-1, 1, 1)
    if t.dim() == 2:
        return t.unsqueeze(1)
    return t.reshape(t.shape[0], t.shape[1], -1) if t.dim() > 3 else t


def gradcam_map(act: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM without the ReLU, exactly as Captum's LayerGradCam: Σ_c mean_hw(∂y/∂A_c) · A_c."""
    if act.dim() > 2:
        w = grad.mean(dim=tuple(range(2, act.dim())), keepdim=True)
        return _as_map((w * act).sum(1))
    return _as_map((grad * act).sum(1))


def channel_scores(attr: torch.Tensor) -> torch.Tensor:
    """(N, C) per-channel attribution: the attribution summed over space."""
    return attr.sum(dim=tuple(range(2, attr.dim()))) if attr.dim() > 2 else attr


# --------------------------------------------------------------------------- Captum, layer by layer


def _captum_layer(
    method: str, twin: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor, base: torch.Tensor,
    opt: Options,
) -> tuple[torch.Tensor, torch.Tensor | None]:  # fmt: skip
    from captum.attr import LayerConductance, LayerDeepLift, LayerFeatureAblation, LayerIntegratedGradients

    layer = resolve(twin, info.name)
    ibs = captum_batch_size(opt, x.shape[0], method)
    xi = x.detach().clone().requires_grad_(True)
    if method == "ig":
        attr, delta = LayerIntegratedGradients(twin, layer).attribute(
            xi, baselines=base, target=tgt, n_steps=opt.n_steps, internal_batch_size=ibs, return_convergence_delta=True
        )
    elif method == "conductance":
        attr, delta = LayerConductance(twin, layer).attribute(
            xi, baselines=base, target=tgt, n_steps=opt.n_steps, internal_batch_size=ibs, return_convergence_delta=True
        )
    elif method == "deeplift":
        attr, delta = LayerDeepLift(twin, layer).attribute(
            xi, baselines=base, target=tgt, return_convergence_delta=True
        )
    elif method == "ablation":
        mask = ablation_mask(info, opt.grid).to(x.device)
        # Captum applies a per-image target unexpanded to its batch of perturbations: select it ourselves.
        attr = LayerFeatureAblation(_target_score(twin, tgt), layer).attribute(
            xi, layer_mask=mask, perturbations_per_eval=opt.perturbations_per_eval
        )
        delta = None
    else:
        raise AssertionError(method)
    return attr.detach(), (delta.detach() if delta is not None else None)


def _target_score(module: torch.nn.Module, tgt: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """A forward returning each image's target logit, for batches that repeat the images (Captum's expansion)."""

    def score(inp: torch.Tensor) -> torch.Tensor:
        out = module(inp)
        picks = tgt.to(out.device).repeat(out.shape[0] // tgt.shape[0])
        return out.gather(1, picks[:, None])[:, 0]

    return score


def ablation_mask(info: LayerInfo, grid: int) -> torch.Tensor:
    """(1, 1, h, w) feature groups: the layer's map cut into at most `grid` × `grid` patches."""
    h, w = info.spatial or (1, 1)
    gh, gw = ablation_groups(info, grid)
    rows = torch.arange(h) * gh // h
    cols = torch.arange(w) * gw // w
    return (rows[:, None] * gw + cols[None, :]).view(1, 1, h, w)


# --------------------------------------------------------------------------- the entry point


def attribute(
    model: Any,
    inputs: Any,
    layers: str | Sequence[str] = "all",
    method: str = "gradcam",
    target: Any = None,
    *,
    keep_raw: bool = False,
    progress: Progress | None = None,
    **options: Any,
) -> AttributionResult:
    """Attribute the target class (default: the prediction) to every chosen layer with one method.

    `layers`: "all" (blocks with a spatial map), "blocks", or layer names. Options: n_steps,
    internal_batch_size, baseline (ig, conductance, deeplift), grid, perturbations_per_eval (ablation).
    Maps are raw (N, h, w) magnitudes; `keep_raw` also keeps each method's full output tensor.
    """
    opt = make_options(options)
    started = time.perf_counter()
    problem = method_problem(model, method)
    if problem:
        raise AttributionError(problem)
    x, images01 = prepare(model, inputs)
    infos = resolve_layers(model, layers)
    skipped = {i.name: p for i in infos if (p := layer_problem(method, i))}
    infos = [i for i in infos if i.name not in skipped]
    if not infos:
        raise AttributionError(
            next(iter(skipped.values())) if skipped else "This model has no block with a spatial map: name the layers."
        )
    cost = method_cost(model, x, [i.name for i in infos], method, target, **options)
    names = [i.name for i in infos]
    res = AttributionResult(method=method, layers=names, images=images01, cost=cost, skipped=skipped)
    res.fingerprint = getattr(model, "fingerprint", "")
    res.class_names = list(model.class_names)
    reused = [i.name for i in infos if i.calls > 1]
    if reused:
        which = "first" if method in ONE_PASS else "last (as Captum does)"
        res.notes.append(f"{', '.join(reused)} run several times per forward; their {which} call is used.")

    if method in ONE_PASS:
        acts, grads, logits, tgt = one_pass(model, x, names, target, grads=method != "activation")
        for name in names:
            a = acts[name]
            if method == "activation":
                res.maps[name] = _as_map(a.sum(1)).float().cpu()
                res.channels[name] = channel_scores(a).float().cpu()
                continue
            g = grads[name]
            prod = g * a
            res.channels[name] = channel_scores(prod).float().cpu()
            res.maps[name] = (gradcam_map(a, g) if method != "gradxact" else _as_map(prod.sum(1))).float().cpu()
            if keep_raw and method == "gradxact":
                res.raw[name] = prod.float().cpu()
        if method == "guided_gradcam":
            _guided(model, x, tgt, res, keep_raw)
        if progress:
            progress(1, 1, None)
    else:
        logits = None
        if target is None:
            with torch.no_grad():
                logits = model.module(x).detach()
        tgt = resolve_target(model, target, x.shape[0], logits).to(x.device)
        base = baseline_tensor(model, x, opt.baseline)
        twin = shadow(model.module, no_inplace=method == "deeplift")
        for done, info in enumerate(infos, 1):
            attr, delta = _captum_layer(method, twin, info, x, tgt, base, opt)
            if method == "ablation":
                res.maps[info.name] = _as_map(attr[:, 0]).float().cpu()  # every channel holds its patch's value
            else:
                res.maps[info.name] = _as_map(attr.sum(1)).float().cpu()
                res.channels[info.name] = channel_scores(attr).float().cpu()
            if delta is not None:
                res.delta[info.name] = delta.float().cpu()
            if keep_raw:
                res.raw[info.name] = attr.float().cpu()
            if progress:
                progress(done, len(infos), (info.name, res.maps[info.name]))
    res.target = [int(t) for t in tgt.tolist()]
    res.logits = logits.float().cpu() if logits is not None else None
    res.seconds = time.perf_counter() - started
    return res


def _guided(model: Any, x: torch.Tensor, tgt: torch.Tensor, res: AttributionResult, keep_raw: bool) -> None:
    """Captum's GuidedGradCam for every layer at the price of one guided backprop pass in total."""
    from captum.attr import GuidedBackprop

    twin = shadow(model.module, no_inplace=True, relu6_as_relu=True)
    gb = GuidedBackprop(twin).attribute(x.detach().clone().requires_grad_(True), target=tgt).detach()
    size = tuple(x.shape[2:])
    for name in res.layers:
        cam = res.maps[name].to(gb.device).clamp_min(0).unsqueeze(1)  # Captum: relu_attributions=True
        full = gb * F.interpolate(cam, size=size, mode="nearest")
        res.maps[name] = full.sum(1).float().cpu()
        if keep_raw:
            res.raw[name] = full.float().cpu()


def channel_attribution(
    model: Any, inputs: Any, layers: str | Sequence[str] = "all", target: Any = None
) -> dict[str, torch.Tensor]:
    """Layer name → (N, C) gradient × activation summed over space: which channels drive the target."""
    return attribute(model, inputs, layers, "gradxact", target).channels


__all__ = ["METHODS", "attribute", "channel_attribution", "one_pass", "prepare", "resolve_target"]
