"""Layouts: how to read a layer's output as channels on a spatial grid. The one adapter every engine uses.

A CNN's maps are NCHW; ConvNeXt's MLPs and Swin's stages compute channels-last (NHWC); a ViT's blocks output a
sequence of tokens, a class token (and register tokens) followed by one token per image patch. A :class:`Layout`
knows which of these a layer's output is, where its channels are, the grid its positions sit on and how many
leading tokens are not patches, and turns the output into ``(N, C, h, w)`` (:meth:`Layout.to_grid`) and back
(:meth:`Layout.from_grid`). Outputs with no spatial form (a vector of logits, windows of tokens, a sequence that
matches no grid of the image) say so in one sentence (:attr:`Layout.reason`).

How a layout is decided (:func:`infer_layouts`), strongest evidence first:

1. *Two input sizes*: the model is traced at its own size and at a larger, non-square one. The axes that grow
   with the input are the grid; the one that stays is the channels. This tells NCHW from NHWC even when
   H == W == C, and unmasks windowed internals (only the window count grows).
2. *The module*: for a model with a fixed input size (ViT, DeiT, Swin in timm, MaxViT), the layer's channel
   count is read from its weights (a Conv2d's out_channels, a Linear's out_features, a norm's features; for a
   block, those of the last layer that ran inside it), and a tie goes to that layer's kind (a convolution writes
   NCHW, a Linear or LayerNorm channels-last). Token sequences are matched to a grid the network made earlier
   (the patch embedding's) plus at most 16 leading tokens.
3. *The shape*, when nothing else is known (:func:`guess_layout`): H == W != C reads as NHWC.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import ExplorerError, msg

MAX_PREFIX = 16  # leading non-patch tokens a sequence may carry (class + distillation + up to 8 registers, …)
KINDS = ("nchw", "nhwc", "tokens", "vector", "none")

_CHANNELS_FIRST_TYPES = (nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d,
                         nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.GroupNorm, nn.InstanceNorm2d)  # fmt: skip
_CHANNELS_LAST_TYPES = (nn.Linear, nn.LayerNorm)


class LayoutError(ExplorerError):
    """A layer output that has no channels-and-grid form, or a tensor that does not fit its layout."""


@dataclass(frozen=True)
class Layout:
    """How one layer's output is laid out, at the input size it was traced at (batch dimension excluded)."""

    kind: str  # nchw | nhwc | tokens | vector | none
    shape: tuple[int, ...]
    channels: int | None = None
    grid: tuple[int, int] | None = None  # (h, w) of the positions; None: no spatial form
    prefix: int = 0  # tokens: leading class/register tokens that are not image patches
    channels_first: bool = False  # tokens stored (N, D, T) rather than (N, T, D)
    reason: str = ""  # kind "none": why the output has no spatial form, as a predicate ("works on windows …")
    decided_by: str = "shape"  # "input sizes", "module" or "shape"
    why: tuple[str, ...] = ()  # kind "none": the reason's kind and details, to say it of a named layer (`_reason`)

    @property
    def has_map(self) -> bool:
        """Whether a picture can show it: a grid larger than 1×1."""
        return self.grid is not None and self.grid[0] * self.grid[1] > 1

    @property
    def tokens(self) -> bool:
        return self.kind == "tokens"

    def short(self) -> str:
        """'NCHW 14×14', 'NHWC 56×56', 'tokens 14×14+1', 'vector', 'no grid': for tables."""
        if self.kind == "none":
            return msg("no grid")
        if self.kind == "vector":
            return msg("vector")
        h, w = self.grid or (1, 1)
        if self.kind == "tokens":
            return f"tokens {h}×{w}" + (f"+{self.prefix}" if self.prefix else "")
        return f"{self.kind.upper()} {h}×{w}"

    def problem(self, name: str = "") -> str:
        """'<name> works on windows of the image …': the reason as a sentence about the layer."""
        if self.kind != "none":
            return ""
        subject = name or msg("This layer")
        return _reason(self.why, subject) if self.why else f"{subject} {self.reason}"

    def describe(self) -> str:
        """'14×14 patch tokens + 1 class token, 768 channels' and the like, for captions and messages."""
        if self.kind == "none":  # the reason said of "it", so that it reads as one sentence in any language
            return _reason(self.why, msg("no spatial form: it")) if self.why else f"no spatial form: it {self.reason}"
        if self.kind == "vector":
            return msg(f"a vector of {self.channels}")
        h, w = self.grid or (1, 1)
        if self.kind == "tokens" and not self.prefix:
            return msg(f"{h}×{w} patch tokens, {self.channels} channels")
        if self.kind == "tokens" and self.prefix == 1:
            return msg(f"{h}×{w} patch tokens + 1 class token, {self.channels} channels")
        if self.kind == "tokens":
            return msg(f"{h}×{w} patch tokens + {self.prefix} class/register tokens, {self.channels} channels")
        if self.kind == "nhwc":
            return msg(f"{h}×{w} map, {self.channels} channels (channels-last)")
        return msg(f"{h}×{w} map, {self.channels} channels (channels-first)")

    # ------------------------------------------------------------------ conversions

    def _sequence(self, t: torch.Tensor) -> torch.Tensor:
        """Tokens as (N, T, D)."""
        if t.dim() != 3:
            raise LayoutError(f"Expected tokens (N, T, D), got a tensor of shape {tuple(t.shape)}.")
        return t.transpose(1, 2) if self.channels_first else t

    def grid_for(self, n: int) -> tuple[int, int]:
        """The grid of `n` patch tokens: the traced grid, or one of its aspect ratio (another input size)."""
        gh, gw = self.grid or (1, 1)
        if n == gh * gw:
            return gh, gw
        w = max(1, round(math.sqrt(n * gw / gh)))
        if n % w == 0:
            return n // w, w
        raise LayoutError(f"{n} patch tokens do not fill a grid of the traced {gh}×{gw} shape.")

    def to_grid(self, t: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) view of an output with this layout: patch tokens only, vectors as 1×1. A tensor from
        another input size works too (the grid follows it)."""
        if self.kind == "none":
            raise LayoutError(self.problem())
        if self.kind == "vector":
            return t.reshape(t.shape[0], -1)[:, :, None, None]
        if self.kind in ("nchw", "nhwc"):
            if t.dim() != 4:
                raise LayoutError(f"Expected a 4-D map, got a tensor of shape {tuple(t.shape)}.")
            return t.permute(0, 3, 1, 2) if self.kind == "nhwc" else t
        seq = self._sequence(t)
        n, count, d = seq.shape
        h, w = self.grid_for(count - self.prefix)
        return seq[:, self.prefix :].reshape(n, h, w, d).permute(0, 3, 1, 2)

    def prefix_tokens(self, t: torch.Tensor) -> torch.Tensor | None:
        """The leading class/register tokens (N, prefix, D) of a token output; None for other layouts."""
        if self.kind != "tokens" or not self.prefix:
            return None
        return self._sequence(t)[:, : self.prefix]

    def from_grid(self, grid: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """Back from (N, C, h, w) to this layout; `like` is the original output (its prefix tokens are kept)."""
        if self.kind == "none":
            raise LayoutError(self.problem())
        if self.kind == "vector":
            return grid.reshape(like.shape)
        if self.kind == "nchw":
            return grid
        if self.kind == "nhwc":
            return grid.permute(0, 2, 3, 1)
        patches = grid.flatten(2).transpose(1, 2)
        seq = torch.cat([self._sequence(like)[:, : self.prefix], patches], 1) if self.prefix else patches
        return seq.transpose(1, 2) if self.channels_first else seq

    def pooled(self, t: torch.Tensor) -> torch.Tensor:
        """(N, C): the mean over the grid's positions (patch tokens only; class tokens are apart)."""
        return self.to_grid(t).mean(dim=(2, 3))


