"""The few statistics the freeze advice rests on: intervals for accuracies and tests on the same held-out images.

- :func:`wilson`: the Wilson score interval for k correct of n (sound at small n and near 0 or 1, unlike Wald).
- :func:`above_chance`: the one-sided exact binomial test that an accuracy beats a constant guess.
- :func:`mcnemar`: the exact McNemar test for two classifiers scored on the *same* images. It uses only the images
  on which they disagree, which is why it is far more sensitive than comparing two intervals (overlapping Wilson
  intervals can hide a real, consistent difference, and they ignore that both models saw the same images).
- :func:`paired_difference`: the difference of two accuracies on the same images with a 95 % interval.
- :func:`seed_interval`: a t interval over seeds, never narrower than the Wilson interval of the pooled counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

LEVEL = 0.95


def _z(level: float) -> float:
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import norm

    return float(norm.ppf(0.5 + level / 2))


def wilson(k: int, n: int, level: float = LEVEL) -> tuple[float, float]:
    """Wilson score interval for a proportion k/n; (nan, nan) when n is 0."""
    if n <= 0:
        return float("nan"), float("nan")
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def above_chance(k: int, n: int, chance: float) -> float:
    """One-sided exact binomial p-value of k correct of n when each is right with probability `chance`."""
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import binomtest

    if n <= 0:
        return float("nan")
    return float(binomtest(int(k), int(n), min(max(chance, 0.0), 1.0), alternative="greater").pvalue)


@dataclass
class McNemar:
    """Two classifiers on the same images: how often only one was right, and the exact two-sided p-value."""

    only_a: int  # images A got right and B wrong
    only_b: int
    p_value: float


def mcnemar(a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray) -> McNemar:
    """Exact McNemar test (binomial on the discordant pairs, p = 1/2) for per-image correctness of A and B."""
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import binomtest

    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"McNemar needs the same images for both: {x.shape} vs {y.shape}.")
    only_a, only_b = int((x & ~y).sum()), int((~x & y).sum())
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return McNemar(only_a, only_b, p)


def paired_difference(
    a: Sequence[bool] | np.ndarray, b: Sequence[bool] | np.ndarray, level: float = LEVEL
) -> tuple[float, float, float]:
    """accuracy(A) − accuracy(B) on the same images, with a t interval on the per-image differences."""
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import t as student

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    if n < 2:
        return float(d.mean()) if n else float("nan"), float("nan"), float("nan")
    se = float(d.std(ddof=1)) / math.sqrt(n)
    half = float(student.ppf(0.5 + level / 2, n - 1)) * se
    return float(d.mean()), float(d.mean()) - half, float(d.mean()) + half


def seed_interval(accuracies: Sequence[float], correct: int, total: int, level: float = LEVEL) -> tuple[float, float]:
    """An interval for a mean accuracy over seeds: the t interval across seeds, widened to at least the Wilson
    interval of all counts pooled (a few seeds say little about image sampling)."""
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import t as student

    lo, hi = wilson(correct, total, level)
    k = len(accuracies)
    if k < 2:
        return lo, hi
    mean = float(np.mean(accuracies))
    half = float(student.ppf(0.5 + level / 2, k - 1)) * float(np.std(accuracies, ddof=1)) / math.sqrt(k)
    return max(0.0, min(lo, mean - half)), min(1.0, max(hi, mean + half))


# --------------------------------------------------------------------------- the loss of each option against the best

MARGIN = 0.02  # the default non-inferiority margin: an option within 2 points of the best is as good as it
REPLICATES = 2000  # bootstrap replicates of the bounds


@dataclass
class LossBounds:
    """Each option's loss against the most accurate one (accuracy points, as fractions) with simultaneous bounds.

    `loss[o]`: observed accuracy of the observed best minus that of option o (0 for the best itself); `high[o]`: an
    upper bound on its *true* loss against the truly best option, `low[o]`: the lower end of the interval of its
    loss against the observed best. The bounds hold together for every option with probability `level`."""

    loss: np.ndarray
    low: np.ndarray
    high: np.ndarray
    best: int
    level: float
    quantile: float  # the studentised simultaneous critical value used (1.645 would be one option, one side)


def _resampled_accuracies(correct: Sequence[np.ndarray], replicates: int, seed: int) -> np.ndarray:
    """(replicates × options) accuracies, resampling images and, within each option, its seeds (hierarchically)."""
    rng = np.random.default_rng(seed)
    n = correct[0].shape[1]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=replicates).astype(np.float32) / n  # images, shared
    out = np.empty((replicates, len(correct)), dtype=np.float64)
    for o, c in enumerate(correct):
        per_seed = weights @ c.astype(np.float32).T  # (replicates × seeds): accuracy of each seed's run
        s = c.shape[0]
        picks = rng.integers(0, s, size=(replicates, s))
        seed_w = np.stack([np.bincount(p, minlength=s) for p in picks]).astype(np.float64) / s
        out[:, o] = (per_seed * seed_w).sum(1)
    return out


def loss_bounds(
    correct: Sequence[np.ndarray], level: float = LEVEL, replicates: int = REPLICATES, seed: int = 0
) -> LossBounds:
    """Simultaneous bounds on every option's loss against the best, from per-image correctness on the same images.

    `correct[o]` is a (seeds × images) boolean array: option o's correctness on each image, one row per training
    seed, the images the same for every option (paired). The test resamples images, and seeds within each option
    (a hierarchical bootstrap: seeds are a level of their own, never more images), and bounds every pairwise
    difference at once with a studentised max-|t| critical value (so choosing among many options, and the best being
    itself selected, is paid for). The true loss of o, max_j acc_j − acc_o, is at most max_j of the upper bounds
    of acc_j − acc_o: that is `high`, valid one-sided at `level` for all options together."""
    if not correct:
        raise ValueError("No option to bound.")
    arrays = [np.atleast_2d(np.asarray(c, dtype=bool)) for c in correct]
    n = arrays[0].shape[1]
    if any(a.shape[1] != n for a in arrays):
        raise ValueError("Every option must be scored on the same images.")
    acc = np.array([a.mean() for a in arrays])
    best = int(np.argmax(acc))
    k = len(arrays)
    if k == 1 or n < 2:
        zero = np.zeros(k)
        return LossBounds(acc[best] - acc, zero, zero + (1.0 if n < 2 else 0.0), best, level, float("nan"))
    boot = _resampled_accuracies(arrays, replicates, seed)
    diff_hat = acc[None, :] - acc[:, None]  # [o, j] = acc_j − acc_o
    diff_boot = boot[:, None, :] - boot[:, :, None]
    se = np.maximum(diff_boot.std(axis=0), 0.5 / n)  # a floor: two options that never disagree in the resamples
    off = ~np.eye(k, dtype=bool)
    t = np.abs(diff_boot - diff_hat[None]) / se[None]
    q = float(np.quantile(t[:, off].max(axis=1), 2 * level - 1))  # two-sided at 2·level − 1: each side at `level`
    upper = np.where(off, diff_hat + q * se, 0.0)
    high = upper.max(axis=1)
    low = diff_hat[:, best] - q * se[:, best]
    low[best] = 0.0
    return LossBounds(acc[best] - acc, low, high, best, level, q)
