"""M-steps: new parameters from merged statistics, on arrays of size O(K·d²).

Policies for degenerate components, the same whatever the data size:

* k-means: a cluster that lost all its samples is moved onto the rows farthest from their
  own centers (the farthest first), which are taken out of the clusters they were in;
  never to the origin, never dropped.
* mixtures: a component whose total responsibility fell below one average sample's weight
  has *collapsed*; it is re-seeded at the row the model explains worst, with the
  weighted-average covariance of the other components and the weight of one sample.

Each re-seeding is returned as a :class:`Reseed` record so the caller can warn and keep it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskem.kernels.covariance import covariance
from daskem.kernels.stats import Stats

EPS = float(np.finfo(np.float64).eps)


@dataclass(frozen=True)
class GaussianParams:
    """Parameters of a Gaussian mixture (scikit-learn's attribute shapes), all float64."""

    covariance_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray

    @property
    def n_components(self) -> int:
        return self.means.shape[0]


@dataclass(frozen=True)
class KMeansParams:
    """Parameters of k-means (scikit-learn's attribute name), float64."""

    cluster_centers: np.ndarray

    @property
    def n_components(self) -> int:
        return self.cluster_centers.shape[0]


@dataclass(frozen=True)
class Reseed:
    """One component or cluster moved onto a data row by the degenerate-component policy."""

    component: int
    row: int  # global row index of the new center
    reason: str  # "empty cluster" or "collapsed component"


def kmeans_m_step(stats: Stats, shift: np.ndarray) -> tuple[np.ndarray, list[Reseed]]:
    """New centers from k-means statistics shifted by ``shift`` (the old centers)."""
    nk = stats.nk.copy()
    s1 = stats.s1.copy()
    # With missing values, each feature of a center is the mean of its observed values.
    counts = stats.feature_counts.copy()
    centers = np.asarray(shift, dtype=np.float64).copy()
    events = []
    empty = np.flatnonzero(nk <= 0.0)
    if empty.size:
        far = stats.far
        for j, i in zip(empty, range(len(far.score)), strict=False):
            old = far.label[i]
            wi = far.weight[i]
            # The row (a complete one) leaves its old cluster (shifted statistics)...
            s1[old] -= wi * (far.x[i] - centers[old])
            nk[old] -= wi
            counts[old] -= wi
            # ...and becomes the whole of the empty one.
            centers[j] = far.x[i]
            s1[j] = 0.0
            nk[j] = wi
            counts[j] = wi
            events.append(Reseed(int(j), int(far.index[i]), "empty cluster"))
    seen = (counts > 0.0) & (nk > 0.0)[:, None]
    centers[seen] += s1[seen] / counts[seen]
    return centers, events


def kmeans_labels_stable(stats: Stats, old: np.ndarray, new: np.ndarray, dtype) -> bool:
    """Whether no row would change cluster from the centers ``old`` (those the statistics
    were computed with, already in the data's ``dtype``) to ``new``: true when no center
    moves by half the statistics' margin (by the triangle inequality, a row's distances
    change by at most the movement of each center)."""
    old = np.asarray(old, dtype=np.float64)
    moved = np.asarray(new, dtype=np.float64).astype(dtype).astype(np.float64) - old
    return bool(2.0 * np.sqrt((moved**2).sum(axis=1)).max() < stats.margin)


def kmeans_inertia_after(stats: Stats, old: np.ndarray, new: np.ndarray) -> float:
    """The inertia at the new centers (each its cluster's mean) with the same labels:
    Σ w‖x − c_old‖² = Σ w‖x − c_new‖² + n_k ‖c_new − c_old‖² per cluster."""
    moved = np.asarray(new, dtype=np.float64) - np.asarray(old, dtype=np.float64)
    return float(stats.objective - stats.nk @ (moved**2).sum(axis=1))


def gaussian_m_step(stats: Stats, shift: np.ndarray, covariance_type: str, reg_covar: float,
                    fixed_variance: float = 1.0) -> tuple[GaussianParams, list[Reseed]]:
    """New mixture parameters from statistics shifted by ``shift``, of shape (d,) or (K, d).

    As in scikit-learn, ``10·eps`` is added to every component's mass so that an empty
    component does not divide by zero, the weights are normalised, and ``reg_covar`` is
    added to the diagonal of every covariance.
    """
    n_components, d = stats.s1.shape
    kind = covariance(covariance_type)
    mean_weight = stats.weight_sum / max(stats.n_samples, 1)
    collapsed = np.flatnonzero(stats.nk < mean_weight)
    nk = stats.nk + 10 * EPS
    delta = stats.s1 / nk[:, None]
    means = np.asarray(shift, dtype=np.float64) + delta
    covariances = kind.covariances(stats.s2, nk, delta, reg_covar, fixed_variance)
    events = []
    if collapsed.size and collapsed.size < n_components:
        nk, means, covariances, events = _reseed_collapsed(
            stats, collapsed, nk, means, covariances, kind, mean_weight)
    weights = nk / nk.sum()
    return GaussianParams(
        covariance_type=covariance_type,
        weights=weights,
        means=means,
        covariances=covariances,
        precisions_cholesky=kind.precision_cholesky(covariances),
    ), events


def _reseed_collapsed(stats, collapsed, nk, means, covariances, kind, mean_weight):
    nk = nk.copy()
    means = means.copy()
    covariances = covariances.copy()
    alive = np.setdiff1d(np.arange(nk.shape[0]), collapsed)
    share = nk[alive] / nk[alive].sum()
    events = []
    far = stats.far
    for j, i in zip(collapsed, range(len(far.score)), strict=False):
        means[j] = far.x[i]
        nk[j] = mean_weight
        blended = kind.blend(share, covariances, alive)
        if blended is not None:
            covariances[j] = blended
        events.append(Reseed(int(j), int(far.index[i]), "collapsed component"))
    return nk, means, covariances, events
