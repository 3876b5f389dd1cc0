"""Seeding: k-means++ and Lloyd on an in-memory sample, and the per-chunk step of k-means||.

k-means|| (Bahmani et al., 2012) over the whole data: start from one random row; in each
round keep every row independently with probability ``min(1, ℓ·w·d²/φ)``, where ``d²`` is
its squared distance to the centers chosen so far and ``φ = Σ w·d²``; after a few rounds
weigh each candidate by the mass of rows nearest to it and recluster the candidates with
weighted k-means++ and Lloyd.

The keep test ``u < ℓ·w·d²/φ`` needs the global ``φ``, known only after the pass. Since
``φ ≥ φ_part`` for any part of the data, a chunk keeps the rows with ``w·d²/u > φ_part/ℓ``
(a superset of the rows finally kept, about ℓ of them) and the reduction prunes with the
larger partial sums as they merge; the client applies the exact test at the end. The
numbers ``u`` are addressed by global row (see :mod:`daskem.kernels.random`), so the
candidates do not depend on the chunking.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskem.kernels.covariance import covariance
from daskem.kernels.estep import (
    KMeansKernelParams,
    block_rows,
    kmeans_chunk_stats,
    squared_distances,
)
from daskem.kernels.mstep import EPS, kmeans_m_step
from daskem.kernels.random import row_uniform

PARALLEL_STREAM = 0x6B6D7C


# ------------------------------------------------------------------------ in memory


def kmeans_plusplus(x: np.ndarray, n_clusters: int, rng: np.random.Generator,
                    sample_weight: np.ndarray | None = None,
                    n_local_trials: int | None = None) -> np.ndarray:
    """Greedy k-means++ (Arthur & Vassilvitskii; scikit-learn's variant with local trials).

    Returns the indices of the chosen rows, shape (n_clusters,).
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    w = np.ones(n) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    if n_local_trials is None:
        n_local_trials = 2 + int(np.log(n_clusters))
    chosen = np.empty(n_clusters, dtype=np.int64)
    chosen[0] = rng.choice(n, p=w / w.sum())
    closest = squared_distances(x, x[chosen[:1]])[:, 0]
    for c in range(1, n_clusters):
        cumulative = np.cumsum(closest * w)
        draws = rng.uniform(size=n_local_trials) * cumulative[-1]
        trials = np.minimum(np.searchsorted(cumulative, draws), n - 1)
        dist = np.minimum(closest[None, :], squared_distances(x, x[trials]).T)
        trial_potential = dist @ w
        best = int(np.argmin(trial_potential))
        chosen[c] = trials[best]
        closest = dist[best]
    return chosen


def lloyd(x: np.ndarray, centers: np.ndarray, sample_weight: np.ndarray | None = None,
          max_iter: int = 300, tol: float = 0.0) -> np.ndarray:
    """Weighted Lloyd iterations in memory (used to recluster k-means|| candidates)."""
    centers = np.asarray(centers, dtype=np.float64)
    x = np.asarray(x, dtype=np.float64)
    for _ in range(max_iter):
        params = KMeansKernelParams.build(centers, np.float64, far_capacity=len(centers))
        stats = kmeans_chunk_stats(x, sample_weight, 0, params)
        new, _ = kmeans_m_step(stats, params.centers)
        shift = float(((new - centers) ** 2).sum())
        centers = new
        if shift <= tol:
            break
    return centers


def gaussian_params_from_resp(x, resp, sample_weight, covariance_type, reg_covar,
                              fixed_variance=1.0):
    """Weights, means and covariances from in-memory responsibilities (random init)."""
    w = np.ones(x.shape[0]) if sample_weight is None else sample_weight
    rw = resp * w[:, None]
    nk = rw.sum(axis=0) + 10 * EPS
    means = rw.T @ x / nk[:, None]
    cov = covariance(covariance_type).from_responsibilities(x, rw, nk, means, reg_covar,
                                                            fixed_variance)
    return nk / nk.sum(), means, cov


# ------------------------------------------------------------------------ k-means||


@dataclass(frozen=True)
class ParallelRound:
    """One k-means|| round for several restarts at once."""

    centers: tuple  # per restart: (m, d) float64 centers chosen so far
    seeds: tuple  # per restart
    round: int
    oversampling: tuple  # per restart: ℓ, expected rows kept per round


@dataclass
class Candidates:
    """Rows kept by one round for one restart, and the cost ``φ`` they were kept under."""

    phi: float
    score: np.ndarray  # w·d²/u
    index: np.ndarray
    x: np.ndarray
    oversampling: float

    def pruned(self) -> Candidates:
        keep = self.score > self.phi / self.oversampling
        return Candidates(self.phi, self.score[keep], self.index[keep], self.x[keep],
                          self.oversampling)

    def __add__(self, other: Candidates) -> Candidates:
        index = np.concatenate([self.index, other.index])
        order = np.argsort(index, kind="stable")
        return Candidates(
            self.phi + other.phi,
            np.concatenate([self.score, other.score])[order],
            index[order],
            np.concatenate([self.x, other.x])[order],
            self.oversampling,
        ).pruned()


@dataclass
class CandidateList:
    items: list

    def __add__(self, other: CandidateList) -> CandidateList:
        return CandidateList([a + b for a, b in zip(self.items, other.items, strict=True)])


def min_squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Squared distance of every row to its nearest center, in blocks, float64."""
    n = x.shape[0]
    out = np.empty(n)
    step = block_rows(n, max(len(centers), x.shape[1]))
    for start in range(0, n, step):
        out[start:start + step] = squared_distances(x[start:start + step], centers).min(axis=1)
    return out


def parallel_round_chunk(x: np.ndarray, w: np.ndarray | None, offset: int,
                         request: ParallelRound) -> CandidateList:
    """The rows of one chunk that a k-means|| round may keep, for every restart."""
    n = x.shape[0]
    items = []
    for centers, seed, ell in zip(request.centers, request.seeds, request.oversampling,
                                  strict=True):
        cost = min_squared_distances(x, centers)
        if w is not None:
            cost = cost * w
        u = row_uniform(seed, PARALLEL_STREAM + request.round, offset, offset + n)
        cand = Candidates(float(cost.sum()), cost / u, np.arange(n, dtype=np.int64) + offset,
                          x, ell).pruned()
        cand.x = np.asarray(cand.x, dtype=np.float64)
        items.append(cand)
    return CandidateList(items)
