"""Train the linear route's classifier for real: the frozen network's pooled output at a point, a standardised
logistic regression on every image of the user's data, saved in the layout of the code the Compare page shows
(:func:`~explorer.transfer.sweeping.prefix.feature_extractor_code`: ``norm`` running statistics and ``linear``
weights), so
``classifier.load_state_dict(load_file("classifier.safetensors"), strict=False)`` makes that code predict at once.

Its accuracy is the stratified 5-fold cross-validated accuracy of the same classifier on the same features: images
each fold's classifier never saw.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save
from torch.utils.data import DataLoader, Dataset

from explorer.data import TransformedView, eval_transform, open_dataset
from explorer.errors import ExplorerError
from explorer.layers import check_input_size
from explorer.models import LoadedModel
from explorer.runtime import Progress
from explorer.transfer.comparison.probes import linear_classifier, linear_probe
from explorer.transfer.sweeping.prefix import compute_prefix, prefix_layer
from explorer.transfer.training.heldout import file_list_sha256, labels_of

FORMAT = "layer_explorer.linear_head/1"


@dataclass
class TrainedClassifier:
    """The fitted classifier's tensors (the page's code's names), what it belongs to, and its measured accuracy."""

    tensors: dict[str, torch.Tensor]
    metadata: dict[str, Any]
    accuracy: float  # 5-fold cross-validated, on images each fold never trained on
    images: int
    classes: list[str] = field(default_factory=list)

    def to_bytes(self) -> bytes:
        """The classifier as a safetensors file (tensors, and the metadata as one JSON string)."""
        return save({k: v.contiguous() for k, v in self.tensors.items()}, {"layer_explorer": json.dumps(self.metadata)})


def train_classifier(
    model: LoadedModel,
    data: str | Path | Dataset,
    point: str,
    *,
    input_size: int | None = None,
    batch_size: int = 64,
    progress: Progress | None = None,
) -> TrainedClassifier:
    """Fit the linear classifier on `point`'s pooled features of every image of `data`; one sentence if it cannot."""
    dataset = open_dataset(data)
    labels = labels_of(dataset)
    classes = list(getattr(dataset, "classes", []))
    if len(classes) < 2 or len(labels) < 2 * len(classes):
        raise ExplorerError("Training a classifier needs at least two classes with two images each.")
    size = input_size or model.input_size[0]
    check_input_size(model, (size, size))
    layer = prefix_layer(model.module, point, model.input_size)
    indices = list(range(len(labels)))
    view = TransformedView(dataset, indices, eval_transform(model, size)[0])
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress:
            progress(done[0], len(indices), {"phase": "features"})

    loader = DataLoader(view, batch_size=batch_size, shuffle=False)
    cache = compute_prefix(
        model.module, loader, indices, {point: layer}, keep=[], keep_inputs=False, device=model.device, on_batch=tick
    )
    x = cache.pooled[point].numpy().astype(np.float32)
    y = cache.labels.numpy()
    probe = linear_probe(x, y, folds=5, seed=0)
    clf = linear_classifier()
    clf.fit(x, y)
    scaler, logistic = clf[0], clf[-1]
    coef, intercept = np.asarray(logistic.coef_), np.asarray(logistic.intercept_)
    if coef.shape[0] == 1:  # two classes: scikit-learn keeps one row; as softmax logits, [−z/2, z/2]
        coef, intercept = np.vstack([-coef / 2, coef / 2]), np.array([-intercept[0] / 2, intercept[0] / 2])
    tensors = {
        "norm.running_mean": torch.as_tensor(scaler.mean_, dtype=torch.float32),
        "norm.running_var": torch.as_tensor(scaler.var_, dtype=torch.float32),
        "linear.weight": torch.as_tensor(coef, dtype=torch.float32),
        "linear.bias": torch.as_tensor(intercept, dtype=torch.float32),
    }
    meta = {
        "format": FORMAT,
        "base_spec": model.spec,
        "base_fingerprint": model.fingerprint,
        "point": point,
        "layer": layer,
        "input_size": size,
        "classes": classes,
        "images": len(indices),
        "data_sha256": file_list_sha256(dataset),
        "cv_accuracy": probe.accuracy if probe else None,
    }
    return TrainedClassifier(tensors, meta, probe.accuracy if probe else float("nan"), len(indices), classes)
