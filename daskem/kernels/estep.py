"""The E-step of one chunk, fused with the statistics the M-step needs.

A chunk is processed in blocks of rows. Every buffer a block needs is allocated once per
chunk and reused with ``out=`` arguments: worker processes of ``distributed`` run with a
small ``MALLOC_TRIM_THRESHOLD_``, under which every large temporary would be a fresh
``mmap`` and a round of page faults (more than halving the speed).

Mixtures. With a common shift ``s`` (the weighted center of the current means) and
``z = x − s``, every covariance type's log-density is linear in a feature map of ``z``::

    F(z) = [ q(z), z, 1 ]     q(z) = z_i z_j for i ≤ j (full, tied), z_j² (diag),
                                     ‖z‖² (spherical, fixed)
    log π_k N(x | μ_k, Σ_k) = W_k · F(z)

so the E-step of a block is one matrix product ``W F`` and, with ``R`` the (weighted)
responsibilities, the statistics of every component are one matrix product ``R Fᵀ``:
``Σ r q(z)`` (the upper triangle of ``Σ r z zᵀ`` for full and tied, each symmetric term
once), ``Σ r z`` and ``Σ r``. This is about half the arithmetic of one product per component.
The features are float64 whatever the data's dtype: the quadratic terms carry the digits
the covariances need. The M-step re-centres the shifted sums on the new means; the
rounding error this leaves is about ``eps · (|μ_k − s| / σ_k)²`` relative, 1e-10 for
components a thousand standard deviations from ``s``.

k-means. Distances are ``‖c‖² − 2 z·c`` (``‖z‖²`` does not change the arg-min) as one
product of ``[z, 1]`` with ``[−2 cᵀ; ‖c‖²]`` in the data's dtype (float32 stays float32);
the inertia and the centers' sums come from the exact residuals ``x − c_label``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse

from daskem.kernels.covariance import (
    LOG_2PI,
    QUAD_OUTER,
    QUAD_SQUARE,
    CovarianceType,
    covariance,
    quad_width,
)
from daskem.kernels.marginal import (
    MarginalParams,
    marginal_log_prob,
    marginal_stats,
    split_rows,
)
from daskem.kernels.stats import FarPoints, Stats

# A block's main buffers hold about this many elements (4 MiB of float64): measured
# fastest on 2-core machines with 1 MiB L2 (smaller blocks pay NumPy's per-call overhead).
BLOCK_ELEMENTS = 1 << 19
MIN_BLOCK_ROWS = 16
MAX_BLOCK_ROWS = 8192


# Which chunk kernels run (DASKEM_KERNELS, read once per process): "auto" (default) the
# compiled ones (numba, :mod:`daskem.kernels.compiled`) for chunks of at least
# COMPILED_MIN_ELEMENTS values and the NumPy twins below for smaller ones; "compiled" or
# "numpy" for every chunk. Loading numba costs a worker process about 2 s once, which small
# chunks never earn back. The choice depends on the chunk alone, never on the worker.
KERNELS = os.environ.get("DASKEM_KERNELS", "auto")
if KERNELS not in ("auto", "compiled", "numpy"):
    raise ValueError(f"DASKEM_KERNELS must be 'auto', 'compiled' or 'numpy'; got {KERNELS!r}")
COMPILED_MIN_ELEMENTS = 1 << 20


def _compiled(x: np.ndarray):
    """The compiled kernels' module if they serve ``x``, else ``None`` (numba is imported
    on first use: 1–2 s, once per process)."""
    if KERNELS == "numpy" or x.dtype not in (np.float32, np.float64):
        return None
    if KERNELS == "auto" and x.size < COMPILED_MIN_ELEMENTS:
        return None
    from daskem.kernels import compiled

    return compiled


def warm_up_kernels(x: np.ndarray) -> float:
    """Compile or load the compiled kernels in this process if they serve chunks like
    ``x``; the seconds it took (0 when loaded already or not used)."""
    compiled = _compiled(x)
    return 0.0 if compiled is None else compiled.warm_up()


def block_rows(n_rows: int, width: int) -> int:
    """Rows per block when each row of a block needs ``width`` buffer elements."""
    rows = min(MAX_BLOCK_ROWS, max(MIN_BLOCK_ROWS, BLOCK_ELEMENTS // max(width, 1)))
    return int(max(1, min(rows, n_rows)))


def _all_finite(x: np.ndarray) -> bool:
    """True when ``x`` surely holds no NaN or ±inf: a plain sum answers without a mask in
    the common case (NaN and inf propagate through it)."""
    if x.dtype.kind != "f" or x.size == 0:
        return True
    with np.errstate(over="ignore", invalid="ignore"):
        return bool(np.isfinite(x.sum(dtype=np.float64)))


def count_nonfinite(x: np.ndarray) -> int:
    """Number of NaN and ±inf values."""
    if _all_finite(x):
        return 0
    return int(x.size - np.count_nonzero(np.isfinite(x)))


def _chunk_stats_start(x: np.ndarray, n_components: int, kind: CovarianceType | None,
                       far_capacity: int, count: bool = True) -> Stats:
    """Empty statistics of a chunk (a mixture's of covariance type ``kind``, or k-means'
    when ``None``), with its row count and non-finite count filled in."""
    d = x.shape[1]
    stats = Stats.zeros(n_components, d,
                        None if kind is None else kind.s2_shape(n_components, d), far_capacity)
    stats.n_samples = x.shape[0]
    stats.n_nonfinite = count_nonfinite(x) if count else 0
    return stats


# --------------------------------------------------------------------------- features


def _fill_features(xb: np.ndarray, shift: np.ndarray, quad: int, out: np.ndarray) -> None:
    """``out`` (m × rows) ← F(x − shift) for a block ``xb`` (rows × d), in place.

    The last row of ``out`` is ones; it is set when the buffer is made.
    """
    d = xb.shape[1]
    q = out.shape[0] - d - 1
    zt = out[q:q + d]
    np.subtract(xb.T, shift[:, None], out=zt)
    if quad == QUAD_OUTER:
        start = 0
        for i in range(d):
            np.multiply(zt[i:i + 1], zt[i:], out=out[start:start + d - i])
            start += d - i
    elif quad == QUAD_SQUARE:
        np.multiply(zt, zt, out=out[:d])
    else:
        np.einsum("db,db->b", zt, zt, out=out[0])


class _Workspace:
    """Buffers of one chunk's blocks; views of the first ``rows`` columns or rows."""

    def __init__(self, **shapes) -> None:
        self._buffers = {name: np.empty(shape, dtype=dtype)
                         for name, (shape, dtype) in shapes.items()}

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["_buffers"][name]
        except KeyError:
            raise AttributeError(name) from None