# --------------------------------------------------------------------------- shape alone


def _square_tokens(count: int) -> tuple[tuple[int, int], int] | None:
    """(grid, prefix) for `count` tokens read as a square grid plus a few leading tokens, else None."""
    for prefix in range(0, min(MAX_PREFIX, count - 1) + 1):
        side = math.isqrt(count - prefix)
        if side >= 2 and side * side == count - prefix:
            return (side, side), prefix
    return None


def guess_layout(shape: Sequence[int]) -> Layout:
    """A layout from an output shape alone (no batch dimension), for a tensor whose layer is unknown.

    (C,) vector; (C, H, W) NCHW unless H == W != C (then NHWC); (T, D) tokens when T is a square number of
    patches plus at most 16 leading tokens ((D, T) when only D fits). Prefer :func:`infer_layouts`, which knows
    the layer.
    """
    shape = tuple(int(s) for s in shape)
    if not shape:
        return _no_form(shape, "no tensor")
    if len(shape) == 1:
        return Layout("vector", shape, channels=shape[0])
    if len(shape) == 3:
        if shape[0] == shape[1] and shape[1] != shape[2]:
            return Layout("nhwc", shape, channels=shape[2], grid=(shape[0], shape[1]))
        return Layout("nchw", shape, channels=shape[0], grid=(shape[1], shape[2]))
    if len(shape) == 2:
        for count, d, first in ((shape[0], shape[1], False), (shape[1], shape[0], True)):
            fit = _square_tokens(count)
            if fit is not None:
                return Layout("tokens", shape, channels=d, grid=fit[0], prefix=fit[1], channels_first=first)
        return _no_form(shape, "sequence", _fmt(shape))
    return _no_form(shape, "dims", str(len(shape) + 1), _fmt(shape))


