"""Linear CKA: the properties that make it a similarity index, and the estimators agreeing with each other."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from explorer.transfer.comparison.cka import (
    GramStats,
    MinibatchCKA,
    StreamingCKA,
    cka_interval,
    gram_cka,
    gram_linear,
    hsic_terms,
    linear_cka,
)

seeds = st.integers(0, 2**32 - 1)
debiased = st.booleans()


def _pair(seed: int, n: int, d1: int, d2: int, noise: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Two related representations of the same n inputs (Y is a noisy linear read-out of X)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d1)) * rng.uniform(0.2, 3.0, size=d1) + rng.normal(size=d1)
    y = x @ rng.normal(size=(d1, d2)) + noise * rng.normal(size=(n, d2))
    return x, y


dims = st.tuples(st.integers(8, 60), st.integers(1, 25), st.integers(1, 25))


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased)
def test_cka_of_a_representation_with_itself_is_one(seed: int, shape: tuple[int, int, int], deb: bool) -> None:
    x, _ = _pair(seed, *shape)
    assert linear_cka(x, x, debiased=deb) == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased)
def test_cka_is_symmetric(seed: int, shape: tuple[int, int, int], deb: bool) -> None:
    x, y = _pair(seed, *shape)
    assert linear_cka(x, y, debiased=deb) == pytest.approx(linear_cka(y, x, debiased=deb), abs=1e-10)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased)
def test_cka_is_invariant_to_orthogonal_transforms(seed: int, shape: tuple[int, int, int], deb: bool) -> None:
    x, y = _pair(seed, *shape)
    rng = np.random.default_rng(seed + 1)
    q1, _ = np.linalg.qr(rng.normal(size=(x.shape[1], x.shape[1])))
    q2, _ = np.linalg.qr(rng.normal(size=(y.shape[1], y.shape[1])))
    assert linear_cka(x @ q1, y @ q2, debiased=deb) == pytest.approx(linear_cka(x, y, debiased=deb), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased, a=st.floats(1e-3, 1e3), b=st.floats(1e-3, 1e3))
def test_cka_is_invariant_to_isotropic_scaling(
    seed: int, shape: tuple[int, int, int], deb: bool, a: float, b: float
) -> None:
    x, y = _pair(seed, *shape)
    assert linear_cka(a * x, b * y, debiased=deb) == pytest.approx(linear_cka(x, y, debiased=deb), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased)
def test_cka_is_invariant_to_the_same_row_permutation(seed: int, shape: tuple[int, int, int], deb: bool) -> None:
    x, y = _pair(seed, *shape)
    perm = np.random.default_rng(seed).permutation(x.shape[0])
    assert linear_cka(x[perm], y[perm], debiased=deb) == pytest.approx(linear_cka(x, y, debiased=deb), abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=seeds, n=st.integers(20, 60), d=st.integers(3, 12), deb=debiased)
def test_cka_is_not_invariant_to_a_general_invertible_linear_map(seed: int, n: int, d: int, deb: bool) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    x = x - x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(x.T @ x / n)).T  # white: a representation whose every direction counts
    # (with one dominant direction, any map that keeps it reads CKA ≈ 1: seed 1475, n=20, d=3 did, at 0.996)
    # An invertible but far-from-orthogonal map: strongly anisotropic scaling after a rotation.
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a = q @ np.diag(np.logspace(0, 3, d))
    assert np.linalg.matrix_rank(a) == d
    assert linear_cka(x @ a, x, debiased=deb) < 0.99  # CCA-style indices would read 1 here; CKA must not


@settings(max_examples=40, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased)
def test_gram_form_equals_feature_form(seed: int, shape: tuple[int, int, int], deb: bool) -> None:
    x, y = _pair(seed, *shape)
    assert gram_cka(gram_linear(x), gram_linear(y), debiased=deb) == pytest.approx(
        linear_cka(x, y, debiased=deb), abs=1e-9
    )


@settings(max_examples=8, deadline=None)
@given(seed=seeds)
def test_debiased_cka_of_independent_noise_is_near_zero_while_biased_is_not(seed: int) -> None:
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(100, 1000)), rng.normal(size=(100, 1000))
    biased = linear_cka(x, y)
    assert biased == pytest.approx(1000 / 1100, abs=0.03)  # ≈ d/(n+d): looks "similar" though unrelated
    assert abs(linear_cka(x, y, debiased=True)) < 0.05


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shape=dims, deb=debiased, cuts=st.lists(st.integers(1, 59), max_size=6))
def test_streaming_accumulation_equals_the_full_computation(
    seed: int, shape: tuple[int, int, int], deb: bool, cuts: list[int]
) -> None:
    x, y = _pair(seed, *shape)
    edges = sorted({0, x.shape[0], *(c for c in cuts if c < x.shape[0])})
    acc = StreamingCKA()
    for a, b in zip(edges, edges[1:], strict=False):
        acc.update(x[a:b], y[a:b])
    assert acc.n == x.shape[0]
    assert acc.value(debiased=deb) == pytest.approx(linear_cka(x, y, debiased=deb), abs=1e-8)


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shape=dims)
def test_minibatch_cka_with_one_batch_is_the_full_debiased_cka(seed: int, shape: tuple[int, int, int]) -> None:
    x, y = _pair(seed, *shape)
    acc = MinibatchCKA()
    acc.update(x, y)
    assert acc.value == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-9)


def test_minibatch_cka_averages_unbiased_hsic_over_batches_and_tracks_the_full_value() -> None:
    x, y = _pair(7, 600, 40, 30, noise=4.0)
    acc = MinibatchCKA()
    batches = [(x[i : i + 50], y[i : i + 50]) for i in range(0, 600, 50)]
    for bx, by in batches:
        acc.update(bx, by)
    # The same quantity by hand: mean per-batch HSIC₁ terms (equal batch sizes), then the ratio.
    t = np.mean([np.array(hsic_terms(bx, by)) / (len(bx) * (len(bx) - 3)) for bx, by in batches], axis=0)
    assert acc.value == pytest.approx(t[0] / np.sqrt(t[1] * t[2]), rel=1e-12)
    full = linear_cka(x, y, debiased=True)
    assert abs(acc.value - full) < 0.05  # same population quantity, estimated from fewer pairs
    noise = MinibatchCKA()
    rng = np.random.default_rng(1)
    for _ in range(12):
        noise.update(rng.normal(size=(50, 500)), rng.normal(size=(50, 500)))
    assert abs(noise.value) < 0.05


@settings(max_examples=30, deadline=None)
@given(seed=seeds, shape=dims)
def test_the_gram_estimate_is_the_full_debiased_cka_and_its_interval_contains_it(
    seed: int, shape: tuple[int, int, int]
) -> None:
    x, y = _pair(seed, *shape)
    est = cka_interval(GramStats(gram_linear(x)), GramStats(gram_linear(y)))
    assert est.value == pytest.approx(linear_cka(x, y, debiased=True), abs=1e-9)
    assert est.low <= est.value <= est.high <= 1.0 and est.examples == x.shape[0]


def test_the_jackknife_leaves_out_each_image_exactly() -> None:
    """The O(n²) leave-one-out formula equals recomputing the debiased CKA without that image."""
    x, y = _pair(5, 30, 6, 4)
    gx, gy = GramStats(gram_linear(x)), GramStats(gram_linear(y))
    _, loo_xy = gx.u_inner(gy)
    _, loo_xx = gx.u_inner(gx)
    _, loo_yy = gy.u_inner(gy)
    for i in (0, 11, 29):
        keep = np.arange(30) != i
        want = linear_cka(x[keep], y[keep], debiased=True)
        assert float(loo_xy[i] / np.sqrt(loo_xx[i] * loo_yy[i])) == pytest.approx(want, abs=1e-9)


def test_the_interval_narrows_with_more_images_and_is_nan_below_five() -> None:
    x, y = _pair(3, 800, 30, 30, noise=6.0)
    few = cka_interval(GramStats(gram_linear(x[:50])), GramStats(gram_linear(y[:50])))
    many = cka_interval(GramStats(gram_linear(x)), GramStats(gram_linear(y)))
    assert (few.high - few.low) > (many.high - many.low) > 0
    tiny = cka_interval(GramStats(gram_linear(x[:4])), GramStats(gram_linear(y[:4])))
    assert np.isfinite(tiny.value) and np.isnan(tiny.low)


def test_mismatched_rows_are_refused() -> None:
    with pytest.raises(ValueError):
        linear_cka(np.zeros((5, 2)), np.zeros((6, 2)))
    with pytest.raises(ValueError):
        MinibatchCKA().update(np.zeros((5, 2)), np.zeros((6, 2)))
