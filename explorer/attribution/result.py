"""What `attribute` returns: raw per-layer maps and channel scores, plus the pictures and tables made from them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from explorer.attribution import colour as ov
from explorer.attribution.methods import METHODS, MethodCost


@dataclass
class AttributionResult:
    """Per-layer attribution of one batch by one method; all tensors on the CPU, float32, raw magnitudes.

    maps[layer]: (N, h, w), the attribution summed over channels (Grad-CAM: its own weighted sum; Guided
    Grad-CAM: at input resolution, summed over RGB). channels[layer]: (N, C), summed over space (absent for
    ablation, which removes whole patches). delta[layer]: (N,) completeness error, for methods that have one.
    """

    method: str
    layers: list[str]
    images: torch.Tensor  # (N, H, W, 3) in [0, 1]: the network's view of the inputs
    cost: MethodCost
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    channels: dict[str, torch.Tensor] = field(default_factory=dict)
    delta: dict[str, torch.Tensor] = field(default_factory=dict)
    raw: dict[str, torch.Tensor] = field(default_factory=dict)
    prefix: dict[str, torch.Tensor] = field(default_factory=dict)  # token layers: (N,) on class/register tokens
    skipped: dict[str, str] = field(default_factory=dict)  # layer → why this method cannot use it
    notes: list[str] = field(default_factory=list)
    target: list[int] = field(default_factory=list)
    logits: torch.Tensor | None = None  # (N, classes) when a forward of the plain model was made
    class_names: list[str] = field(default_factory=list)
    fingerprint: str = ""
    seconds: float = 0.0

    @property
    def display(self) -> str:
        """The colour mode this method's maps read best in ('positive' for Grad-CAM, else 'signed')."""
        return METHODS[self.method].display

    def target_name(self, image: int = 0) -> str:
        t = self.target[image]
        return self.class_names[t] if t < len(self.class_names) else str(t)

    def predictions(self, image: int = 0, k: int = 5) -> list[tuple[str, float]]:
        """Top-k (class, probability) from the forward made during attribution (empty if none was made)."""
        if self.logits is None:
            return []
        probs = self.logits[image].softmax(-1)
        top = probs.topk(min(k, probs.numel()))
        return [(self.class_names[i], float(p)) for p, i in zip(top.values.tolist(), top.indices.tolist(), strict=True)]

    def top_channels(
        self, layer: str, k: int = 5, image: int = 0, *, negative: bool = False
    ) -> list[tuple[int, float]]:
        """The `k` channels of `layer` with the largest (or most negative) attribution for one image."""
        if layer not in self.channels:
            return []
        scores = self.channels[layer][image]
        order = scores.argsort(descending=not negative)[: min(k, scores.numel())]
        return [(int(c), float(scores[c])) for c in order]

    def scale(
        self, scale: str | float | tuple[float, float] = "shared", mode: str | None = None, image: int | None = None
    ) -> dict[str, tuple[float, float]]:
        """Layer → (vmin, vmax): one scale for all layers ('shared'), one per layer ('layer'), or given.

        `image` restricts the shared scale to one image of the batch (default: the whole batch).
        """
        mode = mode or self.display
        pick = (lambda t: t) if image is None else (lambda t: t[image])
        if scale == "shared":
            both = ov.scale((pick(self.maps[n]) for n in self.layers), mode)
            return {n: both for n in self.layers}
        if scale == "layer":
            return {n: ov.scale([pick(self.maps[n])], mode) for n in self.layers}
        if isinstance(scale, (int, float)):
            top = float(scale)
            return {n: ((-top, top) if mode == "signed" else (0.0, top)) for n in self.layers}
        if isinstance(scale, tuple) and len(scale) == 2:
            return {n: (float(scale[0]), float(scale[1])) for n in self.layers}
        raise ValueError(f"Unknown scale {scale!r}: use 'shared', 'layer', a vmax or (vmin, vmax).")

    def overlays(
        self,
        image: int = 0,
        scale: str | float | tuple[float, float] = "shared",
        *,
        mode: str | None = None,
        cmap: str | None = None,
        alpha: float = 0.75,
        layers: Sequence[str] | None = None,
    ) -> dict[str, Image.Image]:
        """Layer → the map over the image, on a shared or per-layer colour scale (see `scale`)."""
        mode = mode or self.display
        scales = self.scale(scale, mode, image=image if scale in ("shared", "layer") else None)
        return {
            n: ov.overlay(self.images[image], self.maps[n][image], *scales[n], mode=mode, cmap=cmap, alpha=alpha)
            for n in (layers or self.layers)
        }

    def summary(self, image: int = 0, k: int = 5) -> dict[str, Any]:
        """A JSON-ready record: method, cost, target and, per layer, the raw magnitudes and top channels."""
        layers = {}
        for n in self.layers:
            m = self.maps[n][image]
            rec: dict[str, Any] = {
                "shape": list(m.shape),
                "min": float(m.min()),
                "max": float(m.max()),
                "mean_abs": float(m.abs().mean()),
                "sum": float(m.sum()),
                "top_channels": [{"channel": c, "score": s} for c, s in self.top_channels(n, k, image)],
            }
            if n in self.delta:
                rec["delta"] = float(self.delta[n][image])
            if n in self.prefix:
                rec["class_tokens"] = float(self.prefix[n][image])
            layers[n] = rec
        return {
            "method": self.method,
            "label": METHODS[self.method].label,
            "target": self.target[image] if self.target else None,
            "target_name": self.target_name(image) if self.target else None,
            "predictions": [{"class": c, "probability": p} for c, p in self.predictions(image)],
            "cost": self.cost.describe(),
            "forward_calls": self.cost.forward_calls,
            "backward_calls": self.cost.backward_calls,
            "seconds": round(self.seconds, 4),
            "model_fingerprint": self.fingerprint,
            "skipped": self.skipped,
            "notes": self.notes,
            "layers": layers,
        }


def shared_scale(
    results: Sequence[AttributionResult], mode: str | None = None, image: int | None = None
) -> tuple[float, float]:
    """One (vmin, vmax) over every layer of several results (e.g. the model before and after fine-tuning)."""
    if not results:
        raise ValueError("No results to scale.")
    mode = mode or results[0].display
    maps = [r.maps[n] if image is None else r.maps[n][image] for r in results for n in r.layers]
    return ov.scale(maps, mode)