# --------------------------------------------------------------------------- mixtures


@dataclass(frozen=True)
class GaussianKernelParams:
    """A mixture's parameters in the form the chunk kernels use them (all float64)."""

    covariance_type: str
    shift: np.ndarray  # (d,) s
    weights_t: np.ndarray  # (K, m): W, so that log π_k N_k = W F(x − s)
    hard: bool = False
    far_capacity: int = 0
    # missing="marginalize": the parameters the E-step of rows with NaN needs (None: NaN
    # is an error, counted like inf).
    marginal: MarginalParams | None = None

    @classmethod
    def build(cls, weights, means, prec_chol, covariance_type, *, hard=False,
              far_capacity=0, marginalize=False) -> GaussianKernelParams:
        weights = np.asarray(weights, dtype=np.float64)
        means = np.asarray(means, dtype=np.float64)
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        k, d = means.shape
        kind = covariance(covariance_type)
        shift = (np.average(means, axis=0, weights=weights) if weights.sum() > 0
                 else means.mean(axis=0))
        centred = means - shift
        quad, linear = kind.linear_form(prec_chol, centred)
        maha_const = np.einsum("kd,kd->k", linear, centred)
        with np.errstate(divide="ignore"):
            log_w = np.log(weights)
        log_det = np.broadcast_to(kind.log_det(prec_chol, d), (k,))
        weights_t = np.ascontiguousarray(np.hstack([
            -0.5 * quad, linear,
            (log_w + log_det - 0.5 * d * LOG_2PI - 0.5 * maha_const)[:, None]]))
        return cls(
            covariance_type=covariance_type,
            shift=shift,
            weights_t=weights_t,
            hard=hard,
            far_capacity=far_capacity,
            marginal=(MarginalParams.build(weights, means, prec_chol, kind, shift, weights_t)
                      if marginalize else None),
        )

    @property
    def kind(self) -> CovarianceType:
        return covariance(self.covariance_type)

    @property
    def n_components(self) -> int:
        return self.weights_t.shape[0]

    @property
    def n_features(self) -> int:
        return self.shift.shape[0]


