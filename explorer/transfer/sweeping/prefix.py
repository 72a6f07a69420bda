"""The frozen prefix, computed once: what makes a freeze sweep cheap.

A model frozen after L computes the same output of L for an image in every epoch (the frozen modules run in eval
mode; with no augmentation the input is the same too). So a sweep runs the base model once over every image,
keeps the output of each candidate point (:func:`prefix_outputs`: one forward pass for all points), and trains
each point's *suffix* on those outputs: :func:`cut_model` returns a copy of a network in which every module that
finishes before the point's output exists is replaced by an identity, so feeding it the cached output runs only
the layers after the point. The cut is checked against the full network on real images (:func:`check_cut`);
a network whose forward does something between the blocks that a cut would skip fails that check, and the sweep
then trains that point on images instead.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from explorer.errors import msg
from explorer.layers import execution_order, forward_hooks, forward_until
from explorer.models import logits_of
from explorer.models.freeze import cut_position, module_and_size
from explorer.transfer.comparison.pooling import gap_features

CACHE_BUDGET_BYTES = 1_500_000_000  # prefix outputs kept in memory at most (float32); points beyond it run on images


def cut_index(module: nn.Module, point: str, order: list[str]) -> int:
    """Position in execution order of the frozen prefix's last module: the point, or its own BatchNorm/activation
    right after it (which a freeze at the point also freezes, see :func:`explorer.models.freeze.cut_position`)."""
    return cut_position(module, point, order)


def prefix_layer(module: nn.Module, point: str, size: tuple[int, int]) -> str:
    """The module whose output the suffix after `point` reads (the point itself or its trailing norm/activation)."""
    order = execution_order(module, size)
    return order[cut_index(module, point, order)]


def _prefix_roots(order: list[str], cut: int) -> list[str]:
    """The largest subtrees that finish by position `cut`: replacing them skips exactly the prefix."""
    done = set(order[: cut + 1])
    return [n for n in order[: cut + 1] if not any(a in done for a in _ancestors(n))]


def _ancestors(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def cut_model(module: nn.Module, point: str, size: tuple[int, int]) -> nn.Module:
    """`module` (modified in place: pass a copy you own) with the prefix up to `point` replaced by identities."""
    order = execution_order(module, size)
    for name in _prefix_roots(order, cut_index(module, point, order)):
        parent, _, child = name.rpartition(".")
        owner = module.get_submodule(parent) if parent else module
        if child.isdigit() and isinstance(owner, (nn.Sequential, nn.ModuleList)):
            owner[int(child)] = nn.Identity()
        else:
            setattr(owner, child, nn.Identity())
    return module


@torch.no_grad()
def check_cut(full: nn.Module, cut: nn.Module, layer: str, x: torch.Tensor) -> bool:
    """Whether `cut` fed `layer`'s output reproduces `full` on `x` (both in eval mode, same weights after the cut)."""
    full.eval()
    cut.eval()
    try:
        feats: dict[str, torch.Tensor] = {}

        def keep(n: str, _m: nn.Module, out: Any) -> None:
            feats.setdefault(n, out.detach().clone())

        with forward_hooks(full, {layer: keep}):
            want = logits_of(full(x)).float()
        got = logits_of(cut(feats[layer])).float()
    except Exception:  # a forward that cannot run from the cut (shapes, functional code between blocks)
        return False
    return got.shape == want.shape and bool(torch.allclose(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max())))


@dataclass
class PrefixCache:
    """One pass of the base model over a set of images: per point its pooled features (always) and its whole
    output (when the memory budget allows), plus the preprocessed input images; rows follow `rows`."""

    rows: dict[int, int]  # dataset index → row
    labels: torch.Tensor
    pooled: dict[str, torch.Tensor]  # point → (N, C) global-average-pooled output, for the linear route
    outputs: dict[str, torch.Tensor]  # point → (N, ...) output the suffix reads
    inputs: torch.Tensor | None  # (N, 3, S, S) normalised images, or None when over the budget
    skipped: dict[str, str]  # point → why its output is not kept

    def take(self, tensor: torch.Tensor, indices: Iterable[int]) -> torch.Tensor:
        """The rows of `tensor` for these dataset indices."""
        return tensor[torch.as_tensor([self.rows[i] for i in indices], dtype=torch.long)]


def bytes_per_image(module: nn.Module, layers: dict[str, str], x: torch.Tensor) -> dict[str, int]:
    """Bytes (float32) each point's kept output takes per image, measured on one probe batch."""
    shapes: dict[str, tuple[int, ...]] = {}

    def shape(n: str, _m: nn.Module, out: Any) -> None:
        shapes.setdefault(n, tuple(out.shape[1:]))

    with torch.no_grad(), forward_hooks(module, dict.fromkeys(set(layers.values()), shape)):
        module.eval()(x[:1])
    sizes = {}
    for point, m in layers.items():
        numel = 1
        for d in shapes[m]:
            numel *= d
        sizes[point] = 4 * numel
    return sizes