def _fmt(shape: Sequence[int]) -> str:
    return "×".join(str(s) for s in shape)


def _no_form(shape: tuple[int, ...], *why: str, decided_by: str = "shape") -> Layout:
    """The layout of an output with no spatial form, for the reason `why` (its kind, then its details)."""
    return Layout("none", shape, reason=_reason(why), decided_by=decided_by, why=why)


def _reason(why: Sequence[str], subject: str | None = None) -> str:
    """Why an output has no spatial form: a predicate ('works on windows of the image …'), or with `subject` a
    sentence about that layer. `why` is the reason's kind, then its details (shapes already written out)."""
    kind, *details = why
    s = subject
    if kind == "no tensor":
        return msg(f"{s} outputs no tensor.") if s else msg("outputs no tensor.")
    if kind == "dims":
        dims, shape = details
        if s:
            return msg(f"{s} has a {dims}-D output ({shape}) with no channels-and-grid form.")
        return msg(f"has a {dims}-D output ({shape}) with no channels-and-grid form.")
    if kind == "sequence":
        (shape,) = details
        if s:
            return msg(
                f"{s} outputs a sequence of {shape} values that matches no grid of the image, so it has no spatial "
                "form."
            )
        return msg(
            f"outputs a sequence of {shape} values that matches no grid of the image, so it has no spatial form."
        )
    if kind == "proportions":
        (shape,) = details
        if s:
            return msg(
                f"{s} has an output ({shape}) without the image's proportions (as with attention heads over tokens), "
                "so it has no single spatial grid."
            )
        return msg(
            f"has an output ({shape}) without the image's proportions (as with attention heads over tokens), so it "
            "has no single spatial grid."
        )
    if kind == "axis":
        shape, axis = details
        if s:
            return msg(
                f"{s} has an output ({shape}) that does not keep the image's layout (only axis {axis} follows the "
                "input size, as with windows of tokens), so it has no single spatial grid."
            )
        return msg(
            f"has an output ({shape}) that does not keep the image's layout (only axis {axis} follows the input "
            "size, as with windows of tokens), so it has no single spatial grid."
        )
    if kind == "axes":
        shape, axes = details
        if s:
            return msg(
                f"{s} has an output ({shape}) that does not keep the image's layout (only axes {axes} follow the "
                "input size, as with windows of tokens), so it has no single spatial grid."
            )
        return msg(
            f"has an output ({shape}) that does not keep the image's layout (only axes {axes} follow the input "
            "size, as with windows of tokens), so it has no single spatial grid."
        )
    if kind == "fixed":
        (shape,) = details
        if s:
            return msg(
                f"{s} has a {shape} output that does not change with the input size, so no axis of it is a grid of "
                "the image."
            )
        return msg(
            f"has a {shape} output that does not change with the input size, so no axis of it is a grid of the image."
        )
    (shape,) = details  # "windows"
    if s:
        return msg(
            f"{s} works on windows of the image ({shape}): there is no single grid to show; its block's output has one."
        )
    return msg(f"works on windows of the image ({shape}): there is no single grid to show; its block's output has one.")


# --------------------------------------------------------------------------- from a trace of the model


@dataclass(frozen=True)
class _Hint:
    channels: int | None
    kind: str | None  # "first" (a convolution wrote it), "last" (a Linear/LayerNorm did), None


def out_channels(m: nn.Module) -> int | None:
    """The channels a layer writes, read from its weights (None when it has none or they do not say)."""
    if isinstance(m, nn.LayerNorm):
        return int(m.normalized_shape[-1])
    if not any(True for _ in m.parameters(recurse=False)):
        return None
    for attr in ("out_channels", "out_features", "num_features", "num_channels"):
        v = getattr(m, attr, None)
        if isinstance(v, int):
            return v
    return None