def _mixture_workspace(n_rows: int, d: int, m: int, k: int):
    """Buffers for blocks of a chunk; ``m`` is the width of the feature map F."""
    rows = block_rows(n_rows, m + 2 * k)
    ws = _Workspace(features=((m, rows), np.float64), log_prob=((k, rows), np.float64),
                    gram=((k, m), np.float64))
    ws.features[-1] = 1.0
    return rows, ws


def _mixture_log_prob(xb: np.ndarray, p: GaussianKernelParams, ws) -> tuple:
    """Features and log π_k N(x | μ_k, Σ_k) of one block: views (m × b) and (K × b)."""
    b = xb.shape[0]
    features = ws.features[:, :b]
    _fill_features(xb, p.shift, p.kind.quad, features)
    log_prob = ws.log_prob[:, :b]
    np.matmul(p.weights_t, features, out=log_prob)
    return features, log_prob


def _normalise_in_place(log_prob: np.ndarray) -> np.ndarray:
    """Turn (K × b) log-probabilities into responsibilities in place; return log-sum-exp."""
    top = log_prob.max(axis=0)
    # A row no component can explain (all −inf) keeps −inf and zero responsibility.
    top[~np.isfinite(top)] = 0.0
    log_prob -= top
    np.exp(log_prob, out=log_prob)
    total = log_prob.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_prob /= total
        return np.log(total) + top


def _logsumexp_rows(log_prob: np.ndarray) -> np.ndarray:
    """log-sum-exp over components (axis 0) without touching ``log_prob``."""
    top = log_prob.max(axis=0)
    top[~np.isfinite(top)] = 0.0
    with np.errstate(divide="ignore"):
        return np.log(np.exp(log_prob - top).sum(axis=0)) + top


def _add_mixture_stats(stats: Stats, resp: np.ndarray, features: np.ndarray, d: int,
                       gram: np.ndarray, kind: CovarianceType) -> None:
    """``stats`` += Σ r, Σ r z and Σ r q(z) of a block, from responsibilities (K × b)."""
    np.matmul(resp, features.T, out=gram)
    q = gram.shape[1] - d - 1
    stats.nk += gram[:, -1]
    stats.s1 += gram[:, q:q + d]
    if kind.keeps_s2:
        stats.s2 += kind.s2_from_quad(gram[:, :q])


def gaussian_log_prob(x: np.ndarray, p: GaussianKernelParams) -> np.ndarray:
    """log(π_k N(x | μ_k, Σ_k)) for every row, shape (n_samples, n_components), float64.

    With ``p.marginal``, rows with NaN get the density of their observed part, and rows
    with nothing observed NaN.
    """
    if p.marginal is not None and has_nan(x):
        _, complete, partial, _ = split_rows(x)
        out = np.full((x.shape[0], p.n_components), np.nan)
        out[complete] = gaussian_log_prob(x[complete], replace(p, marginal=None))
        out[partial] = marginal_log_prob(x[partial], p.marginal)
        return out
    n, d = x.shape
    k = p.n_components
    out = np.empty((n, k))
    rows, ws = _mixture_workspace(n, d, p.weights_t.shape[1], k)
    for start in range(0, n, rows):
        _, log_prob = _mixture_log_prob(x[start:start + rows], p, ws)
        out[start:start + rows] = log_prob.T
    return out


