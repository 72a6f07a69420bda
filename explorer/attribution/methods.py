"""The attribution methods: one object per method, carrying its label, what it can run on, what it costs before it
runs, and how it computes. Adding a method is one class here and one line in `METHODS`.

Two kinds: one-pass methods (Grad-CAM, Gradient × Activation, Activation, Guided Grad-CAM) reduce the activations
and gradients that ONE forward and backward recorded at every layer; per-layer methods (Integrated Gradients,
Conductance, DeepLift, feature ablation) run a Captum layer class on a sanitised shadow of the model, layer by layer.
Costs are counted in passes through the whole network, exactly as the implementation makes them (Captum's
internal batching included), so the app can say "37 forward passes (296 images), 18 backward" before the user
commits to a method. `tests/attribution/test_attribution.py` checks every formula against a hook that counts the calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch.nn import functional as F

from explorer.attribution.layers import cached_ladder, resolve_layers
from explorer.attribution.maps import (
    ablation_groups,
    ablation_mask,
    as_map,
    channel_scores,
    gradcam_map,
    target_score,
)
from explorer.attribution.sanitize import Logits, deeplift_problem, guided_backprop_problem, shadow
from explorer.errors import ExplorerError, msg
from explorer.layers import LayerInfo


class AttributionError(ExplorerError):
    """A method, layer, target or option the attribution cannot use, phrased for the user."""


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
            return msg(f"{METHODS[self.method].label} is unavailable: {self.reason}")
        back = f" and {self.backward_calls} backward" if self.backward_calls else ", no backward"
        return (
            f"{METHODS[self.method].label} on {self.layers} layer{'s' if self.layers != 1 else ''}: "
            f"{self.forward_calls} forward pass{'es' if self.forward_calls != 1 else ''} "
            f"({self.images_forward} image{'s' if self.images_forward != 1 else ''}){back} "
            f"(≈ {self.relative:.0f}× one forward)."
        )


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


def captum_batch_size(options: Options, batch: int, per_image: int = 1) -> int | None:
    """The internal batch size handed to Captum: never below `per_image` × `batch`, what Captum would silently raise
    it to (Conductance evaluates two points per image at once)."""
    if options.internal_batch_size is None:
        return None
    return max(options.internal_batch_size, batch * per_image)


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
        reason = msg("no block with a spatial map; name layers")
        return MethodCost(method, 0, n, 0, 0, 0, available=False, reason=reason)
    m = get_method(method)
    problem = m.problem(model)
    usable = [i for i in infos if m.layer_problem(i) is None]
    if problem is None and not usable:
        problem = m.layer_problem(infos[0]) or msg("no layer can be attributed")
    if problem is not None:
        return MethodCost(method, len(usable), n, 0, 0, 0, available=False, reason=problem)
    fwd, bwd, imgs = m.cost(usable, n, opt, target)
    return MethodCost(method, len(usable), n, fwd, bwd, imgs)


def _batch_size(inputs: Any) -> int:
    if isinstance(inputs, (list, tuple)):
        return len(inputs)
    shape = getattr(inputs, "shape", None)
    if shape is not None:
        return 1 if len(shape) == 3 else int(shape[0])
    return 1  # one PIL image


# --------------------------------------------------------------------------- the methods


@dataclass(frozen=True)
class LayerOutput:
    """What a method produced for one layer: (N, h, w) map, (N, C) channel scores, completeness error, full tensor,
    and (token layers) the attribution carried by the class and register tokens, which the map leaves out."""

    map: torch.Tensor
    channels: torch.Tensor | None = None
    delta: torch.Tensor | None = None
    raw: torch.Tensor | None = None
    prefix: torch.Tensor | None = None  # (N,)


class Method:
    """One attribution method: its metadata, where it applies, what it costs, and how it computes."""

    name: ClassVar[str]
    label: ClassVar[str]
    summary: ClassVar[str]  # one line of explanation for the UI
    display: ClassVar[str] = "signed"  # default colour mode: "positive" (Grad-CAM's ReLU) or "signed"
    one_pass: ClassVar[bool] = False  # every layer from one forward (and backward) with hooks
    needs_grad: ClassVar[bool] = True  # one-pass methods: the shared pass also runs a backward
    per_layer_passes: ClassVar[bool] = True  # cost grows with the number of layers
    scores_are_grad_x_act: ClassVar[bool] = False  # its channel scores are gradient × activation summed over space

    def problem(self, model: Any) -> str | None:
        """Why this method cannot run on this network at all, or None."""
        return None

    def layer_problem(self, info: LayerInfo) -> str | None:
        """Why this method cannot attribute to this layer, or None."""
        if not info.out_shape:
            return msg(f"{info.name} does not output a single tensor.")
        if info.grid_layout.kind == "none":
            return info.grid_layout.problem(info.name)
        return None

    def cost(self, infos: Sequence[LayerInfo], n: int, opt: Options, target: Any) -> tuple[int, int, int]:
        """(forward calls, backward calls, images forward) of one call on `n` images."""
        fwd = bwd = imgs = 0
        for info in infos:
            f, b, i = self.layer_cost(info, n, opt)
            fwd, bwd, imgs = fwd + f, bwd + b, imgs + i
        if target is None:  # one forward to find the predicted class first
            fwd, imgs = fwd + 1, imgs + n
        return fwd, bwd, imgs

    def layer_cost(self, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
        raise NotImplementedError

    # one-pass methods
    def reduce(self, act: torch.Tensor, grad: torch.Tensor | None, keep_raw: bool) -> LayerOutput:
        """This layer's attribution from the activation and target gradient the shared pass recorded, both as
        (N, C, h, w) grids read through the layer's layout (tokens → patch grid)."""
        raise NotImplementedError

    def finish(self, model: Any, x: torch.Tensor, tgt: torch.Tensor, maps: dict[str, LayerOutput]) -> None:
        """Work shared by all layers after the pass (Guided Grad-CAM's guided backprop); nothing by default."""

    # per-layer methods
    shadow_options: ClassVar[dict[str, bool]] = {}
    grid_tap: ClassVar[bool] = False  # Captum must see the layer as a (N, C, h, w) grid (ablation's patch mask)

    def attribute_layer(
        self, net: torch.nn.Module, layer: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor,
        base: torch.Tensor, opt: Options, keep_raw: bool,
    ) -> LayerOutput:  # fmt: skip
        """This layer's attribution by a Captum layer method: `net` returns the class scores of a sanitised shadow
        of the model, and `layer` is the shadow's module for it (its (N, C, h, w) grid tap when `grid_tap`, else the
        layer itself, whose attribution is read through `info`'s layout)."""
        raise NotImplementedError


