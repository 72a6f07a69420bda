"""Objectives: what a rendered image should make the network do, one scalar per image, to be maximised.

An objective is a value: it knows the layers it reads (`layers`), has a canonical text (`key`) used for seeds and
cache keys, and composes with ``+``, ``-`` and ``*`` by a number::

    fv.channel("blocks.3.2", 7) - 0.5 * fv.diversity("blocks.3.2")

Activations reach an objective as a grid (copies, C, H, W) for one image (copies > 1 when the transforms take
several crops of it), read by the layer's layout (`explorer.layers.Layout`): channels-last maps are permuted, and
a ViT's tokens become their patch grid with the class and register tokens left out, so a transformer's "channel"
is an embedding dimension averaged over the patch tokens and a "neuron" is one patch position.
A *coupled* objective (diversity) also sees the other images of its group: the images in the same render call
with the same key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from explorer.errors import ExplorerError

LOGITS = ""  # the layer name of the model's own output (the root module)


class ObjectiveError(ExplorerError):
    """An objective that does not fit the model (a channel the layer lacks, a wrong-size direction)."""


@dataclass
class Context:
    """What an objective sees for one image: its activations, and its group's (for coupled objectives)."""

    acts: dict[str, torch.Tensor]  # layer → (copies, C, H, W)
    group: list[dict[str, torch.Tensor]]  # the same for every image of the group, this one included
    index: int  # this image's position in `group`


def _fmt(x: float) -> str:
    return repr(float(x))


class Objective:
    """Base class; subclasses set `layers`, `key`, and implement `evaluate(ctx) -> (copies,)`."""

    layers: tuple[str, ...] = ()
    key: str = ""
    coupled: bool = False
    grid_layers: tuple[str, ...] = ()  # layers it needs positions on (a neuron, diversity): a map, not a vector
    positional: bool = False  # reads a fixed position (a neuron): the image must not be shifted at random

    def evaluate(self, ctx: Context) -> torch.Tensor:
        raise NotImplementedError

    @property
    def label(self) -> str:
        """A short human-readable name (the key, for most objectives)."""
        return self.key

    def __add__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)):
            return Sum((self, Constant(other)))
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum((self, other))

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)):
            return self if other == 0 else Sum((Constant(other), self))  # so sum([...]) works
        return NotImplemented

    def __sub__(self, other: Any) -> Objective:
        if isinstance(other, (int, float, Objective)):
            return self + (-1.0) * other
        return NotImplemented

    def __rsub__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)):
            return Constant(other) + (-1.0) * self
        return NotImplemented

    def __mul__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)):
            return Scaled(float(other), self)
        return NotImplemented

    __rmul__ = __mul__

    def __truediv__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)):
            return Scaled(1.0 / float(other), self)
        return NotImplemented

    def __neg__(self) -> Objective:
        return Scaled(-1.0, self)

    def __repr__(self) -> str:
        return f"Objective({self.key})"


class Sum(Objective):
    def __init__(self, terms: Sequence[Objective]) -> None:
        flat: list[Objective] = []
        for t in terms:
            flat.extend(t.terms if isinstance(t, Sum) else [t])
        self.terms: tuple[Objective, ...] = tuple(flat)
        self.layers = tuple(dict.fromkeys(layer for t in self.terms for layer in t.layers))
        self.grid_layers = tuple(dict.fromkeys(layer for t in self.terms for layer in t.grid_layers))
        self.coupled = any(t.coupled for t in self.terms)
        self.positional = any(t.positional for t in self.terms)
        self.key = " + ".join(t.key for t in self.terms)

    def evaluate(self, ctx: Context) -> torch.Tensor:
        out = self.terms[0].evaluate(ctx)
        for t in self.terms[1:]:
            out = out + t.evaluate(ctx)
        return out

    @property
    def label(self) -> str:
        return " + ".join(t.label for t in self.terms)


