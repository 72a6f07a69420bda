"""Where to freeze, predicted before any training: per-layer transferability scores from one pass of the base model.

The sweep (:mod:`explorer.transfer.sweeping.sweep`) *measures* each freeze option and costs minutes to hours; this
module
*predicts* one in seconds. One streamed pass of the base model over a stratified sample of the user's images keeps
the global-average-pooled output of every candidate point (the sweep's own points, :func:`auto_points`, read at the
same modules, :func:`prefix_layer`, by the same pass, :func:`compute_prefix`), and each estimator scores each point:

- ``probe``: k-fold cross-validated accuracy of the sweep's own linear classifier (:func:`linear_probe`);
- ``logme``: LogME (You et al. 2021), the log maximum evidence of a Bayesian linear model from the features to each
  one-hot class column, per image, averaged over classes: no training, no folds;
- ``knn``: leave-one-out accuracy of a k-nearest-neighbour vote (cosine similarity of standardised features);
- ``centroid``: k-fold accuracy of a nearest-class-mean classifier on standardised features;
- ``fisher``: Fisher's ratio of between-class to within-class scatter (traces) of the standardised features.

The same pass also keeps the raw input image pooled to 8 × 8 (the *pixel baseline*), which each estimator scores
too: how much the pretrained features add over pixels. The predicted option follows one rule for every estimator
(:func:`predict_option`): a linear classifier on the point the estimator scores highest (fine-tuning after it with
lots of data, the 2×2 guide of DESIGN §6). An optional *pixel check* (train every layer when the raw pixels beat
the pretrained features at some point) is off by default (:data:`PIXEL_CHECK`): it did not measure better.
Which estimator the app uses (:data:`DEFAULT_ESTIMATOR`) is set from the measured comparison with full sweeps,
``benchmarks/bench_predict.py`` (docs/science.md §5), not assumed.

The sample is the training part of the sweep's split (same seed, held-out fraction and `max_images`): the images a
sweep with the same settings measures on are never seen here, so scoring a prediction against that sweep is honest.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]  # ships no type information
from torch.utils.data import DataLoader, Dataset

from explorer.data import TransformedView, eval_transform, stratified_subset
from explorer.errors import ExplorerError, msg
from explorer.layers import check_input_size, execution_order
from explorer.models import LoadedModel
from explorer.runtime import Progress, StopSignal, stop_requested
from explorer.transfer.comparison.probes import chance_level, linear_probe
from explorer.transfer.reporting.figures import Figure
from explorer.transfer.sweeping.prefix import compute_prefix, cut_index
from explorer.transfer.sweeping.sweep import default_input_size
from explorer.transfer.sweeping.sweep_tasks import NONE, auto_points
from explorer.transfer.training.finetune import training_data
from explorer.transfer.training.heldout import labels_of
from explorer.transfer.training.settings import FinetuneSettings

FORMAT = "layer_explorer.predict/1"
ESTIMATORS = ("probe", "logme", "knn", "centroid", "fisher")
# Set from the measured table (benchmarks/bench_predict.py → benchmarks/results/predict.json, docs/science.md §5):
# over 26 (data set, split) cases the nearest-centroid rule's option was within 2 points of the best measured option
# 25 times; the pixel check made centroid and probe worse (24 and 23 of 26), logme and fisher better, none the best.
DEFAULT_ESTIMATOR = "centroid"
MEASURED_WITHIN, MEASURED_CASES = 25, 26  # what the app says of DEFAULT_ESTIMATOR: within the margin in 25 of 26
PIXEL_CHECK = False
ACCURACY_ESTIMATORS = ("probe", "knn", "centroid")  # scores that are accuracies (chance … 1)
SAMPLE = 1000  # images scored at most (a stratified sample of the split's training part): a stable ranking in < 60 s
FOLDS = 5
KNN_K = 10
PIXEL_GRID = 8  # the raw-pixel baseline: the normalised input image average-pooled to 8 × 8 (× 3 colours)
PIXELS = "pixels"  # its key among the scored features
CHANCE_MARGIN = 0.05  # an accuracy estimator's best score must beat chance by this much, or the prediction is weak
FINETUNE_PER_CLASS = 1000  # DESIGN §6's "lots of data → fine-tune more"; not reached by the measured table
BATCH = 64


class PredictError(ExplorerError):
    """A prediction that cannot be made as asked, in one sentence."""


# --------------------------------------------------------------------------- the estimators (numpy, no training loop)


def _xy(features: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    y = np.asarray(labels, dtype=np.int64)
    if len(x) != len(y):
        raise PredictError(f"{len(x)} feature rows for {len(y)} labels.")
    return x, y


def _standardise(x: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per feature (a constant feature stays 0)."""
    sd = x.std(0)
    return (x - x.mean(0)) / np.where(sd > 1e-12, sd, 1.0)


