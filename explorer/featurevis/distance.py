"""How different a group of images is in a layer's eyes: the check behind the Unit page's four diversity images.

(Named `distance`, not `diversity`: a submodule `featurevis.diversity` would replace the package's public
`diversity` objective constructor as an attribute of `explorer.featurevis` once imported.)

`feature_distance` runs the images through the model up to `layer` and returns the mean pairwise cosine distance
(1 − cosine similarity) of their spatially pooled activations: each image becomes one vector of C numbers (the mean
of every channel over the positions), and two images at distance 0 excite the layer's channels in the same
proportions, two at distance 1 excite disjoint (orthogonal) sets. This is the layer-level view of what the
diversity objective (`objectives.Diversity`) pushes apart; `kind="gram"` measures exactly its quantity instead,
the cosine distance of the images' Gram matrices (channel co-activations, "style").

`NEAR_IDENTICAL` is the distance below which the page calls a group near-identical. Measured on the bundled
EfficientNet-Lite0 with the fast preset (seeds 0 and 1), four renders of the channel objective alone (a batch of
four random starts, no diversity term) lie 0.007–0.010 apart at blocks.3.0 unit 5, 0.005–0.007 at blocks.0.0
unit 3 and 0.061–0.063 at blocks.5.0 unit 7; with the Unit page's diversity term (weight 10) the same units' groups
lie 0.39–0.40, 0.27–0.28 and 0.32–0.33 apart. 0.1 is above every group without the term and under half of the
smallest with it: a group below it is about as varied as random restarts alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from explorer.errors import ExplorerError
from explorer.layers import forward_until, layout_of, to_nchw

NEAR_IDENTICAL = 0.1  # mean pairwise pooled cosine distance below which the images count as near-identical
KINDS = ("pooled", "gram")


@dataclass(frozen=True)
class Diversity:
    """The pairwise feature distances of a group of images at one layer."""

    layer: str
    kind: str
    pairwise: np.ndarray  # (N, N) symmetric, zero diagonal

    @property
    def mean(self) -> float:
        """The mean over the distinct pairs (0 for fewer than two images)."""
        n = self.pairwise.shape[0]
        if n < 2:
            return 0.0
        return float(self.pairwise[np.triu_indices(n, 1)].mean())

    @property
    def near_identical(self) -> bool:
        """True when the group is no more varied than re-rolling the seed (see `NEAR_IDENTICAL`)."""
        return self.mean < NEAR_IDENTICAL


def pairwise_cosine_distance(features: torch.Tensor) -> np.ndarray:
    """1 − cosine similarity between the rows of an (N, D) tensor, as an (N, N) array with a zero diagonal."""
    f = F.normalize(features.detach().double().flatten(1), dim=1)
    d = (1.0 - f @ f.T).clamp_min(0.0).cpu().numpy()
    np.fill_diagonal(d, 0.0)
    return d


def _batch(model: Any, images: Sequence[Any]) -> torch.Tensor:
    """(H, W, 3) uint8 arrays or PIL images → one normalised batch at the model's input size."""
    ims = []
    for im in images:
        if isinstance(im, Image.Image):
            ims.append(im.convert("RGB"))
            continue
        arr = np.asarray(im)
        if arr.ndim != 3 or arr.shape[-1] != 3:
            raise ExplorerError(f"An image must be (height, width, 3), not {tuple(arr.shape)}.")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float64), 0.0, 1.0) * 255.0).round().astype(np.uint8)
        ims.append(Image.fromarray(arr))
    size = (model.input_size[1], model.input_size[0])
    x = torch.stack([model.to_tensor01(im.resize(size, Image.Resampling.BICUBIC)) for im in ims])
    return model.normalize(x.to(model.device))


@torch.no_grad()
def feature_distance(model: Any, images: Sequence[Any], layer: str, kind: str = "pooled") -> Diversity:
    """Pairwise feature distances of `images` at `layer` of `model` (a LoadedModel).

    `images`: (H, W, 3) uint8 arrays (or floats in [0, 1]) or PIL images; each is resized to the model's input.
    `kind`: "pooled" (cosine distance of the spatially pooled activations) or "gram" (of the Gram matrices).
    """
    if kind not in KINDS:
        raise ExplorerError(f"Unknown distance {kind!r}: use one of {', '.join(KINDS)}.")
    if len(images) == 0:
        raise ExplorerError("No images to compare.")
    x = _batch(model, images)
    was_training = model.module.training
    model.module.eval()
    try:
        acts = to_nchw(forward_until(model.module, layer, x).float(), layout_of(model, layer))
    finally:
        model.module.train(was_training)
    if kind == "pooled":
        feats = acts.mean(dim=(2, 3))
    else:
        flat = acts.flatten(2)  # (N, C, HW)
        feats = (flat @ flat.transpose(1, 2)).flatten(1)
    return Diversity(layer, kind, pairwise_cosine_distance(feats))