def _hints(rows: Sequence[tuple[str, nn.Module, tuple[int, ...], int]]) -> list[_Hint]:
    """For each traced module, the channels of the last weighted layer that ran inside it (itself if weighted)."""
    out: list[_Hint] = []
    for i, (name, _mod, _, _) in enumerate(rows):
        j, prefix = i, name + "."
        found: _Hint = _Hint(None, None)
        while j >= 0 and (j == i or rows[j][0].startswith(prefix)):
            m = rows[j][1]
            c = out_channels(m)
            if c is not None:
                kind = "first" if isinstance(m, _CHANNELS_FIRST_TYPES) else None
                found = _Hint(c, "last" if isinstance(m, _CHANNELS_LAST_TYPES) else kind)
                break
            j -= 1
        out.append(found)
    return out


_PARTITION = re.compile(r"(?<!de)partition$", re.IGNORECASE)  # WindowPartition, not PartitionAttentionLayer
_DEPARTITION = re.compile(r"departition$", re.IGNORECASE)


def _windowed(rows: Sequence[tuple[str, nn.Module, tuple[int, ...], int]]) -> list[bool]:
    """Rows computed on windows of the image (between a *Partition module and its *Departition, as in MaxViT)."""
    out, inside = [], False
    for _, mod, _, _ in rows:
        kind = type(mod).__name__
        if _DEPARTITION.search(kind):
            inside = False
        elif _PARTITION.search(kind):
            inside = True
        out.append(inside)
    return out


def _image_like(lay: Layout, size: Sequence[int] | None) -> Layout:
    """`lay`, unless its grid cannot be a grid of a `size` image (strides along height and width more than 2×
    apart, like the heads × tokens × features inside an attention layer): then no spatial form."""
    if size is None or lay.grid is None or not lay.has_map:
        return lay
    ratio = (size[0] / lay.grid[0]) / (size[1] / lay.grid[1])
    if 0.5 <= ratio <= 2.0:
        return lay
    return _no_form(lay.shape, "proportions", _fmt(lay.shape), decided_by=lay.decided_by)


def _map_layout(
    a: tuple[int, ...], b: tuple[int, ...] | None, hint: _Hint, size: Sequence[int] | None = None
) -> Layout:
    """A 3-D output (without batch): NCHW, NHWC, or no spatial form."""
    if b is not None and len(b) == 3:
        varying = [i for i in range(3) if a[i] != b[i]]
        if varying == [1, 2]:
            return Layout("nchw", a, channels=a[0], grid=(a[1], a[2]), decided_by="input sizes")
        if varying == [0, 1]:
            return Layout("nhwc", a, channels=a[2], grid=(a[0], a[1]), decided_by="input sizes")
        if varying and varying != [1]:  # [1] alone fits both layouts: the module decides
            axes = ", ".join(str(i + 1) for i in varying)
            return _no_form(a, "axis" if len(varying) == 1 else "axes", _fmt(a), axes, decided_by="input sizes")
    nchw = Layout("nchw", a, channels=a[0], grid=(a[1], a[2]), decided_by="module")
    nhwc = Layout("nhwc", a, channels=a[2], grid=(a[0], a[1]), decided_by="module")
    first, last = hint.channels == a[0], hint.channels == a[2]
    if first and not last:
        return _image_like(nchw, size)
    if last and not first:
        return _image_like(nhwc, size)
    if first and last and hint.kind is not None:
        return _image_like(nhwc if hint.kind == "last" else nchw, size)
    return _image_like(guess_layout(a), size)


def _token_layout(
    a: tuple[int, ...],
    b: tuple[int, ...] | None,
    hint: _Hint,
    grids: Sequence[tuple[tuple[int, int], tuple[int, int] | None]],
) -> Layout:
    """A 2-D output (without batch): tokens on a grid the network made earlier, or no spatial form."""
    orders: list[bool] = []  # channels_first candidates, most likely first
    if b is not None and len(b) == 2:
        varying = [i for i in range(2) if a[i] != b[i]]
        if varying == [0]:
            orders = [False]
        elif varying == [1]:
            orders = [True]
        elif not varying:
            return _no_form(a, "fixed", _fmt(a), decided_by="input sizes")
        else:
            return _no_form(a, "sequence", _fmt(a), decided_by="input sizes")
    else:
        b = None
        if hint.channels == a[1] and hint.channels != a[0]:
            orders = [False]
        elif hint.channels == a[0] and hint.channels != a[1]:
            orders = [True]
        else:
            orders = [False, True]
    how = "input sizes" if b is not None else "module"
    for cf in orders:
        count, d = (a[1], a[0]) if cf else (a[0], a[1])
        count_b = None if b is None else (b[1] if cf else b[0])
        for ga, gb in _with_merges(grids):
            prefix = count - ga[0] * ga[1]
            if not 0 <= prefix <= MAX_PREFIX:
                continue
            if count_b is not None and (gb is None or count_b - gb[0] * gb[1] != prefix):
                continue
            return Layout("tokens", a, channels=d, grid=ga, prefix=prefix, channels_first=cf, decided_by=how)
        fit = _square_tokens(count)
        if fit is not None and count_b is None:
            return Layout("tokens", a, channels=d, grid=fit[0], prefix=fit[1], channels_first=cf, decided_by="shape")
    return _no_form(a, "sequence", _fmt(a), decided_by=how)