class Scaled(Objective):
    def __init__(self, weight: float, inner: Objective) -> None:
        if isinstance(inner, Scaled):
            weight, inner = weight * inner.weight, inner.inner
        self.weight: float = weight
        self.inner: Objective = inner
        self.layers, self.coupled, self.grid_layers = inner.layers, inner.coupled, inner.grid_layers
        self.positional = inner.positional
        self.key = f"{_fmt(weight)}*({inner.key})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return self.weight * self.inner.evaluate(ctx)

    @property
    def label(self) -> str:
        return f"-{self.inner.label}" if self.weight == -1.0 else f"{self.weight:g}·{self.inner.label}"


class Constant(Objective):
    def __init__(self, value: float) -> None:
        self.value = float(value)
        self.key = f"const({_fmt(value)})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        first = next(iter(ctx.acts.values()))
        return torch.full((first.shape[0],), self.value, device=first.device)


def _check_channel(act: torch.Tensor, layer: str, unit: int) -> None:
    if not 0 <= unit < act.shape[1]:
        raise ObjectiveError(f"Layer {layer or 'logits'} has {act.shape[1]} channels; there is no unit {unit}.")


class Channel(Objective):
    """Mean activation of one channel over all positions (Lucent's `channel`)."""

    def __init__(self, layer: str, unit: int) -> None:
        self.layer, self.unit = layer, int(unit)
        self.layers, self.key = (layer,), f"channel({layer}:{self.unit})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        act = ctx.acts[self.layer]
        _check_channel(act, self.layer, self.unit)
        return act[:, self.unit].mean(dim=(-2, -1))


class Neuron(Objective):
    """One channel at one position: the centre by default (Lucent's `neuron`)."""

    positional = True

    def __init__(self, layer: str, unit: int, x: int | None = None, y: int | None = None) -> None:
        self.layer, self.unit, self.x, self.y = layer, int(unit), x, y
        where = "" if x is None and y is None else f"@{x},{y}"
        self.layers, self.key = (layer,), f"neuron({layer}:{self.unit}{where})"
        self.grid_layers = (layer,)

    def evaluate(self, ctx: Context) -> torch.Tensor:
        act = ctx.acts[self.layer]
        _check_channel(act, self.layer, self.unit)
        h, w = act.shape[-2:]
        x = w // 2 if self.x is None else self.x
        y = h // 2 if self.y is None else self.y
        if not (0 <= x < w and 0 <= y < h):
            raise ObjectiveError(f"Layer {self.layer} is {h}×{w}; position x={x}, y={y} is outside it.")
        return act[:, self.unit, y, x]


class LayerObjective(Objective):
    """DeepDream: mean squared activation of the whole layer."""

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.layers, self.key = (layer,), f"layer({layer})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        return ctx.acts[self.layer].pow(2).mean(dim=(1, 2, 3))


class Direction(Objective):
    """Mean projection of the activation vectors onto a direction in channel space (Lucid's `direction`)."""

    def __init__(self, layer: str, vector: Sequence[float] | torch.Tensor) -> None:
        v = torch.as_tensor(vector, dtype=torch.float32).flatten().cpu()
        if not torch.isfinite(v).all() or float(v.norm()) == 0.0:
            raise ObjectiveError("A direction needs a finite, non-zero vector.")
        self.layer, self.vector = layer, v / v.norm()
        digest = hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()[:16]
        self.layers, self.key = (layer,), f"direction({layer}:{v.numel()}:{digest})"

    def evaluate(self, ctx: Context) -> torch.Tensor:
        act = ctx.acts[self.layer]
        if act.shape[1] != self.vector.numel():
            raise ObjectiveError(
                f"Layer {self.layer} has {act.shape[1]} channels; the direction has {self.vector.numel()}."
            )
        v = self.vector.to(device=act.device, dtype=act.dtype)
        return torch.einsum("kchw,c->khw", act, v).mean(dim=(-2, -1))