def spectrum(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(U, σ): the left singular vectors of F (n × d) and its squared singular values, σ > 0 only, from the
    eigendecomposition of the smaller Gram matrix (FFᵀ or FᵀF: half the work of an SVD when d ≈ n)."""
    x = np.asarray(features, dtype=np.float64).reshape(len(features), -1)
    n, d = x.shape
    if d >= n:
        sigma, u = np.linalg.eigh(x @ x.T)
    else:
        sigma, v = np.linalg.eigh(x.T @ x)
    keep = sigma > sigma.max(initial=0.0) * 1e-12
    sigma = sigma[keep]
    if d < n:
        u = (x @ v[:, keep]) / np.sqrt(sigma)
    else:
        u = u[:, keep]
    return u, sigma


def log_evidence(features: np.ndarray, target: np.ndarray, alpha: float, beta: float) -> float:
    """ln p(t | F, α, β) of Bayesian linear regression t = Fw + ε, w ~ N(0, α⁻¹I), ε ~ N(0, β⁻¹I): the log density
    of t under N(0, β⁻¹I + α⁻¹FFᵀ) (Bishop, PRML eq. 3.86), computed in the singular basis of F (stable as β → ∞)."""
    u, sigma = spectrum(features)
    t = np.asarray(target, dtype=np.float64)
    return _evidence(sigma, u.T @ t, float(t @ t), len(t), alpha, beta)


def _evidence(sigma: np.ndarray, z: np.ndarray, tt: float, n: int, alpha: float, beta: float) -> float:
    """:func:`log_evidence` from F's squared singular values `sigma`, z = Uᵀt and tᵀt: the covariance has eigenvalues
    1/β + σᵢ/α along F's singular directions and 1/β across the n − r others."""
    var = 1.0 / beta + sigma / alpha
    outside = max(tt - float(z @ z), 0.0)
    r = len(sigma)
    quad = float((z**2 / var).sum()) + beta * outside
    logdet = float(np.log(var).sum()) - (n - r) * np.log(beta)
    return -0.5 * (logdet + quad + n * np.log(2 * np.pi))


def max_evidence(
    features: np.ndarray, target: np.ndarray, *, iterations: int = 200, tol: float = 1e-7
) -> tuple[float, float, float]:
    """(ln p(t | F, α*, β*), α*, β*): the evidence maximised over the prior precision α and noise precision β by
    MacKay's fixed point (Bishop, PRML §3.5.2) in F's singular basis: with λ = α/β, γ = Σ σᵢ/(λ + σᵢ),
    ‖m‖² = Σ σᵢzᵢ²/(λ + σᵢ)², ‖t − Fm‖² = Σ (λzᵢ/(λ + σᵢ))² + (tᵀt − zᵀz); α ← γ/‖m‖², β ← (n − γ)/‖t − Fm‖².

    With at least as many independent features as images the features can fit t exactly and the evidence may
    grow towards β = ∞ (no noise); λ is then held at 1e-10 of the largest σ, close to that limit.
    """
    u, sigma = spectrum(features)
    t = np.asarray(target, dtype=np.float64)
    return _max_evidence(sigma, u.T @ t, float(t @ t), len(t), iterations=iterations, tol=tol)


def _max_evidence(
    sigma: np.ndarray, z: np.ndarray, tt: float, n: int, *, iterations: int, tol: float
) -> tuple[float, float, float]:
    outside = max(tt - float(z @ z), 0.0)
    floor = 1e-10 * float(sigma.max(initial=1.0))
    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        lam = max(alpha / beta, floor)
        gamma = float((sigma / (lam + sigma)).sum())
        m2 = float((sigma * z**2 / (lam + sigma) ** 2).sum())
        r2 = float(((lam * z / (lam + sigma)) ** 2).sum()) + outside
        new_alpha = gamma / m2 if m2 > 0 else 1e10
        new_beta = (n - gamma) / r2 if r2 > 0 and n > gamma else new_alpha / floor
        new_beta = min(new_beta, new_alpha / floor)
        done = abs(np.log(new_alpha / alpha)) < tol and abs(np.log(new_beta / beta)) < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    return _evidence(sigma, z, tt, n, alpha, beta), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., ICML 2021): the maximum log evidence per image of a Bayesian linear regression from the
    features to each one-hot class column (:func:`max_evidence`), averaged over classes. No training, no folds;
    invariant to a global scale of the features (absorbed by α). Higher is better."""
    x, y = _xy(features, labels)
    u, sigma = spectrum(x)
    values = []
    for k in np.unique(y):
        t = (y == k).astype(np.float64)
        values.append(_max_evidence(sigma, u.T @ t, float(t @ t), len(t), iterations=200, tol=1e-7)[0] / len(t))
    return float(np.mean(values))


def fisher_ratio(features: np.ndarray, labels: np.ndarray) -> float:
    """tr(S_between) / tr(S_within) of the standardised features: how far apart the class means are against how
    spread each class is (0: class means coincide). Higher is better."""
    x, y = _xy(features, labels)
    x = _standardise(x)
    between = within = 0.0
    for k in np.unique(y):
        xk = x[y == k]
        mu = xk.mean(0)
        between += len(xk) * float(mu @ mu)  # the overall mean is 0 after standardising
        within += float(((xk - mu) ** 2).sum())
    return between / within if within > 0 else float("inf")


def knn_accuracy(features: np.ndarray, labels: np.ndarray, *, k: int = KNN_K) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour majority vote (cosine similarity of standardised features;
    ties go to the nearest neighbour's class)."""
    x, y = _xy(features, labels)
    x = _standardise(x)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)  # leave the image itself out
    k = max(1, min(k, len(y) - 1))
    nearest = np.argsort(-sim, axis=1, kind="stable")[:, :k]
    votes = np.zeros((len(y), int(y.max()) + 1))
    for j in range(k):
        np.add.at(votes, (np.arange(len(y)), y[nearest[:, j]]), 1.0 + 1e-6 * (k - j))  # nearer breaks ties
    return float((votes.argmax(1) == y).mean())


