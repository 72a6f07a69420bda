"""Attribution sanity checks (Adebayo et al., NeurIPS 2018): does a map change when the network it explains is
destroyed?

Cascading randomization: on a private copy of the model, the blocks of the ladder are randomized one after another
from the top (the classifier first, the stem last); after each step every method's maps are recomputed for the
same image and the same target class (the original prediction), and compared with the original maps by the rank
correlation of their absolute values (Spearman) and by SSIM, layer by layer. A method whose maps depend on what
the network learned decorrelates; one that stays similar behaves like an edge detector. The known result: the
gradient and Grad-CAM decorrelate; Guided Backprop stays similar, because its backward pass largely ignores the
top layers.

The verdict is read where Adebayo et al. read it, after the *top* of the network is gone: a method passes when its
mean Spearman is below `PASS_BELOW` once the top blocks holding `TOP_FRACTION` of the weights are randomized (on
EfficientNet-Lite0: classifier, conv_head and blocks.6.0). After every block is randomized nearly every map
decorrelates, Guided Backprop included, so the end of the cascade tells methods apart less well.

Randomizing a tensor draws every value from a normal distribution with the tensor's own mean and standard
deviation (the learned structure goes, the scale of the activations stays); BatchNorm running statistics are
kept. The shared model is never touched: the copy shares its tensors until each is replaced by a new one.
Maps are compared at `COMPARE_SIZE`² (bilinear), each divided by its own largest absolute value for SSIM.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from explorer.attribution import (
    METHODS,
    attribute,
    method_cost,
    method_problem,
    prepare,
    resolve_layers,
    resolve_target,
    shadow,
)
from explorer.errors import msg
from explorer.layers import ladder
from explorer.models import LoadedModel, logits_of
from explorer.runtime import Progress
from explorer.trust.mapsim import COMPARE_SIZE, similarity
from explorer.trust.samples import TrustError
from explorer.trust.values import jsonable, nan_mean

INPUT_METHODS = {"gradient": "Gradient", "guided_backprop": "Guided Backprop"}  # maps at the input, one "layer"
INPUT_LAYER = "input"
DEFAULT_METHODS = ("gradient", "guided_backprop", "gradcam", "guided_gradcam", "gradxact")
PASS_BELOW = 0.5  # a method passes when its mean Spearman with the top of the network randomized is below this
TOP_FRACTION = 0.5  # "the top of the network": the top blocks holding this share of the parameters
ORIGINAL = "original"


def method_label(name: str) -> str:
    return INPUT_METHODS.get(name) or METHODS[name].label


@dataclass
class MethodSanity:
    """One method's similarity to its original maps after each randomization step (index 0: the original)."""

    method: str
    label: str
    layers: dict[str, dict[str, list[float]]]  # layer → {"spearman": [...], "ssim": [...]}
    spearman: list[float] = field(default_factory=list)  # mean over layers, per step
    ssim: list[float] = field(default_factory=list)
    top_step: int = 1  # the step after which the top of the network is randomized (see TOP_FRACTION)

    @property
    def top_spearman(self) -> float:
        return self.spearman[min(self.top_step, len(self.spearman) - 1)]

    @property
    def top_ssim(self) -> float:
        return self.ssim[min(self.top_step, len(self.ssim) - 1)]

    @property
    def final_spearman(self) -> float:
        return self.spearman[-1]

    @property
    def final_ssim(self) -> float:
        return self.ssim[-1]

    @property
    def passed(self) -> bool:
        return not self.top_spearman >= PASS_BELOW  # NaN (maps all zero once randomized) passes too

    def verdict(self) -> str:
        """One line: passes or fails, and why."""
        rho, s = self.top_spearman, self.top_ssim
        if self.passed:
            return msg(
                f"{self.label}: passes. With the top of the network randomized its maps keep a Spearman of "
                f"{rho:.2f} (SSIM {s:.2f}) with the original: they depend on what the network learned."
            )
        return msg(
            f"{self.label}: fails. With the top of the network randomized its maps still keep a Spearman of "
            f"{rho:.2f} (SSIM {s:.2f}): they show the image more than what the top layers learned (Adebayo et al. "
            "found the same for Guided Backprop)."
        )