class Diversity(Objective):
    """Lucid's diversity: minus the summed cosine similarity of this image's Gram matrix with the others' in
    its group, divided by the group size. Summed over the group it is Lucent's `diversity` objective."""

    coupled = True

    def __init__(self, layer: str) -> None:
        self.layer = layer
        self.layers, self.key = (layer,), f"diversity({layer})"
        self.grid_layers = (layer,)

    def evaluate(self, ctx: Context) -> torch.Tensor:
        grams = []
        for acts in ctx.group:
            a = acts[self.layer]
            flat = a.permute(1, 0, 2, 3).reshape(a.shape[1], -1)  # all copies' positions together
            grams.append(F.normalize((flat @ flat.T).flatten(), dim=0))
        g = torch.stack(grams)
        others = torch.cat([g[: ctx.index], g[ctx.index + 1 :]])
        sim = (others @ g[ctx.index]).sum() / len(ctx.group)
        copies = ctx.acts[self.layer].shape[0]
        return (-sim).expand(copies)


# --------------------------------------------------------------------------- constructors (the public names)


def channel(layer: str, unit: int) -> Objective:
    """Maximise the mean of one channel."""
    return Channel(layer, unit)


def neuron(layer: str, unit: int, x: int | None = None, y: int | None = None) -> Objective:
    """Maximise one channel at one spatial position (the centre by default)."""
    return Neuron(layer, unit, x, y)


def negative(layer: str, unit: int) -> Objective:
    """Minimise one channel: what the unit is most against."""
    return -Channel(layer, unit)


def layer(layer: str) -> Objective:
    """DeepDream: excite the whole layer."""
    return LayerObjective(layer)


def direction(layer: str, vector: Sequence[float] | torch.Tensor) -> Objective:
    """Maximise the projection onto a direction in the layer's channel space."""
    return Direction(layer, vector)


def diversity(layer: str) -> Objective:
    """Push the images of a group apart in style (Gram matrices) at `layer`."""
    return Diversity(layer)


def class_logit(index: int, layer: str = LOGITS) -> Objective:
    """Maximise one class logit (the model output before softmax, or the named layer's unit)."""
    obj = Channel(layer, index)
    obj.key = f"class({layer}:{int(index)})" if layer else f"class({int(index)})"
    return obj


def diverse(objective: Objective, layer: str, n: int = 4, weight: float = 10.0) -> list[Objective]:
    """`n` copies of `objective + weight·diversity(layer)`: render them together for `n` different images.

    Objectives here are maximised and `diversity` is *minus* the Gram similarity, so the term is added (Lucid and
    Lucent subtract it because their objectives are losses; subtracting it here pulled the images together: mean
    pairwise pooled feature distance 0.008 against 0.40 with +10). The weight is measured on the bundled model
    (fast preset, blocks.3.0 unit 5, seeds 0 and 1; distance / the unit's mean on the 4 images): no term 0.010 /
    11; +10: 0.40 / 10; +30: 0.60 / 8.6; +100: 0.66 / 6.7 with one image at 1.5. 10 makes them differ while each
    still drives the unit."""
    combined = objective + weight * Diversity(layer)
    return [combined] * n


OBJECTIVE_KINDS = ("channel", "neuron", "negative", "diversity")


def for_unit(kind: str, layer_name: str, unit: int, n_diverse: int = 4) -> list[Objective]:
    """The objective(s) of one kind for one unit (the CLI's and pages' vocabulary)."""
    if kind == "channel":
        return [channel(layer_name, unit)]
    if kind == "neuron":
        return [neuron(layer_name, unit)]
    if kind == "negative":
        return [negative(layer_name, unit)]
    if kind == "diversity":
        return diverse(channel(layer_name, unit), layer_name, n_diverse)
    raise ObjectiveError(f"Unknown objective {kind!r}: use one of {', '.join(OBJECTIVE_KINDS)}.")
