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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from explorer.attribution.layers import resolve_layers
from explorer.attribution.methods import (
    METHODS,
    AttributionError,
    LayerOutput,
    Method,
    get_method,
    make_options,
    method_cost,
)
from explorer.attribution.result import AttributionResult
from explorer.attribution.sanitize import Logits, shadow, tap_grids
from explorer.data import load_image
from explorer.errors import msg
from explorer.layers import LayerInfo, capture, resolve
from explorer.models import LoadedModel, logits_of
from explorer.runtime import Progress

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


# What the public `attribute` takes: an image as a path, bytes or a PIL image (or several, or a normalised tensor);
# a target class as an index or a name, one for all images or one per image (or a tensor of indices); options as
# numbers, None or a baseline ("black", "zeros" or a tensor).
ImageInput = str | Path | bytes | Image.Image
Target = int | str | Sequence[int | str] | torch.Tensor | None
OptionValue = int | float | str | torch.Tensor | None


def _open(item: Any) -> Image.Image:
    if isinstance(item, Image.Image):
        return item
    return load_image(item)  # a DataError is already one sentence for the user


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
                raise AttributionError(
                    f"The model has no class called {t!r}. Did you mean: {', '.join(close)}?"
                    if close
                    else f"The model has no class called {t!r}."
                )
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
        logits = logits_of(model.module(xg))
    tgt = resolve_target(model, target, x.shape[0], logits).to(logits.device)
    if grads:
        score = logits.gather(1, tgt[:, None]).sum()
        torch.autograd.grad(score, xg)  # fills cap.gradients through tensor hooks; nothing lands in .grad
    acts = cap.activations
    grads_out = {n: cap.gradients.get(n, torch.zeros_like(acts[n])) for n in acts} if grads else {}
    return acts, grads_out, logits.detach(), tgt


# --------------------------------------------------------------------------- the entry point


def attribute(
    model: LoadedModel,
    inputs: ImageInput | Sequence[ImageInput] | torch.Tensor,
    layers: str | Sequence[str] = "all",
    method: str = "gradcam",
    target: Target = None,
    *,
    keep_raw: bool = False,
    progress: Progress | None = None,
    **options: OptionValue,
) -> AttributionResult:
    """Attribute the target class (default: the prediction) to every chosen layer with one method.

    `layers`: "all" (blocks with a spatial map), "blocks", or layer names. Options: n_steps,
    internal_batch_size, baseline (ig, conductance, deeplift), grid, perturbations_per_eval (ablation).
    Maps are raw (N, h, w) magnitudes; `keep_raw` also keeps each method's full output tensor.
    """
    opt = make_options(options)
    started = time.perf_counter()
    m = get_method(method)
    problem = m.problem(model)
    if problem:
        raise AttributionError(problem)
    x, images01 = prepare(model, inputs)
    infos = resolve_layers(model, layers)
    skipped = {i.name: p for i in infos if (p := m.layer_problem(i))}
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
        res.notes.append(
            msg(f"{', '.join(reused)} run several times per forward; their first call is used.")
            if m.one_pass
            else msg(f"{', '.join(reused)} run several times per forward; their last (as Captum does) call is used.")
        )
    if m.one_pass:
        outputs, logits, tgt = _one_pass(m, model, x, infos, target, keep_raw)
    else:
        outputs, logits, tgt = _per_layer(m, model, x, infos, target, opt, keep_raw, progress)
    for name, out in outputs.items():
        res.maps[name] = out.map
        if out.channels is not None:
            res.channels[name] = out.channels
        if out.delta is not None:
            res.delta[name] = out.delta
        if keep_raw and out.raw is not None:
            res.raw[name] = out.raw
        if out.prefix is not None:
            res.prefix[name] = out.prefix
    if m.one_pass and progress:
        progress(1, 1, None)
    if res.prefix:
        shares = [f"{n} {float(p[0]):+.3g}" for n, p in res.prefix.items()]
        res.notes.append(
            msg(
                "The maps show the patch tokens; the class token's own attribution (first image) is apart: "
                f"{', '.join(shares)}."
            )
        )
    zero = [n for n, mp in res.maps.items() if float(mp.abs().max()) == 0.0] if m.needs_grad else []
    if zero and len(zero) == len(res.maps):
        res.notes.append(zero_maps_note(model))
    else:
        unread = [i.name for i in infos if i.name in zero and i.grid_layout.tokens and i.grid_layout.prefix]
        if unread:
            res.notes.append(
                msg(
                    f"{', '.join(unread)}: zero, because after these blocks the classifier reads only the class "
                    "token, so the patch tokens get no gradient."
                )
                if len(unread) > 1
                else msg(
                    f"{unread[0]}: zero, because after this block the classifier reads only the class token, so the "
                    "patch tokens get no gradient."
                )
            )
    res.target = [int(t) for t in tgt.tolist()]
    res.logits = logits.float().cpu() if logits is not None else None
    res.seconds = time.perf_counter() - started
    return res


