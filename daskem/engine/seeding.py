"""Initial parameters for every restart, computed together, on the sample where possible.

* The summary pass draws a uniform, row-addressed sample of rows (tens of thousands).
  ``k-means++`` and ``random`` seeding, a mixture's ``kmeans`` init (k-means++ and Lloyd
  on the sample) and the mixture made of the sample's hard clusters around those centers
  all run on it in memory: no pass over the data.
* ``k-means||`` runs over the whole array instead (Bahmani et al.: ``n_rounds`` + 1 passes
  for all restarts at once); a mixture's ``k-means||`` init then runs Lloyd over the whole
  array and takes the hard clusters of all rows (one more shared pass). Better when the
  sample cannot represent the data: clusters so small that the sample holds a handful of
  their rows.
* :func:`choose_on_sample` runs every restart's EM (or Lloyd) on the sample and keeps the
  best of each model's restarts for the passes over the data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from daskem.engine.data import ChunkedData
from daskem.engine.em import (
    EMState,
    KMeansFamily,
    best_index,
    evaluate,
    run_em,
    run_em_in_memory,
)
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY
from daskem.kernels.covariance import covariance
from daskem.kernels.estep import KMeansKernelParams, kmeans_chunk_stats
from daskem.kernels.mstep import GaussianParams, KMeansParams, gaussian_m_step
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
    centers = [summary.seed_x[[rng.choice(len(p), p=p)]] for rng in rngs]
    ell = tuple(oversampling * k for k in ks)
    for r in range(n_rounds):
        request = ParallelRound(tuple(centers), tuple(seeds), r, ell)
        found = data.map_reduce(parallel_round_chunk, request, phase="seed",
                                label=f"round{r}", split_every=split_every)
        centers = [np.concatenate([c, cand.x]) for c, cand in zip(centers, found.items,
                                                                 strict=True)]
    for i, (c, k) in enumerate(zip(centers, ks, strict=True)):
        if len(c) < k:  # fewer candidates than clusters: add the sample's rows
            centers[i] = np.concatenate([c, summary.seed_x])
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
    x, w = summary.seed_x, summary.sample_w
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


def sample_kmeans(summary: Summary, n_clusters: int, seed: int) -> np.ndarray:
    """k-means on the summary sample in memory: k-means++ seeding, then weighted Lloyd."""
    (centers,) = sample_centers(summary, n_clusters, [seed], "k-means++")
    tol = 1e-4 * float(np.mean(summary.variance))
    return lloyd(summary.seed_x, centers, summary.sample_w, tol=tol)


def _sample_clusters(summary: Summary, centers: np.ndarray,
                     start: MixtureStart) -> GaussianParams:
    """The mixture of the sample's hard clusters around ``centers`` (no pass)."""
    x = summary.seed_x
    kp = KMeansKernelParams.build(centers, x.dtype, covariance_type=start.covariance_type,
                                  far_capacity=len(centers))
    stats = kmeans_chunk_stats(x, summary.sample_w, 0, kp)
    return gaussian_m_step(stats, kp.shift.astype(np.float64), start.covariance_type,
                           start.reg_covar, start.fixed_variance)[0]


# Iterations at most of a restart's run on the sample (it usually converges well before):
# fixed, so that a resumed fit with another max_iter starts from the same parameters.
SAMPLE_MAX_ITER = 100


def choose_on_sample(summary: Summary, families: Sequence, states: Sequence[EMState],
                     groups: Sequence, *, maximise: bool,
                     max_iter: int = SAMPLE_MAX_ITER) -> list[EMState]:
    """Run every restart on the sample in memory and keep, of each group of restarts (the
    restarts of one model), the one with the best objective there; the others are dropped
    before any pass over the data, with the reason recorded.

    Short runs of every start, then a long run of the best (Biernacki, Celeux & Govaert
    2003): here the short runs cost nothing, being on the sample, and the long run starts
    from where the best one's sample run ended, so it needs few passes.
    """
    ran = run_em_in_memory(summary.sample_x, summary.sample_w, families,
                           [EMState(s.params) for s in states], max_iter=max_iter)
    out = []
    what = "mean log-likelihood" if maximise else "inertia"
    for i, (group, done) in enumerate(zip(groups, ran, strict=True)):
        own = [j for j, g in enumerate(groups) if g == group]
        best = own[best_index([ran[j] for j in own], maximise)]
        if i == best:
            out.append(EMState(done.params))
            continue
        value = done.objectives[-1] if done.objectives else float("nan")
        out.append(EMState(states[i].params, dropped=(
            f"beaten on the sample ({len(summary.sample_x):,} rows): {what} {value:.6g} "
            f"after {done.n_iter} iterations, against {ran[best].objectives[-1]:.6g} of "
            f"restart {own.index(best)}")))
    return out


def _random_mixture(summary: Summary, start: MixtureStart) -> GaussianParams:
    rng = np.random.default_rng(start.seed)
    k, ctype = start.n_components, start.covariance_type
    resp = rng.uniform(size=(len(summary.seed_x), k))
    resp /= resp.sum(axis=1, keepdims=True)
    weights, means, cov = gaussian_params_from_resp(
        summary.seed_x, resp, summary.sample_w, ctype, start.reg_covar,
        start.fixed_variance)
    return GaussianParams(ctype, weights, means, cov,
                          covariance(ctype).precision_cholesky(cov))


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
                          if s.init_params == "k-means||"})
    fitted: dict[tuple[int, int], np.ndarray] = {}
    if kmeans_jobs:
        centers = kmeans_parallel(data, summary, [k for k, _ in kmeans_jobs],
                                  [seed for _, seed in kmeans_jobs], split_every=split_every)
        tol = 1e-4 * float(np.mean(summary.variance))
        states = run_em(data, [KMeansFamily(tol)] * len(centers),
                        [EMState(KMeansParams(c)) for c in centers], max_iter=300,
                        phase="init", split_every=split_every)
        fitted = {job: s.params.cluster_centers
                  for job, s in zip(kmeans_jobs, states, strict=True)}
    from_centers, centers_of = [], []
    on_sample: dict[tuple[int, int], np.ndarray] = {}
    for i, s in enumerate(starts):
        if s.init_params == "random":
            out[i] = _random_mixture(summary, s)
        elif s.init_params == "k-means||":  # hard clusters of all rows: one shared pass
            from_centers.append(i)
            centers_of.append(fitted[(s.n_components, s.seed)])
        elif s.init_params == "kmeans":  # every step on the sample: no pass
            job = (s.n_components, s.seed)
            if job not in on_sample:
                on_sample[job] = sample_kmeans(summary, s.n_components, s.seed)
            out[i] = _sample_clusters(summary, on_sample[job], s)
        else:
            method = "k-means++" if s.init_params == "k-means++" else "random"
            (c,) = sample_centers(summary, s.n_components, [s.seed], method)
            out[i] = _sample_clusters(summary, c, s)
    if from_centers:
        made = gaussian_from_centers(data, centers_of, [starts[i] for i in from_centers],
                                     split_every=split_every)
        for i, params in zip(from_centers, made, strict=True):
            out[i] = params
    return out