def gaussian_chunk_stats(x: np.ndarray, w: np.ndarray | None, offset: int,
                         p: GaussianKernelParams) -> Stats:
    """E-step over one chunk and the mixture's statistics, shifted by ``p.shift``: the
    compiled kernel (:func:`~daskem.kernels.compiled.mixture_fused`), or its NumPy twin."""
    if p.marginal is not None and has_nan(x):
        return _with_missing(x, w, offset, p, _compiled(x))
    compiled = _compiled(x)
    if compiled is None:
        return gaussian_chunk_stats_numpy(x, w, offset, p)
    return _gaussian_compiled(x, w, offset, p, compiled)


def _gaussian_compiled(x: np.ndarray, w: np.ndarray | None, offset: int,
                       p: GaussianKernelParams, compiled, rows: np.ndarray | None = None,
                       ) -> Stats:
    """The compiled mixture kernel over a chunk (``rows``: only these rows; the others
    are not read, not counted, never far points)."""
    kind = p.kind
    stats = _chunk_stats_start(x, p.n_components, kind, p.far_capacity, count=rows is None)
    *sums, lse = compiled.mixture_fused(
        x, w, p.shift, p.weights_t, kind.quad, p.hard, p.far_capacity > 0, rows=rows)
    _add_sums(stats, kind, *sums)
    if p.far_capacity:
        far = stats.far.merge_block(
            -lse, x, lambda picked: np.argmax(gaussian_log_prob(x[picked], p), axis=1), w,
            offset)
        if rows is not None:
            keep = far.score > -np.inf  # the rows not read
            far = FarPoints(far.score[keep], far.index[keep], far.x[keep], far.label[keep],
                            far.weight[keep], far.capacity)
        stats.far = far
    return stats


def gaussian_chunk_stats_numpy(x: np.ndarray, w: np.ndarray | None, offset: int,
                               p: GaussianKernelParams) -> Stats:
    """E-step over one chunk and the mixture's statistics, shifted by ``p.shift``: the
    NumPy reference twin of the compiled kernel, in blocks of NumPy operations."""
    if p.marginal is not None and has_nan(x):
        return _with_missing(x, w, offset, p, None)
    n, d = x.shape
    k = p.n_components
    kind = p.kind
    stats = _chunk_stats_start(x, k, kind, p.far_capacity)
    rows, ws = _mixture_workspace(n, d, p.weights_t.shape[1], k)
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        b = xb.shape[0]
        wb = None if w is None else np.asarray(w[start:start + rows], dtype=np.float64)
        features, log_prob = _mixture_log_prob(xb, p, ws)
        if p.hard:
            labels = np.argmax(log_prob, axis=0)
            # Classification EM: the objective is the complete-data log-likelihood.
            per_row = log_prob[labels, np.arange(b)]
            lse = _logsumexp_rows(log_prob)
            log_prob[...] = 0.0
            log_prob[labels, np.arange(b)] = 1.0
        else:
            lse = _normalise_in_place(log_prob)
            per_row = lse
            labels = None
        resp = log_prob
        if wb is None:
            stats.objective += float(per_row.sum())
            stats.weight_sum += float(b)
        else:
            resp *= wb
            stats.objective += float(per_row @ wb)
            stats.weight_sum += float(wb.sum())
        _add_mixture_stats(stats, resp, features, d, ws.gram, kind)
        if p.far_capacity:
            labels = labels if labels is not None else (
                lambda rows, resp=resp: np.argmax(resp[:, rows], axis=0))
            stats.far = stats.far.merge_block(-lse, xb, labels, wb, offset + start)
    return stats


def has_nan(x: np.ndarray) -> bool:
    """Whether ``x`` holds a NaN."""
    return not _all_finite(x) and bool(np.isnan(x).any())


def _complete_rows_stats(kernel, x: np.ndarray, w: np.ndarray | None, offset: int,
                         complete: np.ndarray, plain) -> Stats:
    """``kernel`` on a copy of the ``complete`` rows of a chunk, its far points named by
    their rows in the whole data."""
    stats = kernel(np.ascontiguousarray(x[complete]),
                   None if w is None else np.asarray(w)[complete], 0, plain)
    far = stats.far
    stats.far = FarPoints(far.score, complete[far.index].astype(np.int64) + offset, far.x,
                          far.label, far.weight, far.capacity)
    return stats


