"""Linear centred kernel alignment (CKA): how similar two layers' representations are on the same inputs.

CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features X (n×d₁), Y (n×d₂) of the same n inputs
(Kornblith et al., ICML 2019). The plain estimator is biased upward when features outnumber examples:
independent noise reads ≈ d/(n+d). ``debiased=True`` replaces each HSIC with the unbiased estimator of
Song et al. (2012) as used by Nguyen, Raghu & Kornblith (ICLR 2021), computed by U-centring the Gram matrices;
unrelated features then read ≈ 0 (it can dip slightly below 0).

Three ways to compute it:

- :func:`linear_cka` (feature form) and :func:`gram_cka` (Gram form) on all the data at once; they agree.
- :class:`GramStats` and :func:`cka_interval`: the full-sample debiased CKA of two Gram matrices with a 95 %
  interval from the delete-one-image jackknife (t quantile), computed in O(n²) from row sums. This is what
  comparison reports use. It resamples *images*; the older bootstrap over a handful of minibatches covered only
  74–89 % at 24–200 images, this interval covers ≥ 93 % at 48, 200 and 1,000 images on features of known CKA
  (tests/transfer/comparison/test_cka_coverage.py).
- :class:`MinibatchCKA`: Nguyen et al.'s minibatch CKA, mean unbiased HSIC over minibatches, then the ratio.
  Memory is one minibatch's Gram matrices, whatever the number of images. With a single minibatch it equals the
  full debiased CKA; with several it estimates the same population quantity.
- :class:`StreamingCKA`: the *exact* full-data CKA (biased or debiased) from sufficient statistics
  accumulated batch by batch; memory grows with (d₁+d₂)², not with n. For small feature dimensions.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor


def _f64(x: ArrayLike) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach().to("cpu", torch.float64)
    return t.reshape(t.shape[0], -1)


def center_gram(gram: torch.Tensor, *, unbiased: bool = False) -> torch.Tensor:
    """Double-centre a Gram matrix; `unbiased` U-centres it (zero diagonal) for the unbiased HSIC."""
    g = gram.to(torch.float64).clone()
    n = g.shape[0]
    if unbiased:
        if n < 4:
            raise ValueError("The unbiased HSIC needs at least 4 examples.")
        g.fill_diagonal_(0.0)
        means = g.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        g = g - means[:, None] - means[None, :]
        g.fill_diagonal_(0.0)
    else:
        means = g.mean(0)
        means = means - means.mean() / 2
        g = g - means[:, None] - means[None, :]
    return g


def gram_linear(x: ArrayLike) -> torch.Tensor:
    """The linear kernel's Gram matrix XXᵀ (n×n) in float64; inputs are flattened per row."""
    t = _f64(x)
    return t @ t.T


def hsic_terms(x: ArrayLike, y: ArrayLike, *, debiased: bool = True) -> tuple[float, float, float]:
    """(HSIC(X,Y), HSIC(X,X), HSIC(Y,Y)) up to a common factor, from Gram matrices of one batch."""
    kx = center_gram(gram_linear(x), unbiased=debiased)
    ky = center_gram(gram_linear(y), unbiased=debiased)
    return float((kx * ky).sum()), float((kx * kx).sum()), float((ky * ky).sum())


def _ratio(xy: float, xx: float, yy: float) -> float:
    denom = np.sqrt(max(xx, 0.0) * max(yy, 0.0))
    return float(xy / denom) if denom > 0 else float("nan")


def gram_cka(gram_x: ArrayLike, gram_y: ArrayLike, *, debiased: bool = False) -> float:
    """CKA from two Gram matrices of the same n inputs (any kernel; linear CKA with XXᵀ and YYᵀ)."""
    gx = center_gram(_as_square(gram_x), unbiased=debiased)
    gy = center_gram(_as_square(gram_y), unbiased=debiased)
    return _ratio(float((gx * gy).sum()), float((gx * gx).sum()), float((gy * gy).sum()))


