"""The E-step of one chunk, fused with the statistics the M-step needs.

A chunk is processed in blocks of rows small enough for their temporaries (a few MiB) to
stay in cache; each block's statistics are added in float64. The data keep their dtype
inside a block (float32 math is about twice as fast), the log-densities and everything
summed across blocks are float64.

The per-component differences ``D[k] = x − μ_k`` are computed once per block and serve
both the Mahalanobis terms of the E-step (``‖D[k] U_k‖²`` through the precision's
Cholesky factor) and the shifted scatter matrices of the M-step (``(r_k D[k])ᵀ D[k]``), so
that every heavy operation is one batched matrix product.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

from daskem.kernels.gaussian import LOG_2PI, log_det_cholesky
from daskem.kernels.stats import FarPoints, Stats, s2_shape

# Temporaries of one block hold about this many elements (2 MiB of float64).
BLOCK_ELEMENTS = 1 << 18


def block_rows(n_rows: int, width: int) -> int:
    """Rows per block when each row of a block needs ``width`` temporary elements."""
    return int(max(64, min(max(n_rows, 1), BLOCK_ELEMENTS // max(width, 1))))


def count_nonfinite(x: np.ndarray) -> int:
    if x.dtype.kind != "f":
        return 0
    return int(x.size - np.count_nonzero(np.isfinite(x)))


# --------------------------------------------------------------------------- mixtures


@dataclass(frozen=True)
class GaussianKernelParams:
    """A mixture's parameters in the form the chunk kernels use them.

    ``means`` and ``prec_chol`` are in the data's dtype; ``means`` is also the shift of the
    statistics, so the M-step reads it back (as float64) from here.
    """

    covariance_type: str
    means: np.ndarray
    prec_chol: np.ndarray
    log_norm: np.ndarray  # (n_components,) float64: log weight + log det − d/2 log 2π
    hard: bool = False
    far_capacity: int = 0

    @classmethod
    def build(cls, weights, means, prec_chol, covariance_type, dtype, hard=False,
              far_capacity=0) -> GaussianKernelParams:
        means = np.asarray(means, dtype=np.float64)
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        d = means.shape[1]
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        log_det = np.broadcast_to(log_det_cholesky(prec_chol, covariance_type, d),
                                  log_w.shape)
        return cls(
            covariance_type=covariance_type,
            means=means.astype(dtype),
            prec_chol=prec_chol.astype(dtype),
            log_norm=log_w + log_det - 0.5 * d * LOG_2PI,
            hard=hard,
            far_capacity=far_capacity,
        )

    @property
    def n_components(self) -> int:
        return self.means.shape[0]


def _gaussian_block(xb: np.ndarray, p: GaussianKernelParams):
    """Weighted log-densities of one block, shape (n_components, rows), and what they reuse.

    Returns ``(log_prob, diff, diff_sq)``; ``diff_sq`` is the per-feature square (diag),
    the per-row sum of squares (spherical, fixed) or ``None``.
    """
    diff = xb[None, :, :] - p.means[:, None, :]  # (K, b, d)
    ctype = p.covariance_type
    diff_sq = None
    if ctype == "full":
        y = np.matmul(diff, p.prec_chol)
        maha = np.einsum("kbd,kbd->kb", y, y)
    elif ctype == "tied":
        k, b, d = diff.shape
        y = (diff.reshape(k * b, d) @ p.prec_chol).reshape(k, b, d)
        maha = np.einsum("kbd,kbd->kb", y, y)
    elif ctype == "diag":
        diff_sq = diff * diff
        maha = np.matmul(diff_sq, (p.prec_chol * p.prec_chol)[:, :, None])[:, :, 0]
    else:  # spherical, fixed
        diff_sq = np.einsum("kbd,kbd->kb", diff, diff)
        maha = diff_sq * (p.prec_chol * p.prec_chol)[:, None]
    log_prob = p.log_norm[:, None] - 0.5 * maha.astype(np.float64)
    return log_prob, diff, diff_sq


def _normalise(log_prob: np.ndarray):
    """log-sum-exp over components (axis 0) and the responsibilities, sharing one exp."""
    top = log_prob.max(axis=0)
    # A row that no component can explain (all −inf) keeps −inf and zero responsibility.
    safe_top = np.where(np.isfinite(top), top, 0.0)
    e = np.exp(log_prob - safe_top)
    total = e.sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        lse = np.log(total) + safe_top
        resp = e / total
    return lse, resp


def gaussian_log_prob(x: np.ndarray, p: GaussianKernelParams) -> np.ndarray:
    """log(π_k N(x | μ_k, Σ_k)) for every row, shape (n_samples, n_components), float64."""
    n, d = x.shape
    out = np.empty((n, p.n_components))
    step = block_rows(n, p.n_components * d)
    for start in range(0, n, step):
        log_prob, _, _ = _gaussian_block(x[start:start + step], p)
        out[start:start + step] = log_prob.T
    return out


def gaussian_chunk_stats(x: np.ndarray, w: np.ndarray | None, offset: int,
                         p: GaussianKernelParams) -> Stats:
    """E-step over one chunk and the mixture's statistics, shifted by the current means."""
    n, d = x.shape
    k = p.n_components
    ctype = p.covariance_type
    stats = Stats.zeros(k, d, s2_shape(ctype, k, d), p.far_capacity)
    stats.n_samples = n
    stats.n_nonfinite = count_nonfinite(x)
    step = block_rows(n, k * d)
    for start in range(0, n, step):
        xb = x[start:start + step]
        wb = None if w is None else w[start:start + step]
        log_prob, diff, diff_sq = _gaussian_block(xb, p)
        lse, resp = _normalise(log_prob)
        if p.hard:
            labels = np.argmax(log_prob, axis=0)
            # Classification EM: the objective is the complete-data log-likelihood.
            per_row = log_prob[labels, np.arange(labels.shape[0])]
            resp = np.zeros_like(resp)
            resp[labels, np.arange(labels.shape[0])] = 1.0
        else:
            per_row = lse
            labels = None
        if wb is not None:
            resp = resp * wb
            stats.objective += float(per_row @ wb)
            stats.weight_sum += float(wb.sum())
        else:
            stats.objective += float(per_row.sum())
            stats.weight_sum += float(per_row.shape[0])
        stats.nk += resp.sum(axis=1)
        r = resp.astype(x.dtype, copy=False)
        stats.s1 += np.matmul(r[:, None, :], diff)[:, 0, :]
        if ctype == "full":
            stats.s2 += np.matmul((diff * r[:, :, None]).transpose(0, 2, 1), diff)
        elif ctype == "tied":
            flat = diff.reshape(-1, d)
            stats.s2 += (diff * r[:, :, None]).reshape(-1, d).T @ flat
        elif ctype == "diag":
            stats.s2 += np.matmul(r[:, None, :], diff_sq)[:, 0, :]
        elif ctype == "spherical":
            stats.s2 += np.einsum("kb,kb->k", r, diff_sq)
        if p.far_capacity:
            if labels is None:
                labels = np.argmax(log_prob, axis=0)
            block_far = FarPoints.from_block(-per_row, xb, labels, wb, offset + start,
                                             p.far_capacity)
            stats.far = stats.far.merge(block_far)
    return stats