def keep_plan(sizes: dict[str, int], n: int, input_bytes: int, budget: int) -> tuple[list[str], bool, dict[str, str]]:
    """Which point outputs (smallest first) and whether the inputs fit in `budget` bytes for `n` images."""
    kept, used, skipped = [], 0, {}
    for point, size in sorted(sizes.items(), key=lambda kv: kv[1]):
        if used + size * n <= budget:
            kept.append(point)
            used += size * n
        else:
            skipped[point] = msg(f"its output for {n} images ({size * n / 2**20:.0f} MiB) is over the memory budget")
    return kept, used + input_bytes * n <= budget, skipped


@torch.no_grad()
def compute_prefix(
    module: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    indices: list[int],
    layers: dict[str, str],
    *,
    keep: list[str],
    keep_inputs: bool,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> PrefixCache:
    """Run `module` (eval) once over `batches` (the images of `indices`, in order), keeping what the sweep reads."""
    module.eval()
    pooled: dict[str, list[torch.Tensor]] = {p: [] for p in layers}
    outputs: dict[str, list[torch.Tensor]] = {p: [] for p in keep}
    inputs, labels = [], []
    by_layer: dict[str, list[str]] = {}
    for point, layer in layers.items():
        by_layer.setdefault(layer, []).append(point)
    for x, y in batches:
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        seen = forward_until(module, list(by_layer), x) if by_layer else {}
        for layer, points in by_layer.items():
            for p in points:
                pooled[p].append(gap_features(seen[layer]))
                if p in outputs:
                    outputs[p].append(seen[layer].detach().float().contiguous().cpu())
        if keep_inputs:
            inputs.append(x.float().contiguous().cpu())
        labels.append(y)
        if on_batch:
            on_batch(len(y))
    return PrefixCache(
        rows={i: r for r, i in enumerate(indices)},
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        pooled={p: torch.cat(v) for p, v in pooled.items() if v},
        outputs={p: torch.cat(v) for p, v in outputs.items() if v},
        inputs=torch.cat(inputs) if inputs else None,
        skipped={},
    )


def linear_route_code(model: Any, point: str, *, var: str = "model") -> str:
    """Plain PyTorch + scikit-learn for the linear route a sweep measures: the frozen network's output at `point`,
    averaged over positions, as the features of a standardised logistic regression."""
    module, size = module_and_size(model)
    layer = prefix_layer(module, point, size)
    return f'''import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

# The feature-extractor route: the pretrained network stays frozen (eval mode); the output of {layer!r}
# (the freeze point {point!r}), averaged over positions, feeds a linear classifier.
{var}.eval()
_kept = {{}}
_handle = {var}.get_submodule({layer!r}).register_forward_hook(lambda m, i, out: _kept.__setitem__("x", out))


@torch.no_grad()
def features(images: torch.Tensor) -> np.ndarray:
    """Pooled features of a batch of normalised images (N, 3, H, W)."""
    {var}(images)
    x = _kept["x"]
    return (x.mean((2, 3)) if x.dim() == 4 else x.flatten(1)).float().cpu().numpy()


classifier = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=300))
# classifier.fit(features(train_images), train_labels)
# predictions = classifier.predict(features(new_images))
'''


def feature_extractor_code(model: Any, point: str, num_classes: int | None, *, var: str = "model") -> str:
    """Plain PyTorch for the linear route as a network: the pretrained model frozen up to `point`, its output there
    averaged over positions, and one trainable ``nn.Linear`` on it (the parameters the sweep counted)."""
    module, size = module_and_size(model)
    layer = prefix_layer(module, point, size)
    k = num_classes or "NUM_CLASSES"
    return f"""import torch
from torch import nn

# The feature-extractor route: every pretrained weight stays frozen (eval mode, no gradients); the output of
# {layer!r} (the freeze point {point!r}), averaged over positions, feeds one trainable nn.Linear.
{var}.eval().requires_grad_(False)
_kept = {{}}
{var}.get_submodule({layer!r}).register_forward_hook(lambda m, i, out: _kept.__setitem__("x", out))


class FrozenFeaturesClassifier(nn.Module):
    def __init__(self, backbone: nn.Module, channels: int, num_classes: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.norm = nn.BatchNorm1d(channels, affine=False)  # standardised features, as the sweep measured
        self.linear = nn.Linear(channels, num_classes)  # the only trainable parameters

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            self.backbone(images)
            x = _kept["x"]
            x = x.mean((2, 3)) if x.dim() == 4 else x.flatten(1)
        return self.linear(self.norm(x.float()))


with torch.no_grad():
    {var}(torch.zeros(1, 3, {size[0]}, {size[1]}))
channels = (_kept["x"].shape[1] if _kept["x"].dim() == 4 else _kept["x"].flatten(1).shape[1])
classifier = FrozenFeaturesClassifier({var}, channels, {k})
optimizer = torch.optim.AdamW(classifier.linear.parameters(), lr=3e-3, weight_decay=0.01)
# for images, labels in train_loader:
#     loss = nn.functional.cross_entropy(classifier(images), labels)
#     optimizer.zero_grad(); loss.backward(); optimizer.step()
"""
