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
from dataclasses import dataclass

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


def kmeans_parallel(data: ChunkedData, summary: Summary, n_clusters: int | Sequence[int],
                    seeds: Sequence[int], *, oversampling: float = 2.0, n_rounds: int = 5,
                    split_every: int = DEFAULT_SPLIT_EVERY) -> list[np.ndarray]:
    """k-means|| seeding for one restart per seed: ``n_rounds + 1`` passes in all.

    ``n_clusters`` is one number for every restart, or one per restart (model selection
    seeds every candidate number of clusters in the same passes).
    """
    ks = [n_clusters] * len(seeds) if np.isscalar(n_clusters) else list(n_clusters)
    if len(ks) != len(seeds):
        raise ValueError(f"{len(ks)} cluster counts for {len(seeds)} seeds")
    rngs = [np.random.default_rng(s) for s in seeds]
    p = summary.sample_w / summary.sample_w.sum()
    centers = [summary.sample_x[[rng.choice(len(p), p=p)]] for rng in rngs]
    ell = tuple(oversampling * k for k in ks)
    for r in range(n_rounds):
        request = ParallelRound(tuple(centers), tuple(seeds), r, ell)
        found = data.map_reduce(parallel_round_chunk, request, phase="seed",
                                label=f"round{r}", split_every=split_every)
        centers = [np.concatenate([c, cand.x]) for c, cand in zip(centers, found.items,
                                                                 strict=True)]
    for i, (c, k) in enumerate(zip(centers, ks, strict=True)):
        if len(c) < k:  # fewer candidates than clusters: add the sample's rows
            centers[i] = np.concatenate([c, summary.sample_x])
    # Weigh each candidate by the mass of rows nearest to it, then recluster in memory.
    kparams = [KMeansKernelParams.build(c, data.dtype) for c in centers]
    counts = evaluate(data, [kmeans_chunk_stats] * len(centers), kparams, phase="seed",
                      label="weights", split_every=split_every)
    out = []
    for cand, st, rng, k in zip(centers, counts, rngs, ks, strict=True):
        weight = st.nk
        chosen = kmeans_plusplus(cand, k, rng, weight + 1e-12 * weight.max())
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


@dataclass(frozen=True)
class MixtureStart:
    """How to start one mixture: its size, covariance type, init method and seed."""

    n_components: int
    covariance_type: str
    init_params: str
    seed: int
    reg_covar: float = 1e-6
    fixed_variance: float = 1.0


def gaussian_from_centers(data: ChunkedData, centers: Sequence[np.ndarray],
                          starts: Sequence[MixtureStart], *,
                          split_every: int) -> list[GaussianParams]:
    """One pass: hard clusters around each set of centers, as initial mixtures."""
    kparams = [KMeansKernelParams.build(c, data.dtype, covariance_type=s.covariance_type,
                                        far_capacity=len(c))
               for c, s in zip(centers, starts, strict=True)]
    stats = evaluate(data, [kmeans_chunk_stats] * len(centers), kparams, phase="init",
                     label="clusters", split_every=split_every)
    return [gaussian_m_step(st, kp.shift.astype(np.float64), s.covariance_type, s.reg_covar,
                            s.fixed_variance)[0]
            for st, kp, s in zip(stats, kparams, starts, strict=True)]


def _random_mixture(summary: Summary, start: MixtureStart) -> GaussianParams:
    rng = np.random.default_rng(start.seed)
    k, ctype = start.n_components, start.covariance_type
    resp = rng.uniform(size=(len(summary.sample_x), k))
    resp /= resp.sum(axis=1, keepdims=True)
    weights, means, cov = gaussian_params_from_resp(
        summary.sample_x, resp, summary.sample_w,
        "spherical" if ctype == "fixed" else ctype, start.reg_covar)
    if ctype == "fixed":
        cov = np.full(k, float(start.fixed_variance))
    return GaussianParams(ctype, weights, means, cov, compute_precision_cholesky(cov, ctype))


def initial_mixtures(data: ChunkedData, summary: Summary, starts: Sequence[MixtureStart], *,
                     split_every: int = DEFAULT_SPLIT_EVERY) -> list[GaussianParams]:
    """Initial parameters of many mixtures, computed in shared passes.

    Starts that differ only in covariance type share their k-means (k-means|| and Lloyd
    run once per (size, seed)); all k-means runs share their passes; every start made from
    centers gets its hard clusters in one common pass. Each start's result is the same as
    if it were computed alone.
    """
    out: list[GaussianParams | None] = [None] * len(starts)
    kmeans_jobs = sorted({(s.n_components, s.seed) for s in starts
                          if s.init_params == "kmeans"})
    fitted: dict[tuple[int, int], np.ndarray] = {}
    if kmeans_jobs:
        centers = kmeans_parallel(data, summary, [k for k, _ in kmeans_jobs],
                                  [seed for _, seed in kmeans_jobs], split_every=split_every)
        tol = 1e-4 * float(np.mean(summary.variance))
        states = run_em(data, [KMeansFamily(tol)] * len(centers),
                        [EMState(c) for c in centers], max_iter=300, phase="init",
                        split_every=split_every)
        fitted = {job: s.params for job, s in zip(kmeans_jobs, states, strict=True)}
    from_centers, centers_of = [], []
    for i, s in enumerate(starts):
        if s.init_params == "random":
            out[i] = _random_mixture(summary, s)
            continue
        if s.init_params == "kmeans":
            c = fitted[(s.n_components, s.seed)]
        else:
            method = "k-means++" if s.init_params == "k-means++" else "random"
            (c,) = sample_centers(summary, s.n_components, [s.seed], method)
        from_centers.append(i)
        centers_of.append(c)
    if from_centers:
        made = gaussian_from_centers(data, centers_of, [starts[i] for i in from_centers],
                                     split_every=split_every)
        for i, params in zip(from_centers, made, strict=True):
            out[i] = params
    return out