# --------------------------------------------------------------------------- k-means


@dataclass(frozen=True)
class KMeansKernelParams:
    """k-means centers in the form the chunk kernels use them.

    Distances are computed as ``‖c‖² − 2 x·c`` (``‖x‖²`` does not change the arg-min)
    after subtracting a common ``shift`` from data and centers, which keeps the
    expansion accurate for data far from the origin. ``covariance_type`` asks for the
    scatter statistics of the hard clusters as well (to initialise a mixture).
    """

    centers: np.ndarray  # (K, d) in the data's dtype: also the statistics' shift
    shift: np.ndarray  # (d,)
    centers_shifted: np.ndarray  # (K, d)
    centers_sq: np.ndarray  # (K,)
    covariance_type: str | None = None
    far_capacity: int = 0

    @classmethod
    def build(cls, centers, dtype, covariance_type=None, far_capacity=0) -> KMeansKernelParams:
        centers = np.asarray(centers, dtype=np.float64)
        shift = centers.mean(axis=0)
        shifted = (centers.astype(dtype).astype(np.float64) - shift.astype(dtype))
        return cls(
            centers=centers.astype(dtype),
            shift=shift.astype(dtype),
            centers_shifted=shifted.astype(dtype),
            centers_sq=np.einsum("kd,kd->k", shifted, shifted).astype(dtype),
            covariance_type=covariance_type,
            far_capacity=far_capacity,
        )

    @property
    def n_clusters(self) -> int:
        return self.centers.shape[0]


