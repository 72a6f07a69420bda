"""Linear probes: how well a frozen layer's features separate the user's classes.

The classic "pretrained network as a feature extractor + linear classifier" route, layer by layer (and
Head2Toe's observation that middle layers can rival fine-tuning): standardised pooled features, a multinomial
logistic regression, k-fold stratified cross-validation. Accuracy far above chance at a layer means the
pretrained features there already carry what the task needs.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no type information


@dataclass
class ProbeResult:
    """Cross-validated accuracy of a linear classifier on one layer's features."""

    accuracy: float
    std: float  # across folds
    folds: int
    chance: float  # majority-class rate: what a constant guess scores
    features: int
    correct: list[bool] = field(default_factory=list, repr=False)  # per image, predicted by the fold that held it out


def chance_level(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most common class."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64))
    return float(counts.max() / counts.sum()) if counts.size else float("nan")


def linear_classifier(c: float = 0.5, max_iter: int = 300) -> Any:
    """The linear classifier of every probe and of the sweep's linear route: standardised features, L2-regularised
    multinomial logistic regression."""
    # start-up cost: scikit-learn takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))


def fit_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, *, c: float = 0.5) -> np.ndarray:
    """Train the linear classifier on one set of features and predict the classes of another.

    One BLAS thread: these problems are small (thousands of images × at most a few thousand features), and on a
    busy machine BLAS threads waiting for each other made the same fit take from 0.6 s to 3 s.
    """
    # start-up cost: scikit-learn takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from sklearn.exceptions import ConvergenceWarning

    clf = linear_classifier(c)
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)  # a few hundred iterations rank layers reliably
        clf.fit(np.asarray(train_x, dtype=np.float32).reshape(len(train_x), -1), np.asarray(train_y))
    return np.asarray(clf.predict(np.asarray(test_x, dtype=np.float32).reshape(len(test_x), -1)))


def linear_probe(
    features: np.ndarray, labels: np.ndarray, *, folds: int = 5, c: float = 0.5, seed: int = 0
) -> ProbeResult | None:
    """Stratified k-fold accuracy of the linear classifier; None if a class has < 2 examples."""
    # start-up cost: scikit-learn takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from sklearn.model_selection import StratifiedKFold

    x = np.asarray(features, dtype=np.float32).reshape(len(features), -1)
    y = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2 or len(np.unique(y)) < 2:
        return None
    correct = np.zeros(len(y), dtype=bool)
    scores = []
    for tr, te in StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(x, y):
        correct[te] = fit_predict(x[tr], y[tr], x[te], c=c) == y[te]
        scores.append(float(correct[te].mean()))
    return ProbeResult(
        float(correct.mean()), float(np.std(scores)), k, chance_level(y), int(x.shape[1]), correct.tolist()
    )


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