def _one_pass(
    m: Method, model: Any, x: torch.Tensor, infos: list[LayerInfo], target: Any, keep_raw: bool
) -> tuple[dict[str, LayerOutput], torch.Tensor | None, torch.Tensor]:
    """Every layer from one forward (and backward) with hooks, read as grids by its layout, reduced by the method."""
    acts, grads, logits, tgt = one_pass(model, x, [i.name for i in infos], target, grads=m.needs_grad)
    outputs = {}
    for info in infos:
        lay = info.grid_layout
        grad = grads.get(info.name)
        outputs[info.name] = m.reduce(
            lay.to_grid(acts[info.name]), None if grad is None else lay.to_grid(grad), keep_raw
        )
    m.finish(model, x, tgt, outputs)
    return outputs, logits, tgt


def _per_layer(
    m: Method, model: Any, x: torch.Tensor, infos: list[LayerInfo], target: Any, opt: Any, keep_raw: bool,
    progress: Progress | None,
) -> tuple[dict[str, LayerOutput], torch.Tensor | None, torch.Tensor]:  # fmt: skip
    """A Captum layer method on a sanitised shadow of the model, one layer at a time."""
    logits = None
    if target is None:
        with torch.no_grad():
            logits = logits_of(model.module(x)).detach()
    tgt = resolve_target(model, target, x.shape[0], logits).to(x.device)
    base = baseline_tensor(model, x, opt.baseline)
    twin = shadow(model.module, **m.shadow_options)
    # Ablation's patch mask needs a (N, C, h, w) grid: tokens and NHWC maps get a grid tap. The other methods
    # attribute the layer's own output (every token, so completeness holds), read through its layout afterwards.
    taps = tap_grids(twin, {i.name: i.grid_layout for i in infos}) if m.grid_tap else {i.name: i.name for i in infos}
    net = Logits(twin)
    outputs: dict[str, LayerOutput] = {}
    for done, info in enumerate(infos, 1):
        layer = resolve(twin, taps[info.name])
        outputs[info.name] = m.attribute_layer(net, layer, info, x, tgt, base, opt, keep_raw)
        if progress:
            progress(done, len(infos), (info.name, outputs[info.name].map))
    return outputs, logits, tgt


def zero_maps_note(model: Any) -> str:
    """Why every map can be exactly zero: usually a classifier whose weights are all zero (a freshly built ViT)."""
    linears = [(n, m) for n, m in model.module.named_modules() if isinstance(m, torch.nn.Linear)]
    if linears and not linears[-1][1].weight.detach().any():
        return msg(
            f"Every map is zero because the classifier {linears[-1][0]} has all-zero weights, so the class score does "
            "not depend on the image (torchvision builds an untrained ViT that way); load trained weights."
        )
    return msg("Every map is zero: the target's score does not depend on these layers for this image.")


def channel_attribution(
    model: Any, inputs: Any, layers: str | Sequence[str] = "all", target: Any = None
) -> dict[str, torch.Tensor]:
    """Layer name → (N, C) gradient × activation summed over space: which channels drive the target."""
    return attribute(model, inputs, layers, "gradxact", target).channels


__all__ = ["METHODS", "attribute", "channel_attribution", "one_pass", "prepare", "resolve_target"]