class OnePassMethod(Method):
    one_pass = True
    per_layer_passes = False

    def cost(self, infos: Sequence[LayerInfo], n: int, opt: Options, target: Any) -> tuple[int, int, int]:
        return 1, int(self.needs_grad), n


class GradCAM(OnePassMethod):
    name, label, display = "gradcam", "Grad-CAM", "positive"
    summary = "Activations weighted by their channel's mean gradient."
    scores_are_grad_x_act = True

    def reduce(self, act: torch.Tensor, grad: torch.Tensor | None, keep_raw: bool) -> LayerOutput:
        assert grad is not None
        return LayerOutput(gradcam_map(act, grad).float().cpu(), channel_scores(grad * act).float().cpu())


class GradXAct(OnePassMethod):
    name, label = "gradxact", "Gradient × Activation"
    summary = "Each activation times its gradient, summed over channels."
    scores_are_grad_x_act = True

    def reduce(self, act: torch.Tensor, grad: torch.Tensor | None, keep_raw: bool) -> LayerOutput:
        assert grad is not None
        prod = grad * act
        raw = prod.float().cpu() if keep_raw else None
        return LayerOutput(as_map(prod.sum(1)).float().cpu(), channel_scores(prod).float().cpu(), raw=raw)


class Activation(OnePassMethod):
    name, label = "activation", "Activation"
    summary = "The layer's output itself, summed over channels (no target)."
    needs_grad = False

    def reduce(self, act: torch.Tensor, grad: torch.Tensor | None, keep_raw: bool) -> LayerOutput:
        return LayerOutput(as_map(act.sum(1)).float().cpu(), channel_scores(act).float().cpu())