def _as_square(g: ArrayLike) -> torch.Tensor:
    t = g if isinstance(g, torch.Tensor) else torch.from_numpy(np.asarray(g))
    return t.detach().to("cpu", torch.float64)


def linear_cka(x: ArrayLike, y: ArrayLike, *, debiased: bool = False) -> float:
    """Linear CKA in feature form (no n×n matrix): X (n×d₁) and Y (n×d₂) hold the same n inputs in rows."""
    fx, fy = _f64(x), _f64(y)
    if fx.shape[0] != fy.shape[0]:
        raise ValueError(f"CKA needs the same inputs in both: {fx.shape[0]} vs {fy.shape[0]} rows.")
    fx = fx - fx.mean(0, keepdim=True)
    fy = fy - fy.mean(0, keepdim=True)
    xy = float(torch.linalg.matrix_norm(fx.T @ fy) ** 2)
    xx = float(torch.linalg.matrix_norm(fx.T @ fx) ** 2)
    yy = float(torch.linalg.matrix_norm(fy.T @ fy) ** 2)
    if debiased:
        n = fx.shape[0]
        if n < 4:
            raise ValueError("The debiased CKA needs at least 4 examples.")
        rx, ry = (fx * fx).sum(1), (fy * fy).sum(1)
        sx, sy = float(rx.sum()), float(ry.sum())

        def fix(dot: float, ra: torch.Tensor, rb: torch.Tensor, sa: float, sb: float) -> float:
            # Kornblith's feature-space form of the U-centred inner product (their CKA colab).
            return dot - n / (n - 2) * float(ra @ rb) + sa * sb / ((n - 1) * (n - 2))

        xy, xx, yy = fix(xy, rx, ry, sx, sy), fix(xx, rx, rx, sx, sx), fix(yy, ry, ry, sy, sy)
    return _ratio(xy, xx, yy)


@dataclass
class CKAEstimate:
    """A debiased CKA value with its 95 % jackknife interval (NaN when there are fewer than 5 images)."""

    value: float
    low: float
    high: float
    examples: int
    se: float = float("nan")


class GramStats:
    """A Gram matrix with its diagonal zeroed and the sums that U-centring and the jackknife reuse."""

    def __init__(self, gram: ArrayLike) -> None:
        k = _as_square(gram).clone()
        k.fill_diagonal_(0.0)
        self.k, self.rows, self.n = k, k.sum(1), k.shape[0]

    def u_inner(self, other: GramStats) -> tuple[float, torch.Tensor]:
        """U-centred inner product on all n images, and on every sample of n − 1 (image i left out)."""
        n, a, b, ra, rb = self.n, self.k, other.k, self.rows, other.rows
        ab_rows = (a * b).sum(1)
        tr = float(ab_rows.sum())
        full = tr + float(ra.sum() * rb.sum()) / ((n - 1) * (n - 2)) - 2 * float(ra @ rb) / (n - 2)
        m = n - 1
        if m < 4:
            return full, torch.full((n,), float("nan"), dtype=torch.float64)
        sa, sb = ra.sum() - 2 * ra, rb.sum() - 2 * rb
        cross = ra @ rb - ra * rb - a @ rb - b @ ra + ab_rows
        loo = (tr - 2 * ab_rows) + sa * sb / ((m - 1) * (m - 2)) - 2 * cross / (m - 2)
        return full, loo


@functools.lru_cache(maxsize=256)
def _t_quantile(level: float, dof: int) -> float:
    # start-up cost: scipy.stats takes ~1 s to import; `import explorer.transfer` (app, CLI, notebooks) must not pay it
    from scipy.stats import t as student

    return float(student.ppf(0.5 + level / 2, dof))