def _folds(y: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    # start-up cost: scikit-learn takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y)
    k = int(min(folds, counts[counts > 0].min()))
    if k < 2:
        raise PredictError("Every class needs at least two images in the sample to score a layer.")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def centroid_accuracy(features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> float:
    """Stratified k-fold accuracy of the nearest class mean (Euclidean, features standardised on each fold's
    training part)."""
    x, y = _xy(features, labels)
    correct = np.zeros(len(y), dtype=bool)
    for tr, te in _folds(y, folds, seed):
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd = np.where(sd > 1e-12, sd, 1.0)
        a, b = (x[tr] - mu) / sd, (x[te] - mu) / sd
        classes = np.unique(y[tr])
        means = np.stack([a[y[tr] == c].mean(0) for c in classes])
        dist = (b**2).sum(1)[:, None] - 2 * b @ means.T + (means**2).sum(1)[None, :]
        correct[te] = classes[dist.argmin(1)] == y[te]
    return float(correct.mean())


def probe_accuracy(features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> float:
    """Stratified k-fold accuracy of the sweep's linear classifier
    (:func:`explorer.transfer.comparison.probes.linear_probe`)."""
    x, y = _xy(features, labels)
    result = linear_probe(x.astype(np.float32), y, folds=folds, seed=seed)
    if result is None:
        raise PredictError("Every class needs at least two images in the sample to score a layer.")
    return result.accuracy


def score(estimator: str, features: np.ndarray, labels: np.ndarray, *, folds: int = FOLDS, seed: int = 0) -> float:
    """One estimator's score of one layer's pooled features (higher: the layer suits the task better).

    One BLAS thread, as :func:`explorer.transfer.comparison.probes.fit_predict`: these problems are small, and on a busy
    machine threads waiting for each other cost more than they bring.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        if estimator == "probe":
            return probe_accuracy(features, labels, folds=folds, seed=seed)
        if estimator == "logme":
            return logme(features, labels)
        if estimator == "knn":
            return knn_accuracy(features, labels)
        if estimator == "centroid":
            return centroid_accuracy(features, labels, folds=folds, seed=seed)
        if estimator == "fisher":
            return fisher_ratio(features, labels)
    raise PredictError(f"Unknown estimator {estimator!r}: use {', '.join(ESTIMATORS)}.")


# --------------------------------------------------------------------------- from scores to an option


@dataclass(frozen=True)
class Prediction:
    """A predicted sweep option: train by `route` with everything up to `point` frozen, and why, in one sentence."""

    point: str
    route: str  # "linear": a linear classifier on the point's pooled output; "finetune": train what comes after it
    reason: str
    estimator: str
    weak: bool = False  # the best score is within CHANCE_MARGIN of chance: the features barely separate the classes

    @property
    def label(self) -> str:
        return (
            msg(f"linear classifier on {self.point}")
            if self.route == "linear"
            else msg(f"fine-tune after {self.point}")
        )


def predict_option(
    points: Sequence[str],
    scores: dict[str, float],
    estimator: str,
    *,
    features: dict[str, int] | None = None,
    images_per_class: float = 0.0,
    chance: float | None = None,
    pixels: float | None = None,
) -> Prediction:
    """The option `estimator`'s per-point `scores` point to; one rule for every estimator.

    `points` are the sweep's, in depth order ('none' first, 'head only' last); `scores` maps every point but 'none'
    to the estimator's score (higher: better); `pixels` (the pixel check, None: none) is its score of the raw image
    pooled to :data:`PIXEL_GRID` × :data:`PIXEL_GRID`. In this order:

    1. With `pixels`: the raw pixels score higher than the pretrained features at some point, so those features add
       little for this task (digits: pixels 95 %, the best layer 97 %): train every layer ('none', fine-tune).
    2. At least :data:`FINETUNE_PER_CLASS` training images per class (DESIGN §6: "lots of data → fine-tune
       more"): fine-tune after the highest-scoring point.
    3. Otherwise a linear classifier on the highest-scoring point (ties: the fewer pooled `features`, then the
       deeper point).

    An accuracy estimator whose best score is within :data:`CHANCE_MARGIN` of `chance` (the majority-class rate)
    marks the prediction weak, and says so.
    """
    body = [p for p in points if p != NONE]
    missing = [p for p in body if p not in scores or not np.isfinite(scores[p])]
    if not body or missing:
        raise PredictError(f"No score for freeze point(s) {', '.join(missing) or '(none)'}.")
    width = features or {}
    best = max(body, key=lambda p: (scores[p], -width.get(p, 0), body.index(p)))
    value = scores[best]

    def show(x: float) -> Figure:  # a number to the translator (its `:g` in the templates), written as the score is
        return Figure(x, ".1%" if estimator in ACCURACY_ESTIMATORS else ".3g")

    rank, last = body.index(best) + 1, best == body[-1]
    below = [p for p in body if pixels is not None and np.isfinite(pixels) and scores[p] < pixels]
    if below:
        point, route = NONE, "finetune"
        text = msg(
            f"the raw pixels ({PIXEL_GRID}×{PIXEL_GRID}) score {show(pixels or 0.0):g} by {estimator}, higher than "
            f"the pretrained features at {len(below)} of {len(body)} points (the best, {best}: {show(value):g}), so "
            "the pretrained features add little for this task: train every layer"
        )
    elif images_per_class >= FINETUNE_PER_CLASS:
        point, route = best, "finetune"
        text = (
            msg(
                f"{best} (the last layer before the classifier) scores highest by {estimator} ({show(value):g}); with "
                f"{images_per_class:,.0f} images per class, fine-tune the layers after it"
            )
            if last
            else msg(
                f"{best} (point {rank} of {len(body)}) scores highest by {estimator} ({show(value):g}); with "
                f"{images_per_class:,.0f} images per class, fine-tune the layers after it"
            )
        )
    else:
        point, route = best, "linear"
        text = (
            msg(
                f"{best} (the last layer before the classifier) scores highest by {estimator} ({show(value):g}); with "
                f"{images_per_class:,.0f} images per class, a linear classifier on its pooled features"
            )
            if last
            else msg(
                f"{best} (point {rank} of {len(body)}) scores highest by {estimator} ({show(value):g}); with "
                f"{images_per_class:,.0f} images per class, a linear classifier on its pooled features"
            )
        )
    weak = estimator in ACCURACY_ESTIMATORS and chance is not None and value < chance + CHANCE_MARGIN
    reason = msg(f"Predicted before any training: {text}.")
    if weak and chance is not None:
        reason += " " + msg(
            f"But no point beats chance ({chance:.0%}) by {CHANCE_MARGIN:.0%}: the features barely separate these "
            "classes, so measure with a sweep before relying on it."
        )
    return Prediction(point, route, reason, estimator, weak)


# --------------------------------------------------------------------------- the pass and the report


@dataclass
class LayerScores:
    """One candidate point: the module it reads, its pooled feature count and every estimator's score."""

    layer: str  # the freeze point (a ladder layer), as the sweep names it
    module: str  # the module whose output is pooled (the point or its trailing norm/activation)
    features: int
    scores: dict[str, float]


@dataclass
class PredictReport:
    """The prediction, each estimator's own prediction, the per-layer scores, and what it was computed on."""

    prediction: Prediction
    predictions: dict[str, Prediction]
    layers: list[LayerScores]
    pixels: dict[str, float]  # each estimator's score of the raw image pooled to PIXEL_GRID × PIXEL_GRID
    points: list[str]  # the sweep's candidate points, 'none' included
    base: dict[str, str]
    data: dict[str, Any]
    settings: dict[str, Any]
    seconds: float
    timing: dict[str, float] = field(default_factory=dict)

    def scores(self, estimator: str) -> dict[str, float]:
        """Point → `estimator`'s score."""
        return {row.layer: row.scores[estimator] for row in self.layers if estimator in row.scores}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PredictReport:
        """The report `to_dict` wrote (a PredictError when it is another format or damaged)."""
        if not isinstance(d, dict) or d.get("format") != FORMAT:
            raise PredictError("Not a freeze prediction (another format).")
        try:
            return cls(
                prediction=Prediction(**d["prediction"]),
                predictions={k: Prediction(**v) for k, v in d["predictions"].items()},
                layers=[LayerScores(**row) for row in d["layers"]],
                pixels={k: float(v) for k, v in d["pixels"].items()},
                points=[str(p) for p in d["points"]],
                base=dict(d["base"]),
                data=dict(d["data"]),
                settings=dict(d["settings"]),
                seconds=float(d["seconds"]),
                timing={k: float(v) for k, v in (d.get("timing") or {}).items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise PredictError(f"A damaged freeze prediction: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "prediction": asdict(self.prediction),
            "predictions": {k: asdict(v) for k, v in self.predictions.items()},
            "layers": [asdict(row) for row in self.layers],
            "pixels": dict(self.pixels),
            "points": list(self.points),
            "base": dict(self.base),
            "data": dict(self.data),
            "settings": dict(self.settings),
            "seconds": round(self.seconds, 3),
            "timing": {k: round(v, 3) for k, v in self.timing.items()},
        }


def predict_settings(
    *, input_size: int | None = None, max_images: int | None = None, seed: int = 0, val_fraction: float = 0.2
) -> FinetuneSettings:
    """The split a prediction shares with the sweep it is scored against: the sweep's settings with the same
    `input_size`, `max_images` (the stratified subset the split is made of), `seed` and `val_fraction`."""
    s = replace(FinetuneSettings(), input_size=input_size, max_images=max_images, seed=seed, val_fraction=val_fraction)
    s.check()
    return s


@dataclass
class Sample:
    """One pass over the sample: pooled features per point, the pooled raw pixels, labels, and what it is."""

    points: list[str]  # the sweep's, 'none' included
    layers: dict[str, str]  # point → the module whose output is pooled
    pooled: dict[str, np.ndarray]  # point → (N, C)
    pixels: np.ndarray  # (N, 3 · PIXEL_GRID²): the normalised input image, average-pooled
    labels: np.ndarray
    info: dict[str, Any]


def pooled_sample(
    model: LoadedModel,
    data: str | Path | Dataset,
    s: FinetuneSettings,
    *,
    sample: int | None = SAMPLE,
    progress: Progress | None = None,
) -> Sample:
    """The sweep's points, the module each reads, and one streamed pass over a stratified sample of at most
    `sample` images of the split's training part: pooled features at each point and the pooled raw pixels."""
    dataset, classes, split = training_data(data, s)
    size = s.input_size or default_input_size(model, dataset)  # the sweep's rule: the data's own, at most the model's
    check_input_size(model, (size, size))
    points = auto_points(model)
    order = execution_order(model.module, model.input_size)  # traced once for every point (as prefix_layer does)
    layers = {p: order[cut_index(model.module, p, order)] for p in points if p != NONE}
    train = sorted(split.train)
    all_labels = labels_of(dataset)
    indices = sorted(train[i] for i in stratified_subset([all_labels[j] for j in train], sample, s.seed))
    view = TransformedView(dataset, indices, eval_transform(model, size)[0])
    loader = DataLoader(view, batch_size=BATCH, shuffle=False, num_workers=s.num_workers)
    pixels: list[torch.Tensor] = []
    done = [0]

    def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in loader:
            pixels.append(F.adaptive_avg_pool2d(x.float(), PIXEL_GRID).flatten(1))
            yield x, y

    def on_batch(k: int) -> None:
        done[0] += k
        if progress:
            progress(done[0], len(indices), {"phase": "pass", "images": done[0]})

    cache = compute_prefix(
        model.module, batches(), indices, layers, keep=[], keep_inputs=False, device=model.device, on_batch=on_batch
    )
    labels = cache.labels.numpy().astype(np.int64)
    counts = np.bincount(labels, minlength=len(classes))
    info = {
        "source": str(data) if not isinstance(data, Dataset) else type(data).__name__,
        "classes": len(classes),
        "images": len(indices),
        "training_images": len(train),  # the split's training part, which the sample is drawn from
        "heldout_untouched": len(split.heldout),  # what a sweep with the same split measures on: never read here
        "images_per_class": round(len(indices) / max(len(classes), 1), 1),
        "smallest_class": int(counts.min()) if counts.size else 0,
        "chance": chance_level(labels),
        "input_size": size,
    }
    if view.skipped:
        info["unreadable"] = len(view.skipped)
    return Sample(
        points,
        layers,
        {p: cache.pooled[p].float().numpy() for p in layers},
        torch.cat(pixels).numpy() if pixels else np.zeros((0, 3 * PIXEL_GRID**2), dtype=np.float32),
        labels,
        info,
    )


def predict_freeze(
    model: LoadedModel,
    data: str | Path | Dataset,
    *,
    input_size: int | None = None,
    max_images: int | None = None,
    sample: int | None = SAMPLE,
    seed: int = 0,
    val_fraction: float = 0.2,
    estimators: Sequence[str] = ESTIMATORS,
    estimator: str = DEFAULT_ESTIMATOR,
    folds: int = FOLDS,
    pixel_check: bool = PIXEL_CHECK,
    progress: Progress | None = None,
    should_stop: StopSignal | None = None,
) -> PredictReport:
    """Predict where to freeze `model` for `data` from one pass over a stratified sample, before any training.

    The sample is the training part of the split a sweep with the same `seed`, `val_fraction`, `max_images` and
    `input_size` makes (at most `sample` images of it); every estimator in `estimators` scores every candidate
    point and the raw pixels; `estimator` (one of them) gives the headline prediction (:func:`predict_option`, with
    the raw-pixel check when `pixel_check`).
    Deterministic for a given seed. `progress(done, total, info)` counts the pass's images, then one unit per
    (point, estimator).
    """
    t0 = time.perf_counter()
    wanted = list(dict.fromkeys(estimators))
    bad = [e for e in wanted if e not in ESTIMATORS]
    if bad or not wanted:
        raise PredictError(f"Unknown estimator {', '.join(bad) or '(none)'}: use {', '.join(ESTIMATORS)}.")
    if estimator not in wanted:
        raise PredictError(f"The headline estimator {estimator!r} must be one of those computed ({', '.join(wanted)}).")
    if folds < 2:
        raise PredictError("Cross-validation needs at least 2 folds.")
    s = predict_settings(input_size=input_size, max_images=max_images, seed=seed, val_fraction=val_fraction)
    stop = stop_requested(should_stop)
    smp = pooled_sample(model, data, s, sample=sample, progress=progress)
    info, labels = smp.info, smp.labels
    timing = {"pass": time.perf_counter() - t0}
    if info["smallest_class"] < 2:
        raise PredictError(
            "Every class needs at least two images in the sample to score a layer (use more images or a larger "
            "--max-images)."
        )
    features = {**smp.pooled, PIXELS: smp.pixels}
    total, counted = info["images"] + len(features) * len(wanted), info["images"]
    scored: dict[str, dict[str, float]] = {}
    for key, x in features.items():
        scored[key] = {}
        for name in wanted:
            if stop():
                raise PredictError("Stopped before every layer was scored.")
            t1 = time.perf_counter()
            scored[key][name] = score(name, x, labels, folds=folds, seed=seed)
            timing[name] = timing.get(name, 0.0) + time.perf_counter() - t1
            counted += 1
            if progress:
                progress(counted, total, {"phase": name, "layer": key})
    rows = [LayerScores(p, m, int(smp.pooled[p].shape[1]), scored[p]) for p, m in smp.layers.items()]
    width = {r.layer: r.features for r in rows}
    per_class = info["training_images"] / max(info["classes"], 1)
    predictions = {
        name: predict_option(
            smp.points,
            {r.layer: r.scores[name] for r in rows},
            name,
            features=width,
            images_per_class=per_class,
            chance=info["chance"],
            pixels=scored[PIXELS][name] if pixel_check else None,
        )
        for name in wanted
    }
    return PredictReport(
        prediction=predictions[estimator],
        predictions=predictions,
        layers=rows,
        pixels=scored[PIXELS],
        points=smp.points,
        base={"spec": model.spec, "arch": model.arch, "fingerprint": model.fingerprint},
        data=info,
        settings={
            "seed": seed,
            "val_fraction": val_fraction,
            "max_images": max_images,
            "sample": sample,
            "input_size": info["input_size"],
            "folds": folds,
            "knn_k": KNN_K,
            "pixel_grid": PIXEL_GRID,
            "pixel_check": pixel_check,
            "estimators": wanted,
            "estimator": estimator,
        },
        seconds=time.perf_counter() - t0,
        timing=timing,
    )


__all__ = [
    "DEFAULT_ESTIMATOR",
    "ESTIMATORS",
    "MEASURED_CASES",
    "MEASURED_WITHIN",
    "LayerScores",
    "PredictError",
    "PIXEL_CHECK",
    "PredictReport",
    "Prediction",
    "Sample",
    "centroid_accuracy",
    "fisher_ratio",
    "knn_accuracy",
    "log_evidence",
    "logme",
    "max_evidence",
    "pooled_sample",
    "predict_freeze",
    "predict_option",
    "predict_settings",
    "probe_accuracy",
    "score",
]
