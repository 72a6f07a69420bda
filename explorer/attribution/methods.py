"""The attribution methods, what each can run on, and what each costs before it runs.

Costs are counted in passes through the whole network, exactly as the implementation makes them (Captum's
internal batching included), so the app can say "37 forward passes (296 images), 18 backward" before the user
commits to a method. `tests/test_attribution.py` checks every formula against a hook that counts the calls.
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.attribution.sanitize import deeplift_problem, guided_backprop_problem
from explorer.errors import ExplorerError
from explorer.layers import LayerError, LayerInfo, ladder, resolve, trace


class AttributionError(ExplorerError):
    """A method, layer, target or option the attribution cannot use, phrased for the user."""


@dataclass(frozen=True)
class MethodInfo:
    """What the UI needs to list a method: its label, one line of explanation, how to colour its maps."""

    name: str
    label: str
    summary: str
    display: str  # default colour mode: "positive" (Grad-CAM's ReLU) or "signed"
    has_delta: bool = False  # reports a completeness error (sum of attributions vs output change)
    per_layer_passes: bool = True  # cost grows with the number of layers


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("gradcam", "Grad-CAM", "Activations weighted by their channel's mean gradient.", "positive",
                   per_layer_passes=False),
        MethodInfo("gradxact", "Gradient × Activation", "Each activation times its gradient, summed over channels.",
                   "signed", per_layer_passes=False),
        MethodInfo("ig", "Integrated Gradients", "Gradient × activation change, integrated from a baseline image.",
                   "signed", has_delta=True),
        MethodInfo("conductance", "Layer Conductance", "The flow of Integrated Gradients through the layer.",
                   "signed", has_delta=True),
        MethodInfo("activation", "Activation", "The layer's output itself, summed over channels (no target).",
                   "signed", per_layer_passes=False),
        MethodInfo("guided_gradcam", "Guided Grad-CAM", "Guided backprop at full resolution times the layer's "
                   "Grad-CAM.", "signed", per_layer_passes=False),
        MethodInfo("ablation", "Feature ablation", "Drop in the target score when a patch of the layer's output "
                   "is set to zero.", "signed"),
        MethodInfo("deeplift", "DeepLift", "Contribution relative to a baseline by DeepLift's rescale rule.",
                   "signed", has_delta=True),
    )
}  # fmt: skip


@dataclass(frozen=True)
class Options:
    """Settings of the costlier methods (ignored by the others)."""

    n_steps: int = 32  # ig, conductance: points on the path from the baseline
    internal_batch_size: int | None = 32  # ig, conductance: images per forward (None: all steps at once)
    baseline: Any = "black"  # ig, conductance, deeplift: "black", "zeros" (the mean image) or a tensor
    grid: int = 7  # ablation: patches per side of the layer's map
    perturbations_per_eval: int = 8  # ablation: patches ablated per forward

    def check(self) -> None:
        if self.n_steps < 2:
            raise AttributionError("Integrated Gradients needs at least 2 steps.")
        if self.internal_batch_size is not None and self.internal_batch_size < 1:
            raise AttributionError("The internal batch size must be positive.")
        if self.grid < 1 or self.perturbations_per_eval < 1:
            raise AttributionError("The ablation grid and perturbations per pass must be positive.")


def make_options(options: dict[str, Any]) -> Options:
    """Options from keyword arguments, checked; an unknown name is the user's to fix."""
    known = set(Options.__dataclass_fields__)
    unknown = sorted(set(options) - known)
    if unknown:
        raise AttributionError(f"Unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}.")
    opt = Options(**options)
    opt.check()
    return opt


@dataclass(frozen=True)
class MethodCost:
    """Passes through the network one `attribute` call will make, and whether it can run at all."""

    method: str
    layers: int
    batch: int
    forward_calls: int
    backward_calls: int
    images_forward: int  # images through the forward in total (a batch of 8 × 32 steps counts 256)
    available: bool = True
    reason: str = ""

    @property
    def relative(self) -> float:
        """The work in units of one plain forward of this batch."""
        return self.images_forward / max(1, self.batch)

    def describe(self) -> str:
        if not self.available:
            return f"{METHODS[self.method].label} is unavailable: {self.reason}"
        back = f" and {self.backward_calls} backward" if self.backward_calls else ", no backward"
        return (
            f"{METHODS[self.method].label} on {self.layers} layer{'s' if self.layers != 1 else ''}: "
            f"{self.forward_calls} forward pass{'es' if self.forward_calls != 1 else ''} "
            f"({self.images_forward} image{'s' if self.images_forward != 1 else ''}){back} "
            f"(≈ {self.relative:.0f}× one forward)."
        )


# --------------------------------------------------------------------------- layers

_LADDERS: weakref.WeakKeyDictionary[nn.Module, dict[str, list[LayerInfo]]] = weakref.WeakKeyDictionary()


def cached_ladder(model: Any, view: str = "blocks") -> list[LayerInfo]:
    """`explorer.layers.ladder` ('blocks', 'full', or 'traced': every module that runs), once per module object."""
    per = _LADDERS.setdefault(model.module, {})
    if view not in per:
        per[view] = _traced(model) if view == "traced" else ladder(model, view)
    return per[view]


def _traced(model: Any) -> list[LayerInfo]:
    """Every module that runs (containers too), in the order its output appears; counts are left at zero."""
    x = torch.zeros(1, 3, *model.input_size, device=model.device)
    rows = []
    for order, (name, mod, shape, calls) in enumerate(trace(model.module, x)):
        channels = shape[0] if len(shape) == 3 else (shape[-1] if shape else None)
        rows.append(LayerInfo(name, type(mod).__name__, order, shape, channels, 0, 0, 0, name.count("."), calls))
    return rows