def _with_merges(
    grids: Sequence[tuple[tuple[int, int], tuple[int, int] | None]],
) -> list[tuple[tuple[int, int], tuple[int, int] | None]]:
    """Grids seen so far, the most recent first, then each halved up to three times (patch merging)."""
    out = list(reversed(grids))
    for k in (2, 4, 8):
        for ga, gb in reversed(grids):
            if ga[0] % k == 0 and ga[1] % k == 0:
                half_b = (gb[0] // k, gb[1] // k) if gb is not None and gb[0] % k == 0 and gb[1] % k == 0 else None
                out.append(((ga[0] // k, ga[1] // k), half_b))
    return out


def infer_layouts(
    rows: Sequence[tuple[str, nn.Module, tuple[int, ...], int]],
    probe: dict[str, tuple[int, ...]] | None = None,
    input_size: Sequence[int] | None = None,
) -> dict[str, Layout]:
    """The layout of every traced module's output (see the module docstring for the rules).

    `rows` is :func:`explorer.layers.trace` at `input_size` (H, W); `probe` maps names to output shapes at a
    second, larger and non-square input size (None when the model takes only its own size).
    """
    hints = _hints(rows)
    windowed = _windowed(rows)
    grids: list[tuple[tuple[int, int], tuple[int, int] | None]] = []  # maps seen so far, at both sizes
    out: dict[str, Layout] = {}
    previous: Layout | None = None
    for (name, mod, shape, _calls), hint, win in zip(rows, hints, windowed, strict=True):
        b = probe.get(name) if probe is not None else None
        passed = _passed_on(mod, shape, previous) if b is None and not win else None
        if passed is not None:
            lay = passed
        elif not shape:
            lay = _no_form(shape, "no tensor")
        elif win:
            lay = _no_form(shape, "windows", _fmt(shape), decided_by="module")
        elif len(shape) == 1:
            lay = Layout("vector", shape, channels=shape[0], decided_by="shape")
        elif len(shape) == 3:
            lay = _map_layout(shape, b, hint, input_size)
        elif len(shape) == 2:
            lay = _token_layout(shape, b, hint, grids)
        else:
            lay = guess_layout(shape)
        if lay.kind in ("nchw", "nhwc") and lay.has_map:
            gb = None
            if b is not None and len(b) == 3:
                gb = (b[1], b[2]) if lay.kind == "nchw" else (b[0], b[1])
            grids.append((lay.grid, gb))  # type: ignore[arg-type]
        out[name] = previous = lay
    return out


def _passed_on(mod: nn.Module, shape: tuple[int, ...], previous: Layout | None) -> Layout | None:
    """Without a second input size: a weightless leaf (activation, dropout, identity) keeps the layout of the output
    before it when the shape is the same, and a Permute module (torchvision's, with `dims`) moves its axes."""
    if previous is None or previous.kind not in ("nchw", "nhwc") or any(True for _ in mod.children()):
        return None
    if any(True for _ in mod.parameters(recurse=False)):
        return None
    dims = getattr(mod, "dims", None)
    if isinstance(dims, (list, tuple)) and sorted(dims) == [0, 1, 2, 3]:
        moved = "".join(previous.kind[i] for i in dims)
        if moved not in ("nchw", "nhwc") or tuple(previous.shape[i - 1] for i in dims[1:]) != shape:
            return None
        c = shape[0] if moved == "nchw" else shape[2]
        grid = (shape[1], shape[2]) if moved == "nchw" else (shape[0], shape[1])
        return Layout(moved, shape, channels=c, grid=grid, decided_by="module")
    if shape == previous.shape:
        return Layout(previous.kind, shape, previous.channels, previous.grid, decided_by="module")
    return None


def probe_size(size: Sequence[int]) -> tuple[int, int]:
    """The second input size layouts are traced at: larger, and not square, so height and width tell apart."""
    return int(size[0]) + 32, int(size[1]) + 64


def describe_shape(t: Any) -> str:
    """'2×197×768' for messages."""
    return _fmt(tuple(t.shape))