class GuidedGradCAM(GradCAM):
    name, label, display = "guided_gradcam", "Guided Grad-CAM", "signed"
    summary = "Guided backprop at full resolution times the layer's Grad-CAM."

    def problem(self, model: Any) -> str | None:
        return guided_backprop_problem(model.module)

    def cost(self, infos: Sequence[LayerInfo], n: int, opt: Options, target: Any) -> tuple[int, int, int]:
        return 2, 2, 2 * n

    def finish(self, model: Any, x: torch.Tensor, tgt: torch.Tensor, maps: dict[str, LayerOutput]) -> None:
        """Captum's GuidedGradCam for every layer at the price of one guided backprop pass in total."""
        # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
        from captum.attr import GuidedBackprop

        twin = Logits(shadow(model.module, no_inplace=True, relu6_as_relu=True))
        gb = GuidedBackprop(twin).attribute(x.detach().clone().requires_grad_(True), target=tgt).detach()
        size = tuple(x.shape[2:])
        for name, out in list(maps.items()):
            cam = out.map.to(gb.device).clamp_min(0).unsqueeze(1)  # Captum: relu_attributions=True
            full = gb * F.interpolate(cam, size=size, mode="nearest")
            maps[name] = LayerOutput(full.sum(1).float().cpu(), out.channels, raw=full.float().cpu())


