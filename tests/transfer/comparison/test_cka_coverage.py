"""The CKA interval covers: on synthetic features whose population CKA is known exactly, the 95 % jackknife
interval contains it in at least 93 % of simulated datasets, at 48, 200 and 1,000 images.

Features: X ~ N(0, Σ) with a decaying spectrum λᵢ = (1 + i)^-0.7 (like pooled CNN features), and either
Y = X·A + σE with A a random Gaussian map (CKA ≈ 0.65), or Y = X·Q + σE with Q a rotation (CKA ≈ 0.93–0.95, near
the 0.9 the prediction uses). Population linear CKA = ‖Σ_xy‖²_F / (‖Σ_xx‖_F ‖Σ_yy‖_F). Each simulation is seeded,
so a run either passes or fails the same way every time.
"""

from __future__ import annotations

import numpy as np
import pytest

from explorer.transfer.comparison.cka import GramStats, cka_interval, gram_linear


def _scenario(kind: str, d: int, seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """(spectrum, map, noise σ, population CKA)."""
    rng = np.random.default_rng(seed)
    lam = 1.0 / (1 + np.arange(d)) ** 0.7
    if kind == "random-map":
        a, sigma = rng.normal(size=(d, d)) / np.sqrt(d), 0.3
    else:  # a rotation: a near-identical representation
        a, sigma = np.linalg.qr(rng.normal(size=(d, d)))[0], np.sqrt(0.02 if d == 64 else 0.01)
    s = np.diag(lam)
    sxy, syy = s @ a, a.T @ s @ a + sigma**2 * np.eye(d)
    true = float((sxy**2).sum() / np.sqrt((s**2).sum() * (syy**2).sum()))
    return lam, a, sigma, true


def coverage(n: int, kind: str, d: int, reps: int, seed: int = 0) -> tuple[float, float]:
    """Fraction of `reps` simulated datasets of n images whose interval contains the population CKA."""
    lam, a, sigma, true = _scenario(kind, d, seed)
    rng = np.random.default_rng(seed + 1)
    hits = 0
    for _ in range(reps):
        x = rng.normal(size=(n, d)) * np.sqrt(lam)
        y = x @ a + sigma * rng.normal(size=(n, d))
        est = cka_interval(GramStats(gram_linear(x)), GramStats(gram_linear(y)))
        hits += est.low <= true <= est.high
    return hits / reps, true


@pytest.mark.parametrize(("n", "kind", "d"), [(48, "random-map", 64), (48, "rotation", 64), (48, "rotation", 256),
                                              (200, "random-map", 64), (200, "rotation", 64)])  # fmt: skip
def test_the_interval_covers_the_true_cka(n: int, kind: str, d: int) -> None:
    cov, true = coverage(n, kind, d, reps=300 if (n, d) == (48, 64) else 150)
    print(f"n={n} {kind} d={d}: population CKA {true:.3f}, coverage {cov:.3f}")
    assert cov >= 0.93


@pytest.mark.slow
@pytest.mark.parametrize(("n", "kind", "d", "reps"), [(200, "rotation", 256, 200), (1000, "random-map", 64, 150),
                                                      (1000, "rotation", 256, 150)])  # fmt: skip
def test_the_interval_covers_the_true_cka_with_more_images_and_features(n: int, kind: str, d: int, reps: int) -> None:
    cov, true = coverage(n, kind, d, reps=reps)
    print(f"n={n} {kind} d={d}: population CKA {true:.3f}, coverage {cov:.3f}")
    assert cov >= 0.93
