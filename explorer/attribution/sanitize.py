"""Private structural copies of a shared model, and what each attribution method needs of a network.

Captum registers its hooks straight on the modules it is given. On the shared model those hooks would fire in
every app session's forward (and LayerIntegratedGradients even replaces a layer's output), so Captum always
runs on a *shadow*: a copy of the module tree that shares every parameter and buffer with the shared model
(no weights are copied) and carries no hooks. Methods with structural demands get a sanitised shadow:
in-place activations turned off, ReLU6 made visible to guided backprop. What cannot be fixed on a copy
(a module reused within one forward, a nonlinearity DeepLift has no rule for) is reported with the reason.
"""

from __future__ import annotations

import copy
import itertools
from collections import Counter
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from explorer.errors import msg
from explorer.layers import Layout
from explorer.models import logits_of

# Module types whose hooks a shadow must not inherit from the shared model.
_HOOK_DICTS = (
    "_forward_hooks",
    "_forward_pre_hooks",
    "_backward_hooks",
    "_backward_pre_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)

# Elementwise nonlinearities we look for when judging DeepLift and guided backprop.
_ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
    nn.Hardsigmoid, nn.Hardtanh, nn.Sigmoid, nn.Tanh, nn.Softplus, nn.PReLU, nn.Softmax,
)  # fmt: skip


class GuidedReLU6(nn.ReLU):
    """ReLU6 that guided backprop recognises (Captum hooks ``nn.ReLU`` instances only); same forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x, inplace=False)


def shadow(module: nn.Module, *, no_inplace: bool = False, relu6_as_relu: bool = False) -> nn.Module:
    """A hook-free copy of `module`'s structure sharing its parameters and buffers.

    Hooks, `inplace` switches and module swaps on the shadow never reach the shared model; the weights are
    the same tensors, so results are identical and no memory is spent on them.
    """
    shared = {id(t): t for t in itertools.chain(module.parameters(), module.buffers())}
    for attempt in range(3):  # another thread may register a hook while we copy
        try:
            twin = copy.deepcopy(module, dict(shared))
            break
        except RuntimeError:
            if attempt == 2:
                raise
    for m in twin.modules():
        for name in _HOOK_DICTS:
            hooks = getattr(m, name, None)
            if hooks is not None:
                hooks.clear()
        if no_inplace and isinstance(getattr(m, "inplace", None), bool):
            setattr(m, "inplace", False)  # noqa: B010 (an attribute of some activations only)
    if relu6_as_relu:
        _swap(twin, nn.ReLU6, lambda _old: GuidedReLU6())
    return twin


class GridTap(nn.Module):
    """A layer wrapped so that its output passes through `grid` (an Identity) as (N, C, h, w) and comes back in its
    own layout: a Captum layer method aimed at `grid` sees channels on a grid, whatever the layer's layout (a
    ViT's tokens, Swin's channels-last maps). The class and register tokens go around the tap, unchanged."""

    def __init__(self, inner: nn.Module, layout: Layout) -> None:
        super().__init__()
        self.inner = inner
        self.grid = nn.Identity()
        self.layout = layout

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        out = self.inner(*args, **kwargs)
        t = out[0] if isinstance(out, (tuple, list)) else out
        back = self.layout.from_grid(self.grid(self.layout.to_grid(t)), t)
        return type(out)([back, *out[1:]]) if isinstance(out, (tuple, list)) else back


def tap_grids(twin: nn.Module, layouts: dict[str, Layout]) -> dict[str, str]:
    """Wrap each named layer of `twin` whose layout is not NCHW in a GridTap (the twin only; the shared model is
    untouched). Returns layer name → the name of the module to hand a Captum layer method."""
    targets: dict[str, str] = {}
    for name, layout in layouts.items():
        if layout.kind == "nchw" or name == "":
            targets[name] = name
            continue
        parent_name, _, child = name.rpartition(".")
        parent = twin.get_submodule(parent_name) if parent_name else twin
        setattr(parent, child, GridTap(getattr(parent, child), layout))
        targets[name] = f"{name}.grid"
    return targets


class Logits(nn.Module):
    """`inner` with its forward's output reduced to the class scores (`explorer.models.logits_of`), for Captum."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(x))


def _swap(root: nn.Module, kind: type[nn.Module], make: object) -> int:
    count = 0
    for parent in list(root.modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is kind:
                setattr(parent, child_name, make(child))  # type: ignore[operator]
                count += 1
    return count


def activation_types(module: nn.Module) -> Counter[str]:
    """How many modules of each activation type the network holds."""
    return Counter(type(m).__name__ for m in module.modules() if isinstance(m, _ACTIVATIONS))


def guided_backprop_problem(module: nn.Module) -> str | None:
    """Why guided backprop (hence Guided Grad-CAM) cannot run on this network, or None."""
    kinds = activation_types(module)
    if kinds.get("ReLU", 0) + kinds.get("ReLU6", 0) == 0:
        others = ", ".join(sorted(kinds)) or msg("no activation modules")
        return msg(f"Guided backprop modifies the backward pass of ReLU modules, and this network has none ({others}).")
    return None


def deeplift_problem(module: nn.Module, calls: dict[str, int]) -> str | None:
    """Why Captum's DeepLift would fail or be silently wrong on this network, or None.

    `calls` maps module names to how often each ran in one forward (the full ladder's ``calls``).
    """
    # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
    from captum.attr._core.deep_lift import SUPPORTED_NON_LINEAR

    acts = [m for m in module.modules() if isinstance(m, _ACTIVATIONS)]
    unsupported = sorted({type(m).__name__ for m in acts if type(m) not in SUPPORTED_NON_LINEAR})
    if unsupported:
        return msg(
            f"DeepLift has no rule for {', '.join(unsupported)} (Captum would treat it as linear and give wrong "
            "attributions); use Integrated Gradients instead."
        )
    by_name = dict(module.named_modules())
    reused = [
        name for name, n in calls.items() if n > 1 and name in by_name and type(by_name[name]) in SUPPORTED_NON_LINEAR
    ]
    if reused:
        if len(reused) > 3:
            return msg(
                f"DeepLift needs each nonlinear module to run once per forward, but {', '.join(reused[:3])} and "
                f"{len(reused) - 3} more run several times (a copy cannot split them); use Integrated Gradients "
                "instead."
            )
        return msg(
            f"DeepLift needs each nonlinear module to run once per forward, but {', '.join(reused)} run several "
            "times (a copy cannot split them); use Integrated Gradients instead."
        )
    return None