def _add_sums(stats: Stats, kind: CovarianceType, nk, s1, quad_sums, objective,
              weight_sum) -> None:
    """``stats`` += a kernel's sums (Σ r, Σ r z, Σ r q(z), objective, Σ w)."""
    stats.nk += nk
    stats.s1 += s1
    if kind.keeps_s2:
        stats.s2 += kind.s2_from_quad(quad_sums)
    stats.objective += objective
    stats.weight_sum += weight_sum


def _with_missing(x: np.ndarray, w: np.ndarray | None, offset: int, p: GaussianKernelParams,
                  compiled) -> Stats:
    """A chunk with NaN under ``missing="marginalize"``: its complete rows by today's path
    (``compiled``: the compiled kernel reading just those rows of the chunk, no copy; else
    the NumPy twin on a copy of the complete rows), the rows with a missing value through
    :func:`~daskem.kernels.marginal.marginal_stats` or its compiled twin
    (:func:`~daskem.kernels.compiled.marginal_fused`); rows with nothing observed are left
    out. Far points (re-seeding candidates) are complete rows."""
    plain = replace(p, marginal=None)
    if compiled is None:
        _, complete, partial, _ = split_rows(x)
        n_inf = int(np.isinf(x).sum())
        stats = _complete_rows_stats(gaussian_chunk_stats_numpy, x, w, offset, complete, plain)
        marginal_kernel = marginal_stats
    else:
        per_row, n_inf = compiled.scan_missing(x)
        complete = np.flatnonzero(per_row == 0)
        stats = _gaussian_compiled(x, w, offset, plain, compiled, rows=complete)
        stats.n_samples = len(complete)
        partial = np.flatnonzero((per_row > 0) & (per_row < x.shape[1]))
        marginal_kernel = compiled.marginal_fused
    kind = p.kind
    wp = None if w is None else np.asarray(w, dtype=np.float64)[partial]
    _add_sums(stats, kind, *marginal_kernel(x[partial], wp, p.marginal, p.shift, kind.quad,
                                            kind.keeps_s2, p.hard))
    stats.n_samples += len(partial)
    stats.n_nonfinite = n_inf
    return stats


@dataclass
class LogLikelihood:
    """Σ w·log p(x) over some rows (for ``score``, BIC and AIC)."""

    total: float
    weight_sum: float
    n_nonfinite: int

    def __add__(self, other: LogLikelihood) -> LogLikelihood:
        return LogLikelihood(self.total + other.total, self.weight_sum + other.weight_sum,
                             self.n_nonfinite + other.n_nonfinite)


def gaussian_loglik_chunk(x: np.ndarray, w: np.ndarray | None, offset: int,
                          p: GaussianKernelParams) -> LogLikelihood:
    lse = _logsumexp_rows(gaussian_log_prob(x, p).T)
    if p.marginal is not None and has_nan(x):
        # Rows with nothing observed (NaN here) carry no information: left out.
        kept = ~np.isnan(lse)
        w = np.ones(x.shape[0]) if w is None else np.asarray(w, dtype=np.float64)
        w = np.where(kept, w, 0.0)
        lse = np.where(kept, lse, 0.0)
        return LogLikelihood(float(lse @ w), float(w.sum()), int(np.isinf(x).sum()))
    weight = float(x.shape[0]) if w is None else float(np.sum(w))
    total = float(lse.sum()) if w is None else float(lse @ w)
    return LogLikelihood(total, weight, count_nonfinite(x))


def responsibilities(x: np.ndarray, p: GaussianKernelParams) -> tuple:
    """(responsibilities (n, K), log p(x) (n,)) of every row."""
    log_prob = gaussian_log_prob(x, p).T.copy()
    lse = _normalise_in_place(log_prob)
    return np.ascontiguousarray(log_prob.T), lse


# --------------------------------------------------------------------------- k-means