def cka_interval(x: GramStats, y: GramStats, *, level: float = 0.95) -> CKAEstimate:
    """Debiased linear CKA of two representations of the same images, with a delete-one-image jackknife interval.

    The interval is value ± t(n−1) · SE_jackknife, capped at 1 (CKA cannot exceed 1).
    """
    n = x.n
    if n != y.n:
        raise ValueError(f"CKA needs the same inputs in both: {n} vs {y.n} rows.")
    if n < 4:
        return CKAEstimate(float("nan"), float("nan"), float("nan"), n)
    xy, lxy = x.u_inner(y)
    xx, lxx = x.u_inner(x)
    yy, lyy = y.u_inner(y)
    value = _ratio(xy, xx, yy)
    with np.errstate(invalid="ignore", divide="ignore"):
        loo = (lxy / (lxx.clamp_min(0) * lyy.clamp_min(0)).sqrt()).numpy()
    if n < 5 or not np.all(np.isfinite(loo)):
        return CKAEstimate(value, float("nan"), float("nan"), n)
    se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
    half = _t_quantile(level, n - 1) * se
    return CKAEstimate(value, value - half, min(1.0, value + half), n, se)


class MinibatchCKA:
    """Minibatch debiased CKA (Nguyen et al. 2021): average the unbiased HSIC terms over minibatches.

    Call :meth:`update` once per minibatch with the two representations of the same inputs. Memory is
    O(batch² + batch·d); batches with fewer than 4 examples are skipped (the unbiased HSIC needs 4).
    Shuffle the data first: a minibatch of one class measures only within-class similarity.
    """

    def __init__(self, *, debiased: bool = True) -> None:
        self.debiased = debiased
        self.terms: list[tuple[float, float, float]] = []
        self.sizes: list[int] = []

    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"CKA needs the same inputs in both: {x.shape[0]} vs {y.shape[0]} rows.")
        n = int(x.shape[0])
        if n < (4 if self.debiased else 2):
            return
        xy, xx, yy = hsic_terms(x, y, debiased=self.debiased)
        scale = n * (n - 3) if self.debiased else n * n  # per-batch HSIC = inner product / scale
        self.terms.append((xy / scale, xx / scale, yy / scale))
        self.sizes.append(n)

    @property
    def value(self) -> float:
        if not self.terms:
            return float("nan")
        w = np.asarray(self.sizes, dtype=np.float64)
        t = np.asarray(self.terms) * w[:, None]
        return _ratio(*t.sum(0))