def resolve_layers(model: Any, layers: str | Sequence[str] = "all") -> list[LayerInfo]:
    """'all': every block with a spatial map (h·w > 1), in execution order; 'blocks': every block; or names."""
    if isinstance(layers, str) and layers in ("all", "blocks"):
        rows = cached_ladder(model, "blocks")
        if layers == "blocks":
            return list(rows)
        return [r for r in rows if r.spatial is not None and r.spatial[0] * r.spatial[1] > 1]
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise AttributionError("No layers were chosen.")
    known = {r.name: r for r in cached_ladder(model, "blocks")}
    out = []
    for name in dict.fromkeys(names):
        if name not in known:
            resolve(model.module, name)  # raises LayerError for a name the model does not have
            known.update({r.name: r for r in cached_ladder(model, "traced") if r.name not in known})
            if name not in known:
                raise LayerError(f"Layer {name!r} did not run in the forward pass.")
        out.append(known[name])
    return sorted(out, key=lambda r: r.order)


def layer_problem(method: str, info: LayerInfo) -> str | None:
    """Why `method` cannot attribute to this layer, or None."""
    if not info.out_shape:
        return f"{info.name} does not output a single tensor."
    if method == "ablation" and info.spatial is None:
        return f"{info.name} has no spatial map to ablate patches of."
    return None


def method_problem(model: Any, method: str) -> str | None:
    """Why `method` cannot run on this network at all, or None."""
    if method not in METHODS:
        raise AttributionError(f"Unknown attribution method {method!r}; choose one of: {', '.join(METHODS)}.")
    if method == "guided_gradcam":
        return guided_backprop_problem(model.module)
    if method == "deeplift":
        calls = {r.name: r.calls for r in cached_ladder(model, "traced")}
        return deeplift_problem(model.module, calls)
    return None


def availability(model: Any) -> dict[str, str | None]:
    """Method name → None if it runs on this network, else the reason (for greying options out)."""
    return {m: method_problem(model, m) for m in METHODS}


# --------------------------------------------------------------------------- costs


def _chunks(n_points: int, step_count: int, include_endpoint: bool) -> list[int]:
    """Points evaluated per forward by Captum's `_batch_attribution` (replicates its loop)."""
    if include_endpoint:
        step_count = max(step_count, 2)
    sizes, done = [], 0
    while done < n_points:
        end = min(done + step_count, n_points)
        sizes.append(end - done)
        done = end - 1 if include_endpoint and end < n_points else end
    return sizes


def captum_batch_size(options: Options, batch: int, method: str) -> int | None:
    """The internal batch size handed to Captum (never below what Captum would silently raise it to)."""
    if options.internal_batch_size is None:
        return None
    return max(options.internal_batch_size, batch * (2 if method == "conductance" else 1))


def ablation_groups(info: LayerInfo, grid: int) -> tuple[int, int]:
    """Rows and columns of the ablation patch grid on this layer's map."""
    h, w = info.spatial or (1, 1)
    return min(grid, h), min(grid, w)


def _per_layer(method: str, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
    """(forward calls, backward calls, images forward) for one layer of a per-layer method."""
    ibs = captum_batch_size(opt, n, method)
    if method == "ig":
        chunks = [opt.n_steps] if ibs is None else _chunks(opt.n_steps, max(1, ibs // n), False)
        return 2 + len(chunks) + 2, len(chunks), n * (4 + sum(chunks))
    if method == "conductance":
        points = opt.n_steps + 1
        chunks = [points] if ibs is None else _chunks(points, max(1, ibs // n), True)
        return len(chunks) + 2, len(chunks), n * (2 + sum(chunks))
    if method == "ablation":
        gh, gw = ablation_groups(info, opt.grid)
        groups = gh * gw
        return 2 + math.ceil(groups / opt.perturbations_per_eval), 0, n * (2 + groups)
    if method == "deeplift":
        return 3, 1, 4 * n
    raise AssertionError(method)


def method_cost(
    model: Any,
    inputs: Any,
    layers: str | Sequence[str] = "all",
    method: str = "gradcam",
    target: Any = None,
    **options: Any,
) -> MethodCost:
    """What `attribute(model, inputs, layers, method, target, **options)` will cost, without running it.

    `inputs` may be the batch itself or just its size (an int).
    """
    opt = make_options(options)
    n = inputs if isinstance(inputs, int) else _batch_size(inputs)
    infos = resolve_layers(model, layers)
    if not infos:
        return MethodCost(method, 0, n, 0, 0, 0, available=False, reason="no block with a spatial map; name layers")
    problem = method_problem(model, method)
    usable = [i for i in infos if layer_problem(method, i) is None]
    if problem is None and not usable:
        problem = layer_problem(method, infos[0]) or "no layer can be attributed"
    if problem is not None:
        return MethodCost(method, len(usable), n, 0, 0, 0, available=False, reason=problem)
    if method == "activation":
        return MethodCost(method, len(usable), n, 1, 0, n)
    if method in ("gradcam", "gradxact"):
        return MethodCost(method, len(usable), n, 1, 1, n)
    if method == "guided_gradcam":
        return MethodCost(method, len(usable), n, 2, 2, 2 * n)
    fwd = bwd = imgs = 0
    for info in usable:
        f, b, i = _per_layer(method, info, n, opt)
        fwd, bwd, imgs = fwd + f, bwd + b, imgs + i
    if target is None:  # one forward to find the predicted class first
        fwd, imgs = fwd + 1, imgs + n
    return MethodCost(method, len(usable), n, fwd, bwd, imgs)


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    shape = getattr(inputs, "shape", None)
    if shape is not None:
        return 1 if len(shape) == 3 else int(shape[0])
    return 1  # one PIL image