@dataclass
class SanityResult:
    """The cascading randomization of one model on one image: steps, and each method's similarity curves."""

    model: str
    fingerprint: str
    image: str
    target: int
    target_name: str
    steps: list[str]  # "original", then the block randomized at each step (cumulative, from the top)
    methods: dict[str, MethodSanity]
    top_step: int = 1  # steps[top_step] is the last block of the top of the network (TOP_FRACTION of the weights)
    skipped: dict[str, str] = field(default_factory=dict)  # method → why it could not run
    seed: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per method the Spearman and SSIM after each step (mean over layers and per layer)."""
        return jsonable(
            {
                "model": self.model,
                "model_fingerprint": self.fingerprint,
                "image": self.image,
                "target": self.target,
                "target_name": self.target_name,
                "steps": self.steps,
                "randomization": "cascading, from the top; each tensor redrawn from a normal with its own mean and std",
                "compare_size": COMPARE_SIZE,
                "pass_below": PASS_BELOW,
                "top_fraction": TOP_FRACTION,
                "top_step": self.top_step,
                "top_block": self.steps[self.top_step],
                "seed": self.seed,
                "seconds": round(self.seconds, 2),
                "skipped": self.skipped,
                "methods": {
                    name: {
                        "label": m.label,
                        "spearman": m.spearman,
                        "ssim": m.ssim,
                        "top_spearman": m.top_spearman,
                        "top_ssim": m.top_ssim,
                        "final_spearman": m.final_spearman,
                        "final_ssim": m.final_ssim,
                        "passed": m.passed,
                        "verdict": m.verdict(),
                        "layers": m.layers,
                    }
                    for name, m in self.methods.items()
                },
            }
        )


# --------------------------------------------------------------------------- randomization


@dataclass(frozen=True)
class Step:
    """One step of the cascade: a ladder block, the modules holding its parameters, how many parameters."""

    block: str
    modules: tuple[str, ...]
    params: int


def randomization_steps(model: LoadedModel) -> list[Step]:
    """The blocks from the top down: the order of the cascade.

    Every module with parameters belongs to the ladder block that contains it, or else to the block before it
    (a stem's BatchNorm outside the ladder goes with the stem)."""
    rows = [r.name for r in ladder(model, "blocks") if r.name]
    if not rows:
        raise TrustError("This model has no blocks to randomize.")
    groups: dict[str, list[str]] = {r: [] for r in rows}
    counts = dict.fromkeys(rows, 0)
    current = rows[0]
    for name, mod in model.module.named_modules():
        owner = next((r for r in rows if name == r or name.startswith(r + ".")), None)
        if owner is not None:
            current = owner
        own = [p.numel() for p in mod.parameters(recurse=False)]
        if own:
            groups[owner or current].append(name)
            counts[owner or current] += sum(own)
    return [Step(r, tuple(groups[r]), counts[r]) for r in reversed(rows) if groups[r]]


def top_step(steps: Sequence[Step], fraction: float = TOP_FRACTION) -> int:
    """The step (1-based, as in a result's `steps`) after which the top blocks holding `fraction` of the
    parameters are randomized."""
    total = sum(s.params for s in steps) or 1
    seen = 0
    for i, s in enumerate(steps, 1):
        seen += s.params
        if seen >= fraction * total:
            return i
    return len(steps)


def randomize(module: nn.Module, names: Sequence[str], generator: torch.Generator) -> None:
    """Give each named submodule of `module` new parameters drawn from N(mean, std) of the old ones.

    New tensors replace the old ones (never written in place), so a module sharing them with a shared model is safe.
    """
    for name in names:
        sub = module.get_submodule(name) if name else module
        for pname, p in list(sub.named_parameters(recurse=False)):
            old = p.detach()
            if old.numel() < 2:
                continue
            flat = old.float().flatten().cpu()
            std = float(flat.std())
            noise = torch.randn(old.shape, generator=generator) * (std if np.isfinite(std) else 0.0)
            new = (noise + float(flat.mean())).to(old.device, old.dtype)
            setattr(sub, pname, nn.Parameter(new, requires_grad=False))


# --------------------------------------------------------------------------- maps


class _Scores(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return logits_of(self.inner(x))


def input_map(model: LoadedModel, x: torch.Tensor, target: torch.Tensor, method: str) -> torch.Tensor:
    """(N, H, W) input-resolution map summed over RGB: the plain gradient, or Captum's Guided Backprop."""
    xi = x.detach().clone().requires_grad_(True)
    if method == "gradient":
        with torch.enable_grad():
            logits = logits_of(model.module(xi))
            score = logits.gather(1, target.to(logits.device)[:, None]).sum()
            (grad,) = torch.autograd.grad(score, xi)
        return grad.detach().sum(1).float().cpu()
    # start-up cost: Captum takes ~0.6 s to import, paid only by the methods that run it
    from captum.attr import GuidedBackprop

    twin = _Scores(shadow(model.module, no_inplace=True, relu6_as_relu=True))
    return GuidedBackprop(twin).attribute(xi, target=target).detach().sum(1).float().cpu()


def method_maps(
    model: LoadedModel, x: torch.Tensor, target: torch.Tensor, method: str, layers: Sequence[str], **options: Any
) -> dict[str, torch.Tensor]:
    """Layer → (h, w) map of the first image for one method (input methods: one map called 'input'); `options` go
    to `explorer.attribution.attribute` (n_steps, grid, …)."""
    if method in INPUT_METHODS:
        return {INPUT_LAYER: input_map(model, x, target, method)[0]}
    res = attribute(model, x, list(layers), method, target, **options)
    return {n: res.maps[n][0] for n in res.layers}


# --------------------------------------------------------------------------- the check


def method_problems(model: LoadedModel, methods: Sequence[str]) -> dict[str, str]:
    """Method → why it cannot run on this network (unknown names raise)."""
    out = {}
    for m in methods:
        if m in INPUT_METHODS:
            why = method_problem(model, "guided_gradcam") if m == "guided_backprop" else None
        elif m in METHODS:
            why = method_problem(model, m)
        else:
            known = ", ".join([*INPUT_METHODS, *METHODS])
            raise TrustError(f"Unknown attribution method {m!r}; choose from: {known}.")
        if why:
            out[m] = why
    return out


def sanity_cost(
    model: LoadedModel, methods: Sequence[str] = DEFAULT_METHODS, layers: str | Sequence[str] = "all", **options: Any
) -> int:
    """Passes through the network (forward and backward counted alike) the check will make."""
    steps = len(randomization_steps(model)) + 1
    per_step = 0
    for m in methods:
        if m in INPUT_METHODS:
            per_step += 2
        else:
            c = method_cost(model, 1, layers, m, 0, **options)
            per_step += c.forward_calls + c.backward_calls if c.available else 0
    return steps * per_step


def sanity_check(
    model: LoadedModel,
    image: Any,
    methods: Sequence[str] = DEFAULT_METHODS,
    layers: str | Sequence[str] = "all",
    target: Any = None,
    *,
    seed: int = 0,
    size: int = COMPARE_SIZE,
    progress: Progress | None = None,
    **options: Any,
) -> SanityResult:
    """Cascading randomization of `model` (a private copy) on one image; see the module docstring.

    `methods`: names from `INPUT_METHODS` and `explorer.attribution.METHODS`; `layers`: the layers of the layer
    methods ('all': every block with a spatial map). `target`: the class explained (default: the prediction).
    `options` go to the layer methods (`explorer.attribution.attribute`: n_steps, grid, …).
    """
    started = time.perf_counter()
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise TrustError("Choose at least one attribution method.")
    skipped = method_problems(model, methods)
    runnable = [m for m in methods if m not in skipped]
    if not runnable:
        raise TrustError(next(iter(skipped.values())))
    names = [r.name for r in resolve_layers(model, layers)]
    x, _ = prepare(model, image)
    with torch.no_grad():
        logits = logits_of(model.module(x)).detach()
    tgt = resolve_target(model, target, 1, logits).to(x.device)
    steps = randomization_steps(model)
    top = top_step(steps)
    twin = dataclasses.replace(model, module=shadow(model.module), fingerprint=f"{model.fingerprint}:randomized")
    gen = torch.Generator().manual_seed(seed)
    total, done = (len(steps) + 1) * len(runnable), 0
    originals: dict[str, dict[str, torch.Tensor]] = {}
    curves: dict[str, dict[str, dict[str, list[float]]]] = {m: {} for m in runnable}
    for step, (block, modules) in enumerate([(ORIGINAL, ()), *((st.block, st.modules) for st in steps)]):
        if modules:
            randomize(twin.module, modules, gen)
        for m in runnable:
            maps = method_maps(twin, x, tgt, m, names, **options)
            if step == 0:
                originals[m] = maps
            for layer, now in maps.items():
                rho, structural = similarity(originals[m][layer], now, size)
                rec = curves[m].setdefault(layer, {"spearman": [], "ssim": []})
                rec["spearman"].append(rho)
                rec["ssim"].append(structural)
            done += 1
            if progress:
                progress(done, total, {"phase": "sanity", "step": block, "method": m})
    results = {}
    for m in runnable:
        per_layer = curves[m]
        mean_rho = nan_mean([v["spearman"] for v in per_layer.values()])
        mean_ss = nan_mean([v["ssim"] for v in per_layer.values()])
        results[m] = MethodSanity(
            m, method_label(m), per_layer, [float(v) for v in mean_rho], [float(v) for v in mean_ss], top
        )
    name = str(image) if isinstance(image, (str,)) or hasattr(image, "__fspath__") else "image"
    t = int(tgt[0])
    return SanityResult(
        model=model.spec,
        fingerprint=model.fingerprint,
        image=name,
        target=t,
        target_name=model.class_names[t] if t < len(model.class_names) else str(t),
        steps=[ORIGINAL, *(st.block for st in steps)],
        methods=results,
        top_step=top,
        skipped=skipped,
        seed=seed,
        seconds=time.perf_counter() - started,
    )
