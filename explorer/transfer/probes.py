"""Linear probes: how well a frozen layer's features separate the user's classes.

The lecture's "pretrained network as a feature extractor + linear classifier" route, layer by layer (and
Head2Toe's observation that middle layers can rival fine-tuning): standardised pooled features, a multinomial
logistic regression, k-fold stratified cross-validation. Accuracy far above chance at a layer means the
pretrained features there already carry what the task needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class ProbeResult:
    """Cross-validated accuracy of a linear classifier on one layer's features."""

    accuracy: float
    std: float  # across folds
    folds: int
    chance: float  # majority-class rate: what a constant guess scores
    features: int


def chance_level(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most common class."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum()) if counts.size else float("nan")


def linear_probe(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, c: float = 0.5, max_iter: int = 300, seed: int = 0
) -> ProbeResult | None:
    """Stratified k-fold accuracy of StandardScaler + LogisticRegression; None if a class has < 2 examples."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2 or len(np.unique(y)) < 2:
        return None
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    cv = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few hundred iterations rank layers reliably
        scores = cross_val_score(clf, x, y, cv=cv, n_jobs=1)
    return ProbeResult(float(scores.mean()), float(scores.std()), k, chance_level(y), int(x.shape[1]))


def probe_layers(
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    *,
    folds: int = 5,
    seed: int = 0,
    progress: Callable[[int, int, Any], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, ProbeResult | None]:
    """A probe per layer (same folds for every layer, so the accuracies compare)."""
    out: dict[str, ProbeResult | None] = {}
    for i, (name, x) in enumerate(features.items()):
        if should_stop is not None and should_stop():
            break
        out[name] = linear_probe(x, labels, folds=folds, seed=seed)
        if progress:
            res = out[name]
            progress(i + 1, len(features), {"phase": "probe", "layer": name, "acc": res.accuracy if res else None})
    return out