@dataclass(frozen=True)
class KMeansKernelParams:
    """k-means centers in the form the chunk kernels use them.

    ``covariance_type`` asks, instead of the k-means statistics, for a mixture's
    statistics of the hard clusters (used to initialise a mixture from centers).
    """

    centers: np.ndarray  # (K, d) in the data's dtype: also the statistics' shift
    shift: np.ndarray  # (d,) in the data's dtype
    scorer: np.ndarray  # (d + 1, K): [−2 (c − s)ᵀ; ‖c − s‖²]
    covariance_type: str | None = None
    far_capacity: int = 0
    # missing="marginalize": rows with NaN are assigned by partial distances (None: NaN
    # is an error, counted like inf)
    marginalize: bool = False

    @classmethod
    def build(cls, centers, dtype, covariance_type=None, far_capacity=0,
              marginalize=False) -> KMeansKernelParams:
        centers = np.asarray(centers, dtype=np.float64)
        shift = centers.mean(axis=0).astype(dtype)
        shifted = centers.astype(dtype).astype(np.float64) - shift
        scorer = np.vstack([-2.0 * shifted.T, np.einsum("kd,kd->k", shifted, shifted)])
        return cls(
            centers=centers.astype(dtype),
            shift=shift,
            scorer=np.ascontiguousarray(scorer.astype(dtype)),
            covariance_type=covariance_type,
            far_capacity=far_capacity,
            marginalize=marginalize,
        )

    @property
    def n_clusters(self) -> int:
        return self.centers.shape[0]


def _kmeans_workspace(n_rows: int, d: int, k: int, dtype):
    rows = block_rows(n_rows, 2 * d + k + 1)
    ws = _Workspace(augmented=((rows, d + 1), dtype), scores=((rows, k), dtype),
                    resid=((rows, d), dtype))
    ws.augmented[:, d] = 1.0
    return rows, ws


def _kmeans_labels_block(xb: np.ndarray, p: KMeansKernelParams, ws) -> np.ndarray:
    b, d = xb.shape
    augmented = ws.augmented[:b]
    np.subtract(xb, p.shift, out=augmented[:, :d])
    scores = ws.scores[:b]
    np.matmul(augmented, p.scorer, out=scores)
    return scores.argmin(axis=1)


def _label_margin(scores: np.ndarray, dist_sq: np.ndarray, augmented: np.ndarray,
                  p: KMeansKernelParams) -> float:
    """A lower bound over the block's rows of ‖x − c_2nd‖ − ‖x − c_nearest‖.

    ``scores`` are ‖c − s‖² − 2 (x − s)·(c − s) = ‖x − c‖² − ‖x − s‖², so the gap between
    the two smallest is d₂² − d₁², less a bound on its rounding (the GEMM in the data's
    dtype); d₂ − d₁ = gap / (d₂ + d₁).
    """
    k = scores.shape[1]
    if k < 2 or scores.shape[0] == 0:
        return np.inf
    two = np.partition(scores, 1, axis=1)[:, :2].astype(np.float64)
    gap = two[:, 1] - two[:, 0]
    d = augmented.shape[1] - 1
    eps = float(np.finfo(scores.dtype).eps)
    x_norm = np.einsum("ij,ij->i", augmented[:, :d], augmented[:, :d]).astype(np.float64)
    reach = float(p.scorer[-1].astype(np.float64).max())  # max ‖c − s‖²
    gap -= 4.0 * (d + 2) * eps * (x_norm + reach)
    d1 = np.sqrt(dist_sq)
    margin = gap / (np.sqrt(dist_sq + np.maximum(gap, 0.0)) + d1 + 1e-300)
    return float(margin.min())


def partial_squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """The partial distance strategy: ‖x_o − c_o‖² over each row's observed features,
    scaled by n_features / n_observed, (n_samples, n_clusters) float64; NaN for a row with
    nothing observed. Equal to :func:`squared_distances` on complete rows."""
    x = np.asarray(x, dtype=np.float64)
    centers = np.asarray(centers, dtype=np.float64)
    observed = ~np.isnan(x)
    shift = centers.mean(axis=0)
    xs = np.where(observed, x - shift, 0.0)
    cs = centers - shift
    out = xs @ cs.T
    out *= -2.0
    out += np.einsum("ij,ij->i", xs, xs)[:, None]
    out += observed.astype(np.float64) @ (cs * cs).T
    np.maximum(out, 0.0, out=out)
    with np.errstate(divide="ignore", invalid="ignore"):
        out *= (x.shape[1] / observed.sum(axis=1))[:, None]
    out[~observed.any(axis=1)] = np.nan
    return out


