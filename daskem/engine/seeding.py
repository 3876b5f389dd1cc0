"""Initial parameters for every restart, computed together in shared passes.

* k-means|| runs over the whole array (a few passes for all restarts at once);
* k-means++ and random seeding run on the uniform sample drawn by the summary pass;
* a mixture's ``kmeans`` init runs the distributed k-means (k-means|| then Lloyd), and
  every init that yields centers (``kmeans``, ``k-means++``, ``random_from_data``) is
  turned into a mixture by one pass that assigns every row to its nearest center and takes
  the weights, means and covariances of those hard clusters.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from daskem.engine.data import ChunkedData
from daskem.engine.em import EMState, KMeansFamily, evaluate, run_em
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY
from daskem.kernels.estep import KMeansKernelParams, kmeans_chunk_stats
from daskem.kernels.gaussian import compute_precision_cholesky
from daskem.kernels.mstep import GaussianParams, gaussian_m_step
from daskem.kernels.seeding import (
    ParallelRound,
    gaussian_params_from_resp,
    kmeans_plusplus,
    lloyd,
    parallel_round_chunk,
)
from daskem.kernels.summary import Summary


def kmeans_parallel(data: ChunkedData, summary: Summary, n_clusters: int,
                    seeds: Sequence[int], *, oversampling: float = 2.0, n_rounds: int = 5,
                    split_every: int = DEFAULT_SPLIT_EVERY) -> list[np.ndarray]:
    """k-means|| seeding for one restart per seed: ``n_rounds + 1`` passes in all."""
    rngs = [np.random.default_rng(s) for s in seeds]
    p = summary.sample_w / summary.sample_w.sum()
    centers = [summary.sample_x[[rng.choice(len(p), p=p)]] for rng in rngs]
    ell = oversampling * n_clusters
    for r in range(n_rounds):
        request = ParallelRound(tuple(centers), tuple(seeds), r, ell)
        found = data.map_reduce(parallel_round_chunk, request, phase="seed",
                                label=f"round{r}", split_every=split_every)
        centers = [np.concatenate([c, cand.x]) for c, cand in zip(centers, found.items,
                                                                 strict=True)]
    for i, c in enumerate(centers):
        if len(c) < n_clusters:  # fewer candidates than clusters: add the sample's rows
            centers[i] = np.concatenate([c, summary.sample_x])
    # Weigh each candidate by the mass of rows nearest to it, then recluster in memory.
    kparams = [KMeansKernelParams.build(c, data.dtype) for c in centers]
    counts = evaluate(data, [kmeans_chunk_stats] * len(centers), kparams, phase="seed",
                      label="weights", split_every=split_every)
    out = []
    for cand, st, rng in zip(centers, counts, rngs, strict=True):
        weight = st.nk
        chosen = kmeans_plusplus(cand, n_clusters, rng, weight + 1e-12 * weight.max())
        out.append(lloyd(cand, cand[chosen], weight))
    return out


def sample_centers(summary: Summary, n_clusters: int, seeds: Sequence[int],
                   method: str) -> list[np.ndarray]:
    """``k-means++`` or ``random`` centers drawn from the summary pass's sample."""
    x, w = summary.sample_x, summary.sample_w
    out = []
    for seed in seeds:
        rng = np.random.default_rng(seed)
        if method == "k-means++":
            idx = kmeans_plusplus(x, n_clusters, rng, w)
        else:
            idx = rng.choice(len(x), size=n_clusters, replace=False, p=w / w.sum())
        out.append(x[idx])
    return out


def kmeans_centers(data: ChunkedData, summary: Summary, n_clusters: int,
                   seeds: Sequence[int], init: str, *, split_every: int) -> list[np.ndarray]:
    if init == "k-means||":
        return kmeans_parallel(data, summary, n_clusters, seeds, split_every=split_every)
    return sample_centers(summary, n_clusters, seeds, init)


def gaussian_from_centers(data: ChunkedData, centers: Sequence[np.ndarray],
                          covariance_type: str, reg_covar: float, fixed_variance: float, *,
                          split_every: int) -> list[GaussianParams]:
    """One pass: hard clusters around each set of centers, as initial mixtures."""
    kparams = [KMeansKernelParams.build(c, data.dtype, covariance_type=covariance_type,
                                        far_capacity=len(c)) for c in centers]
    stats = evaluate(data, [kmeans_chunk_stats] * len(centers), kparams, phase="init",
                     label="clusters", split_every=split_every)
    return [gaussian_m_step(st, kp.shift.astype(np.float64), covariance_type, reg_covar,
                            fixed_variance)[0] for st, kp in zip(stats, kparams, strict=True)]


def initial_gaussians(data: ChunkedData, summary: Summary, n_components: int,
                      covariance_type: str, init_params: str, seeds: Sequence[int], *,
                      reg_covar: float, fixed_variance: float,
                      split_every: int) -> list[GaussianParams]:
    """Initial mixture parameters for one restart per seed."""
    if init_params == "random":
        out = []
        for seed in seeds:
            rng = np.random.default_rng(seed)
            resp = rng.uniform(size=(len(summary.sample_x), n_components))
            resp /= resp.sum(axis=1, keepdims=True)
            ctype = "spherical" if covariance_type == "fixed" else covariance_type
            weights, means, cov = gaussian_params_from_resp(
                summary.sample_x, resp, summary.sample_w, ctype, reg_covar)
            if covariance_type == "fixed":
                cov = np.full(n_components, float(fixed_variance))
            out.append(GaussianParams(covariance_type, weights, means, cov,
                                      compute_precision_cholesky(cov, covariance_type)))
        return out
    if init_params == "kmeans":
        centers = kmeans_centers(data, summary, n_components, seeds, "k-means||",
                                 split_every=split_every)
        tol = 1e-4 * float(np.mean(summary.variance))
        states = run_em(data, [KMeansFamily(tol)] * len(seeds),
                        [EMState(c) for c in centers], max_iter=300, phase="init",
                        split_every=split_every)
        centers = [s.params for s in states]
    elif init_params == "k-means++":
        centers = sample_centers(summary, n_components, seeds, "k-means++")
    else:  # random_from_data
        centers = sample_centers(summary, n_components, seeds, "random")
    return gaussian_from_centers(data, centers, covariance_type, reg_covar, fixed_variance,
                                 split_every=split_every)