def _kmeans_block_scores(xb: np.ndarray, p: KMeansKernelParams) -> np.ndarray:
    """``‖c_k‖² − 2 x·c_k`` (shifted), shape (rows, n_clusters): arg-min is the label."""
    scores = (xb - p.shift) @ p.centers_shifted.T
    scores *= -2
    scores += p.centers_sq
    return scores


def kmeans_labels(x: np.ndarray, p: KMeansKernelParams) -> np.ndarray:
    n, d = x.shape
    out = np.empty(n, dtype=np.int64)
    step = block_rows(n, max(p.n_clusters, d))
    for start in range(0, n, step):
        out[start:start + step] = np.argmin(_kmeans_block_scores(x[start:start + step], p),
                                            axis=1)
    return out


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """‖x − c_k‖² for every row and center, shape (n_samples, n_clusters), float64.

    Used for ``transform`` and seeding; clipped at zero where rounding made it negative.
    """
    x = np.asarray(x)
    centers = np.asarray(centers, dtype=np.float64)
    shift = centers.mean(axis=0) if len(centers) else np.zeros(x.shape[1])
    xs = x.astype(np.float64) - shift
    cs = centers - shift
    out = np.einsum("ij,ij->i", xs, xs)[:, None] - 2.0 * (xs @ cs.T) + np.einsum(
        "kd,kd->k", cs, cs)[None, :]
    return np.maximum(out, 0.0)


def _group_sums(labels: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Σ of ``values`` rows per label, shape (n_groups, ...), in float64 (a sparse product)."""
    b = labels.shape[0]
    onehot = sparse.csr_matrix(
        (np.ones(b, dtype=values.dtype), labels, np.arange(b + 1)), shape=(b, n_groups))
    flat = values.reshape(b, -1)
    return np.asarray((onehot.T @ flat), dtype=np.float64).reshape((n_groups,) + values.shape[1:])


def kmeans_chunk_stats(x: np.ndarray, w: np.ndarray | None, offset: int,
                       p: KMeansKernelParams) -> Stats:
    """Assignment to the nearest center and the k-means statistics of one chunk.

    ``s1`` is shifted by the assigned center, and the inertia is summed from the explicit
    residuals ``x − c_label`` rather than from the distance expansion, so it is exact to
    rounding.
    """
    n, d = x.shape
    k = p.n_clusters
    ctype = p.covariance_type
    stats = Stats.zeros(k, d, s2_shape(ctype, k, d), p.far_capacity)
    stats.n_samples = n
    stats.n_nonfinite = count_nonfinite(x)
    step = block_rows(n, max(k, d))
    for start in range(0, n, step):
        xb = x[start:start + step]
        wb = None if w is None else np.asarray(w[start:start + step])
        labels = np.argmin(_kmeans_block_scores(xb, p), axis=1)
        resid = xb - p.centers[labels]
        dist_sq = np.einsum("ij,ij->i", resid, resid).astype(np.float64)
        if wb is None:
            stats.nk += np.bincount(labels, minlength=k)
            stats.objective += float(dist_sq.sum())
            stats.weight_sum += float(labels.shape[0])
            weighted = resid
        else:
            stats.nk += np.bincount(labels, weights=wb, minlength=k)
            stats.objective += float(dist_sq @ wb)
            stats.weight_sum += float(wb.sum())
            weighted = resid * wb.astype(x.dtype)[:, None]
        stats.s1 += _group_sums(labels, weighted, k)
        if ctype == "full":
            stats.s2 += _group_sums(labels, weighted[:, :, None] * resid[:, None, :], k)
        elif ctype == "tied":
            stats.s2 += weighted.T.astype(np.float64) @ resid
        elif ctype == "diag":
            stats.s2 += _group_sums(labels, weighted * resid, k)
        elif ctype == "spherical":
            w_dist = dist_sq if wb is None else dist_sq * wb
            stats.s2 += np.bincount(labels, weights=w_dist, minlength=k)
        if p.far_capacity:
            block_far = FarPoints.from_block(dist_sq, xb, labels, wb, offset + start,
                                             p.far_capacity)
            stats.far = stats.far.merge(block_far)
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
    lse, _ = _normalise(gaussian_log_prob(x, p).T)
    weight = float(x.shape[0]) if w is None else float(np.sum(w))
    total = float(lse.sum()) if w is None else float(lse @ w)
    return LogLikelihood(total, weight, count_nonfinite(x))