class IntegratedGradients(Method):
    name, label = "ig", "Integrated Gradients"
    per_image: ClassVar[int] = 1
    summary = "Gradient × activation change, integrated from a baseline image."

    def layer_cost(self, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
        ibs = captum_batch_size(opt, n, self.per_image)
        chunks = [opt.n_steps] if ibs is None else _chunks(opt.n_steps, max(1, ibs // n), False)
        return 2 + len(chunks) + 2, len(chunks), n * (4 + sum(chunks))

    def attribute_layer(
        self, net: torch.nn.Module, layer: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor,
        base: torch.Tensor, opt: Options, keep_raw: bool,
    ) -> LayerOutput:  # fmt: skip
        # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
        from captum.attr import LayerIntegratedGradients

        attr, delta = LayerIntegratedGradients(net, layer).attribute(
            _leaf(x), baselines=base, target=tgt, n_steps=opt.n_steps,
            internal_batch_size=captum_batch_size(opt, x.shape[0], self.per_image), return_convergence_delta=True,
        )  # fmt: skip
        return _summed(attr, delta, keep_raw, info)


class Conductance(Method):
    name, label = "conductance", "Layer Conductance"
    per_image: ClassVar[int] = 2
    summary = "The flow of Integrated Gradients through the layer."

    def layer_cost(self, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
        ibs = captum_batch_size(opt, n, self.per_image)
        points = opt.n_steps + 1
        chunks = [points] if ibs is None else _chunks(points, max(1, ibs // n), True)
        return len(chunks) + 2, len(chunks), n * (2 + sum(chunks))

    def attribute_layer(
        self, net: torch.nn.Module, layer: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor,
        base: torch.Tensor, opt: Options, keep_raw: bool,
    ) -> LayerOutput:  # fmt: skip
        # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
        from captum.attr import LayerConductance

        attr, delta = LayerConductance(net, layer).attribute(
            _leaf(x), baselines=base, target=tgt, n_steps=opt.n_steps,
            internal_batch_size=captum_batch_size(opt, x.shape[0], self.per_image), return_convergence_delta=True,
        )  # fmt: skip
        return _summed(attr, delta, keep_raw, info)


class DeepLift(Method):
    name, label = "deeplift", "DeepLift"
    summary = "Contribution relative to a baseline by DeepLift's rescale rule."
    shadow_options = {"no_inplace": True}

    def problem(self, model: Any) -> str | None:
        calls = {r.name: r.calls for r in cached_ladder(model, "traced")}
        return deeplift_problem(model.module, calls)

    def layer_cost(self, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
        return 3, 1, 4 * n

    def attribute_layer(
        self, net: torch.nn.Module, layer: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor,
        base: torch.Tensor, opt: Options, keep_raw: bool,
    ) -> LayerOutput:  # fmt: skip
        # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
        from captum.attr import LayerDeepLift

        attr, delta = LayerDeepLift(net, layer).attribute(
            _leaf(x), baselines=base, target=tgt, return_convergence_delta=True
        )
        return _summed(attr, delta, keep_raw, info)


class Ablation(Method):
    name, label = "ablation", "Feature ablation"
    summary = "Drop in the target score when a patch of the layer's output is set to zero."
    grid_tap = True

    def layer_problem(self, info: LayerInfo) -> str | None:
        if info.out_shape and info.spatial is None:
            return msg(f"{info.name} has no spatial map to ablate patches of.")
        return super().layer_problem(info)

    def layer_cost(self, info: LayerInfo, n: int, opt: Options) -> tuple[int, int, int]:
        gh, gw = ablation_groups(info, opt.grid)
        groups = gh * gw
        return 2 + math.ceil(groups / opt.perturbations_per_eval), 0, n * (2 + groups)

    def attribute_layer(
        self, net: torch.nn.Module, layer: torch.nn.Module, info: LayerInfo, x: torch.Tensor, tgt: torch.Tensor,
        base: torch.Tensor, opt: Options, keep_raw: bool,
    ) -> LayerOutput:  # fmt: skip
        # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
        from captum.attr import LayerFeatureAblation

        mask = ablation_mask(info, opt.grid).to(x.device)
        # Captum applies a per-image target unexpanded to its batch of perturbations: select it ourselves.
        attr = (
            LayerFeatureAblation(target_score(net, tgt), layer)
            .attribute(_leaf(x), layer_mask=mask, perturbations_per_eval=opt.perturbations_per_eval)
            .detach()
        )
        raw = attr.float().cpu() if keep_raw else None
        return LayerOutput(as_map(attr[:, 0]).float().cpu(), raw=raw)  # every channel holds its patch's value


def _leaf(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


def _summed(attr: torch.Tensor, delta: torch.Tensor | None, keep_raw: bool, info: LayerInfo) -> LayerOutput:
    """A Captum attribution of the layer's own output, read through its layout: the map and channel scores over the
    grid (patch tokens), and what the class/register tokens carry apart (completeness holds over both)."""
    attr = (attr[0] if isinstance(attr, (tuple, list)) else attr).detach()  # a layer returning (output, weights)
    lay = info.grid_layout
    grid = lay.to_grid(attr)
    extra = lay.prefix_tokens(attr)
    return LayerOutput(
        grid.sum(1).float().cpu(),
        channel_scores(grid).float().cpu(),
        delta.detach().float().cpu() if delta is not None else None,
        grid.float().cpu() if keep_raw else None,
        extra.sum(dim=(1, 2)).float().cpu() if extra is not None else None,
    )


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        GradCAM(), GradXAct(), IntegratedGradients(), Conductance(), Activation(), GuidedGradCAM(), Ablation(),
        DeepLift(),
    )
}  # fmt: skip


def get_method(name: str) -> Method:
    """The method called `name`, or an AttributionError listing the known ones."""
    if name not in METHODS:
        raise AttributionError(f"Unknown attribution method {name!r}; choose one of: {', '.join(METHODS)}.")
    return METHODS[name]


def method_problem(model: Any, method: str) -> str | None:
    """Why `method` cannot run on this network at all, or None."""
    return get_method(method).problem(model)


def availability(model: Any) -> dict[str, str | None]:
    """Method name → None if it runs on this network, else the reason (for greying options out)."""
    return {name: m.problem(model) for name, m in METHODS.items()}
