"""Attribution for one unit (a channel of a layer) instead of a class: which pixels of an image excite it.

The Unit view shows this on the unit's dataset examples. Captum's neuron classes run on a shadow of the model
(see `sanitize.py`) whose forward stops at the unit's layer, so nothing after it is computed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from explorer.attribution import colour as ov
from explorer.attribution.core import baseline_tensor, prepare
from explorer.attribution.methods import AttributionError
from explorer.attribution.sanitize import shadow
from explorer.layers import forward_until, layout_of, resolve

UNIT_METHODS = {"saliency": "largest |gradient| over RGB", "ig": "Integrated Gradients summed over RGB"}


@dataclass
class UnitAttribution:
    """Input-resolution maps of one unit for a batch of images (CPU, float32)."""

    layer: str
    channel: int
    method: str
    maps: torch.Tensor  # (N, H, W)
    values: torch.Tensor  # (N,) the unit's value on each image (spatial max or mean)
    images: torch.Tensor  # (N, H, W, 3) in [0, 1]

    def overlays(self, scale: str = "shared", *, alpha: float = 0.75) -> list[Image.Image]:
        """One overlay per image, on one colour scale for the batch ('shared') or one per image ('image')."""
        mode = "abs" if self.method == "saliency" else "signed"
        shared = ov.scale([self.maps], mode)
        return [
            ov.overlay(self.images[i], m, *(shared if scale == "shared" else ov.scale([m], mode)), mode=mode,
                       alpha=alpha)
            for i, m in enumerate(self.maps)
        ]  # fmt: skip


def unit_attribution(
    model: Any,
    inputs: Any,
    layer: str,
    channel: int,
    method: str = "saliency",
    *,
    reduce: str = "max",
    n_steps: int = 32,
    internal_batch_size: int | None = 32,
    baseline: Any = "black",
) -> UnitAttribution:
    """Attribute a unit's activation (its spatial max, as dataset examples rank it, or mean) to input pixels."""
    # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
    from captum.attr import NeuronGradient, NeuronIntegratedGradients

    if method not in UNIT_METHODS:
        raise AttributionError(f"Unknown unit attribution {method!r}; choose one of: {', '.join(UNIT_METHODS)}.")
    if reduce not in ("max", "mean"):
        raise AttributionError(f"Unknown reduction {reduce!r}: use 'max' or 'mean'.")
    x, images01 = prepare(model, inputs)
    twin = shadow(model.module)
    target = resolve(twin, layer)
    lay = layout_of(model, layer)  # tokens → their patch grid, channels-last maps → channels first
    if lay.kind == "none":
        raise AttributionError(lay.problem(layer))
    with torch.no_grad():
        raw = forward_until(twin, layer, x)
    channels = lay.to_grid(raw).shape[1]
    if not 0 <= channel < channels:
        raise AttributionError(f"Layer {layer} has {channels} channels; channel {channel} is out of range.")

    def unit(act: torch.Tensor) -> torch.Tensor:
        a = lay.to_grid(act)[:, channel].reshape(act.shape[0], -1)
        return a.amax(1) if reduce == "max" else a.mean(1)

    def forward(inp: torch.Tensor) -> torch.Tensor:
        return forward_until(twin, layer, inp)

    xi = x.detach().clone().requires_grad_(True)
    if method == "saliency":
        attr = NeuronGradient(forward, target).attribute(xi, neuron_selector=unit)
        maps = attr.detach().abs().amax(1)
    else:
        ibs = None if internal_batch_size is None else max(internal_batch_size, x.shape[0])
        attr = NeuronIntegratedGradients(forward, target).attribute(
            xi, neuron_selector=unit, baselines=baseline_tensor(model, x, baseline), n_steps=n_steps,
            internal_batch_size=ibs,
        )  # fmt: skip
        maps = attr.detach().sum(1)
    return UnitAttribution(layer, channel, method, maps.float().cpu(), unit(raw).float().cpu(), images01)
