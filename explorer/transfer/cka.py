"""Linear centred kernel alignment (CKA): how similar two layers' representations are on the same inputs.

CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F) on column-centred features X (n×d₁), Y (n×d₂) of the same n inputs
(Kornblith et al., ICML 2019). The plain estimator is biased upward when features outnumber examples:
independent noise reads ≈ d/(n+d). ``debiased=True`` replaces each HSIC with the unbiased estimator of
Song et al. (2012) as used by Nguyen, Raghu & Kornblith (ICLR 2021), computed by U-centring the Gram matrices;
unrelated features then read ≈ 0 (it can dip slightly below 0).

Three ways to compute it:

- :func:`linear_cka` (feature form) and :func:`gram_cka` (Gram form) on all the data at once; they agree.
- :class:`MinibatchCKA`: Nguyen et al.'s minibatch CKA, mean unbiased HSIC over minibatches, then the ratio.
  Memory is one minibatch's Gram matrices, whatever the number of images; its bootstrap over minibatches
  gives the confidence interval used in comparison reports. With a single minibatch it equals the
  full debiased CKA; with several it estimates the same population quantity.
- :class:`StreamingCKA`: the *exact* full-data CKA (biased or debiased) from sufficient statistics
  accumulated batch by batch; memory grows with (d₁+d₂)², not with n. For small feature dimensions.
"""

from __future__ import annotations

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
    """A CKA value with its bootstrap confidence interval (NaN when too few minibatches to resample)."""

    value: float
    low: float
    high: float
    batches: int
    examples: int


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

    def estimate(self, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> CKAEstimate:
        """The value and a percentile bootstrap interval that resamples whole minibatches."""
        k = len(self.terms)
        low = high = float("nan")
        if k >= 3 and n_boot > 0:
            rng = np.random.default_rng(seed)
            w = np.asarray(self.sizes, dtype=np.float64)
            t = np.asarray(self.terms) * w[:, None]
            idx = rng.integers(0, k, size=(n_boot, k))
            s = t[idx].sum(1)  # (n_boot, 3)
            with np.errstate(invalid="ignore", divide="ignore"):
                boots = s[:, 0] / np.sqrt(np.clip(s[:, 1], 0, None) * np.clip(s[:, 2], 0, None))
            boots = boots[np.isfinite(boots)]
            if boots.size:
                a = (1 - level) / 2
                low, high = (float(v) for v in np.quantile(boots, [a, 1 - a]))
        return CKAEstimate(self.value, low, high, k, int(sum(self.sizes)))


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
            xy, xx, yy = c[:d, d:], c[:d, :d], c[d:, d:]
            return _ratio(*(float(torch.linalg.matrix_norm(m) ** 2) for m in (xy, xx, yy)))
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