def kmeans_partial_labels(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Nearest center by partial distances; −1 for a row with nothing observed."""
    dist = partial_squared_distances(x, centers)
    labels = np.argmin(np.where(np.isnan(dist), np.inf, dist), axis=1)
    labels[np.isnan(dist[:, 0])] = -1
    return labels


def _kmeans_with_missing(x: np.ndarray, w: np.ndarray | None, offset: int,
                         p: KMeansKernelParams, complete_kernel) -> Stats:
    """A chunk with NaN under ``missing="marginalize"``: complete rows through
    ``complete_kernel``, the others assigned by partial distances, their observed values
    counted per feature (``Stats.counts``); rows with nothing observed left out. The
    label-stability margin is 0 (no proof that labels stay: the fit stops on ``tol``)."""
    _, complete, partial, _ = split_rows(x)
    stats = _complete_rows_stats(complete_kernel, x, w, offset, complete,
                                 replace(p, marginalize=False))
    xp = np.asarray(x[partial], dtype=np.float64)
    wp = np.ones(len(partial)) if w is None else np.asarray(w, dtype=np.float64)[partial]
    centers = p.centers.astype(np.float64)
    dist = partial_squared_distances(xp, centers)
    labels = np.argmin(dist, axis=1)
    observed = ~np.isnan(xp)
    resid = np.where(observed, xp - centers[labels], 0.0)
    onehot_t = _onehot_t(labels, p.n_clusters, wp, np.float64)
    counts = stats.feature_counts + onehot_t @ observed.astype(np.float64)
    stats.nk += np.bincount(labels, weights=wp, minlength=p.n_clusters)
    stats.s1 += np.asarray(onehot_t @ resid)
    stats.counts = counts
    stats.objective += float(dist[np.arange(len(partial)), labels] @ wp)
    stats.weight_sum += float(wp.sum())
    stats.n_samples += len(partial)
    stats.n_nonfinite = int(np.isinf(x).sum())
    if len(partial):
        stats.margin = 0.0
    return stats


def kmeans_labels(x: np.ndarray, p: KMeansKernelParams) -> np.ndarray:
    if p.marginalize and has_nan(x):
        return kmeans_partial_labels(x, p.centers)
    n, d = x.shape
    out = np.empty(n, dtype=np.int64)
    rows, ws = _kmeans_workspace(n, d, p.n_clusters, p.centers.dtype)
    for start in range(0, n, rows):
        out[start:start + rows] = _kmeans_labels_block(x[start:start + rows], p, ws)
    return out


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """‖x − c_k‖² for every row and center, shape (n_samples, n_clusters), float64.

    Used for ``transform`` and seeding; clipped at zero where rounding made it negative.
    """
    centers = np.asarray(centers, dtype=np.float64)
    shift = centers.mean(axis=0) if len(centers) else np.zeros(x.shape[1])
    xs = np.asarray(x, dtype=np.float64) - shift
    cs = centers - shift
    out = xs @ cs.T
    out *= -2.0
    out += np.einsum("ij,ij->i", xs, xs)[:, None]
    out += np.einsum("kd,kd->k", cs, cs)[None, :]
    return np.maximum(out, 0.0, out=out)


def _onehot_t(labels: np.ndarray, n_groups: int, weights: np.ndarray | None, dtype):
    """Sparse (groups × rows) indicator of ``labels``, with ``weights`` as its values.

    Built column-compressed (one entry per row-column): cheaper to make and to multiply
    than the transpose of a row-compressed (rows × groups) matrix, with the same sums.
    """
    b = labels.shape[0]
    values = np.ones(b, dtype=dtype) if weights is None else weights.astype(dtype)
    return sparse.csc_matrix((values, labels, np.arange(b + 1)), shape=(n_groups, b))


def kmeans_chunk_stats(x: np.ndarray, w: np.ndarray | None, offset: int,
                       p: KMeansKernelParams) -> Stats:
    """Assignment to the nearest center and the statistics of one chunk: the compiled
    kernel (:func:`~daskem.kernels.compiled.kmeans_fused`), or its NumPy twin (which also
    serves ``p.covariance_type``, a mixture's statistics of the hard clusters: one pass
    when a mixture starts)."""
    if p.marginalize and has_nan(x):
        return _kmeans_with_missing(x, w, offset, p, kmeans_chunk_stats)
    compiled = _compiled(x)
    if compiled is None or p.covariance_type is not None:
        return kmeans_chunk_stats_numpy(x, w, offset, p)
    stats = _chunk_stats_start(x, p.n_clusters, None, p.far_capacity)
    labels, dist_sq, nk, s1, objective, weight_sum, margin = compiled.kmeans_fused(
        x, w, p.shift, p.scorer, p.centers)
    stats.nk += nk
    stats.s1 += s1
    stats.objective += objective
    stats.weight_sum += weight_sum
    stats.margin = margin
    if p.far_capacity:
        stats.far = stats.far.merge_block(dist_sq, x, labels, w, offset)
    return stats


def kmeans_chunk_stats_numpy(x: np.ndarray, w: np.ndarray | None, offset: int,
                             p: KMeansKernelParams) -> Stats:
    """Assignment to the nearest center and the statistics of one chunk (the NumPy
    reference twin of the compiled kernel).

    k-means statistics: ``s1`` is shifted by the assigned center, and the inertia is
    summed from the explicit residuals ``x − c_label`` (exact to rounding). With
    ``p.covariance_type``, a mixture's statistics of the hard clusters instead, shifted
    by ``p.shift`` as in :func:`gaussian_chunk_stats`.
    """
    if p.marginalize and has_nan(x):
        return _kmeans_with_missing(x, w, offset, p, kmeans_chunk_stats_numpy)
    n, d = x.shape
    k = p.n_clusters
    kind = None if p.covariance_type is None else covariance(p.covariance_type)
    stats = _chunk_stats_start(x, k, kind, p.far_capacity)
    rows, ws = _kmeans_workspace(n, d, k, x.dtype)
    if kind is not None:
        m = quad_width(kind.quad, d) + d + 1
        mix_rows, mix_ws = _mixture_workspace(rows, d, m, k)
        shift64 = p.shift.astype(np.float64)
    for start in range(0, n, rows):
        xb = x[start:start + rows]
        b = xb.shape[0]
        wb = None if w is None else np.asarray(w[start:start + rows], dtype=np.float64)
        labels = _kmeans_labels_block(xb, p, ws)
        resid = ws.resid[:b]
        # mode="clip": with out=, the default mode copies through a buffer (4x slower).
        np.take(p.centers, labels, axis=0, out=resid, mode="clip")
        np.subtract(xb, resid, out=resid)
        dist_sq = np.einsum("ij,ij->i", resid, resid).astype(np.float64)
        if kind is None:
            stats.margin = min(stats.margin, _label_margin(ws.scores[:b], dist_sq,
                                                           ws.augmented[:b], p))
        stats.weight_sum += float(b) if wb is None else float(wb.sum())
        stats.objective += float(dist_sq.sum()) if wb is None else float(dist_sq @ wb)
        onehot_t = _onehot_t(labels, k, wb, x.dtype)
        if kind is None:
            stats.nk += np.bincount(labels, weights=wb, minlength=k)
            stats.s1 += np.asarray(onehot_t @ resid, dtype=np.float64)
        else:
            for sub in range(0, b, mix_rows):
                sl = slice(sub, sub + mix_rows)
                features = mix_ws.features[:, :xb[sl].shape[0]]
                _fill_features(xb[sl], shift64, kind.quad, features)
                resp = onehot_t[:, sl].toarray().astype(np.float64)
                _add_mixture_stats(stats, resp, features, d, mix_ws.gram, kind)
        if p.far_capacity:
            stats.far = stats.far.merge_block(dist_sq, xb, labels, wb, offset + start)
    return stats