class StreamingCKA:
    """Exact full-data linear CKA accumulated batch by batch from sufficient statistics.

    Keeps ZᵀZ for Z = [X Y] plus per-row norm statistics: memory O((d₁+d₂)²), independent of the number of
    inputs; the result equals :func:`linear_cka` on all rows at once (up to float64 rounding).
    """

    def __init__(self) -> None:
        self.n = 0
        self._zz: torch.Tensor | None = None  # [X Y]ᵀ[X Y], raw (uncentred)
        self._s: torch.Tensor | None = None  # column sums of Z
        self._dx = 0
        self._ab = np.zeros(5)  # Σa², Σb², Σab, Σa, Σb with a=‖xᵢ‖², b=‖yᵢ‖²
        self._az: torch.Tensor | None = None  # Σ aᵢ zᵢ
        self._bz: torch.Tensor | None = None  # Σ bᵢ zᵢ

    def update(self, x: ArrayLike, y: ArrayLike) -> None:
        fx, fy = _f64(x), _f64(y)
        if fx.shape[0] != fy.shape[0]:
            raise ValueError(f"CKA needs the same inputs in both: {fx.shape[0]} vs {fy.shape[0]} rows.")
        z = torch.cat([fx, fy], 1)
        a, b = (fx * fx).sum(1), (fy * fy).sum(1)
        if self._zz is None:
            self._dx = fx.shape[1]
            self._zz, self._s = z.T @ z, z.sum(0)
            self._az, self._bz = a @ z, b @ z
        else:
            assert self._s is not None and self._az is not None and self._bz is not None
            self._zz += z.T @ z
            self._s += z.sum(0)
            self._az += a @ z
            self._bz += b @ z
        self._ab += [float(a @ a), float(b @ b), float(a @ b), float(a.sum()), float(b.sum())]
        self.n += fx.shape[0]

    def value(self, *, debiased: bool = True) -> float:
        if self._zz is None or self.n < 4:
            return float("nan")
        n, d = self.n, self._dx
        zz, s = self._zz, self._s
        assert s is not None and self._az is not None and self._bz is not None
        if not debiased:
            c = zz - torch.outer(s, s) / n  # centred ZᵀZ
            cxy, cxx, cyy = c[:d, d:], c[:d, :d], c[d:, d:]
            return _ratio(*(float(torch.linalg.matrix_norm(m) ** 2) for m in (cxy, cxx, cyy)))
        sx, sy = s[:d], s[d:]
        aa, bb, ab, sa, sb = self._ab
        ax, ay = self._az[:d], self._az[d:]
        bx, by = self._bz[:d], self._bz[d:]

        def u_inner(
            m: torch.Tensor,
            su: torch.Tensor,
            sv: torch.Tensor,
            uu: float,
            uv_w: float,
            vv: float,
            su_w: torch.Tensor,
            sv_w: torch.Tensor,
        ) -> float:
            # tr(K̃L̃), 1ᵀK̃1·1ᵀL̃1 and 1ᵀK̃L̃1 of the zero-diagonal linear Gram matrices, from sums only.
            tr = float((m * m).sum()) - uv_w
            one_k = float(su @ su) - uu
            one_l = float(sv @ sv) - vv
            kl = float(su @ m @ sv) - float(su_w @ sv) - float(sv_w @ su) + uv_w
            return tr + one_k * one_l / ((n - 1) * (n - 2)) - 2 * kl / (n - 2)

        xy = u_inner(zz[:d, d:], sx, sy, sa, ab, sb, ay, bx)
        xx = u_inner(zz[:d, :d], sx, sx, sa, aa, sa, ax, ax)
        yy = u_inner(zz[d:, d:], sy, sy, sb, bb, sb, by, by)
        return _ratio(xy, xx, yy)


# --------------------------------------------------------------------------- one layer of a comparison


@dataclass
class LayerCKA:
    """A layer's CKA with the base: the tuned model (with its interval), the two BatchNorm hybrids, each half."""

    value: float
    low: float
    high: float
    weights: float  # tuned weights + base BatchNorm statistics
    stats: float  # base weights + tuned BatchNorm statistics
    halves: list[tuple[float, float]]  # (value, lower end) on each of two disjoint halves of the images


def layer_cka(feats: dict[str, ArrayLike], halves: list[np.ndarray]) -> LayerCKA:
    """From one layer's features per model ('base', 'tuned', optionally 'weights', 'stats'; same images in rows)."""
    grams = {k: gram_linear(v) for k, v in feats.items()}
    stats = {k: GramStats(g) for k, g in grams.items()}
    est = cka_interval(stats["base"], stats["tuned"])
    part = {
        k: cka_interval(stats["base"], stats[k]).value if k in stats else float("nan") for k in ("weights", "stats")
    }
    per_half = []
    for h in halves:
        sub = torch.as_tensor(h, dtype=torch.long)
        e = cka_interval(GramStats(grams["base"][sub][:, sub]), GramStats(grams["tuned"][sub][:, sub]))
        per_half.append((e.value, e.low))
    return LayerCKA(est.value, est.low, est.high, part["weights"], part["stats"], per_half)


def split_halves(n: int, seed: int) -> list[np.ndarray]:
    """Two disjoint random halves of n images, for a stability check (none when a half would have < 5 images)."""
    if n < 10:
        return []
    order = np.random.default_rng(seed + 1).permutation(n)
    return [np.sort(order[: n // 2]), np.sort(order[n // 2 :])]
