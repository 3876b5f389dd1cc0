"""Incremental EM (an M-step after every block of chunks) against batch EM and a naive twin."""

from __future__ import annotations

import contextlib
import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from daskem import ConvergenceWarning, GaussianMixture, KMeans
from daskem.engine.data import MIN_BLOCK_CHUNKS, as_chunked
from daskem.kernels.covariance import covariance
from daskem.kernels.estep import GaussianKernelParams, gaussian_chunk_stats, responsibilities
from daskem.kernels.stats import pack_stats, reshift, unpack_stats
from daskem.store import RunStore


@contextlib.contextmanager
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


@pytest.fixture(scope="module")
def X():
    return make_blobs(6000, 3, 4, seed=5, spread=1.3)


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_reshift_equals_statistics_computed_around_the_other_point(ctype):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3)) * 2 + 50  # far from the origin
    k = 3
    cov = {"full": np.stack([np.eye(3) * 2] * k), "tied": np.eye(3) * 2,
           "diag": np.full((k, 3), 2.0), "spherical": np.full(k, 2.0)}[ctype]
    means = x[:k]
    kp = GaussianKernelParams.build(np.full(k, 1 / k), means,
                                    covariance(ctype).precision_cholesky(cov), ctype)
    stats = gaussian_chunk_stats(x, None, 0, kp)
    new = kp.shift + np.array([0.3, -1.1, 0.7])
    moved = reshift(stats, kp.shift, new)
    resp = responsibilities(x, kp)[0]
    xc = x - new  # naive sums around the new point
    np.testing.assert_allclose(moved.s1, resp.T @ xc, rtol=1e-10, atol=1e-8)
    scatter = np.einsum("nk,ni,nj->kij", resp, xc, xc)
    iu, ju = np.triu_indices(3)
    expected = {"full": scatter[:, iu, ju], "tied": scatter[:, iu, ju],
                "diag": np.einsum("kii->ki", scatter), "spherical": np.einsum("kii->k", scatter)}
    np.testing.assert_allclose(moved.s2, expected[ctype], rtol=1e-10, atol=1e-7)
    np.testing.assert_array_equal(moved.nk, stats.nk)


def test_stacked_statistics_round_trip(X):
    kp = GaussianKernelParams.build(np.full(4, 0.25), X[:4],
                                    covariance("full").precision_cholesky(
                                        np.stack([np.eye(3)] * 4)), "full",
                                    far_capacity=4)
    items = [gaussian_chunk_stats(X[a:a + 500], None, a, kp) for a in (0, 500, 1000)]
    shifts = [kp.shift + j for j in range(3)]
    back = unpack_stats(pack_stats(list(zip(shifts, items, strict=True))))
    for shift, (shift_back, _) in zip(shifts, back, strict=True):
        np.testing.assert_array_equal(shift, shift_back)
    for a, (_, b) in zip(items, back, strict=True):
        for name in ("nk", "s1", "s2", "objective", "weight_sum", "n_samples", "margin"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        for name in ("score", "index", "x", "label", "weight"):
            np.testing.assert_array_equal(getattr(a.far, name), getattr(b.far, name))


def test_blocks_are_consecutive_and_never_too_small():
    data = as_chunked(da.zeros((1000, 2), chunks=(10, 2)) + np.arange(2))  # 100 chunks
    for n_blocks in (1, 3, 16, 25, 64):
        ranges = data.block_ranges(n_blocks)
        assert ranges[0][0] == 0 and ranges[-1][1] == data.n_chunks
        assert all(a == b for (_, a), (b, _) in zip(ranges[:-1], ranges[1:], strict=True))
        assert len(ranges) == min(n_blocks, data.n_chunks // MIN_BLOCK_CHUNKS)
        assert min(b - a for a, b in ranges) >= min(MIN_BLOCK_CHUNKS, data.n_chunks)


def naive_incremental_gmm(X, chunk_rows, n_blocks, weights, means, covs, sweeps, reg=1e-6):
    """Neal & Hinton's incremental EM for a full-covariance mixture, written plainly:
    scipy densities, per-block raw sums, a batch first pass, then block-by-block M-steps."""
    n = len(X)
    chunks = [(a, min(a + chunk_rows, n)) for a in range(0, n, chunk_rows)]
    edges = [len(chunks) * j // n_blocks for j in range(n_blocks + 1)]
    blocks = [(chunks[edges[j]][0], chunks[edges[j + 1] - 1][1]) for j in range(n_blocks)]

    def block_sums(x, w, m, c):
        logp = np.stack([np.log(w[k]) + multivariate_normal(m[k], c[k]).logpdf(x)
                         for k in range(len(w))], axis=1)
        r = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
        return r.sum(0), r.T @ x, np.einsum("nk,ni,nj->kij", r, x, x)

    def m_step(parts):
        nk = sum(p[0] for p in parts) + 10 * np.finfo(float).eps
        mean = sum(p[1] for p in parts) / nk[:, None]
        second = sum(p[2] for p in parts) / nk[:, None, None]
        cov = second - np.einsum("ki,kj->kij", mean, mean) + reg * np.eye(X.shape[1])
        return nk / nk.sum(), mean, cov

    parts = [block_sums(X[a:b], weights, means, covs) for a, b in blocks]
    weights, means, covs = m_step(parts)
    history = [(weights, means, covs)]
    for _ in range(sweeps):
        for j, (a, b) in enumerate(blocks):
            parts[j] = block_sums(X[a:b], weights, means, covs)
            weights, means, covs = m_step(parts)
        history.append((weights, means, covs))
    return history


def test_matches_a_naive_incremental_em(X):
    means0 = X[[0, 1500, 3000, 4500]]
    covs0 = np.stack([np.eye(3) * 4.0] * 4)
    with quiet():
        gm = GaussianMixture(4, max_iter=4, tol=0, means_init=means0,
                             weights_init=np.full(4, 0.25),
                             precisions_init=np.linalg.inv(covs0), chunk_rows=250,
                             update="incremental", n_blocks=6).fit(X)
    history = naive_incremental_gmm(X, 250, 6, np.full(4, 0.25), means0, covs0, sweeps=3)
    weights, means, covs = history[-1]
    np.testing.assert_allclose(gm.means_, means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gm.covariances_, covs, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-9)
    # ...and it is not batch EM: four batch iterations end elsewhere.
    with quiet():
        batch = GaussianMixture(4, max_iter=4, tol=0, means_init=means0,
                                weights_init=np.full(4, 0.25),
                                precisions_init=np.linalg.inv(covs0), chunk_rows=250).fit(X)
    assert np.abs(batch.means_ - means).max() > 1e-6


@pytest.mark.parametrize("ctype", ["full", "diag", "spherical", "tied"])
def test_reaches_the_optimum_of_batch_em(X, ctype):
    means0 = X[[0, 1500, 3000, 4500]]
    kwargs = dict(covariance_type=ctype, means_init=means0, tol=1e-10, max_iter=2000,
                  chunk_rows=250)
    with quiet():
        batch = GaussianMixture(4, **kwargs).fit(X)
        inc = GaussianMixture(4, update="incremental", n_blocks=6, **kwargs).fit(X)
    assert inc.converged_ and batch.converged_
    # The same optimum: the log-likelihood to 1e-8; the means as closely as a likelihood
    # that flat near its top pins them down (tied: ~5e-5 at tol=1e-10).
    assert abs(inc.score(X) - batch.score(X)) < 1e-8
    order = np.argsort(batch.means_[:, 0])
    np.testing.assert_allclose(inc.means_[np.argsort(inc.means_[:, 0])], batch.means_[order],
                               atol=5e-4)
    # Passes to come within 1e-7 of the optimum (not to the stop at tol=1e-10, where the
    # count turns on last-bit rounding, which multithreaded BLAS varies).
    top = max(batch.lower_bounds_[-1], inc.lower_bounds_[-1])

    def passes_to_top(est):
        return next(i for i, v in enumerate(est.lower_bounds_, 1) if v >= top - 1e-7)

    assert passes_to_top(inc) <= passes_to_top(batch)


def test_kmeans_reaches_the_centers_of_batch_lloyd(X):
    init = X[[0, 1500, 3000, 4500]]
    # tol=1e-12, not 0: batch Lloyd's centers keep moving by rounding (~1e-16) after its
    # labels stop changing.
    batch = KMeans(4, init=init, tol=1e-12, chunk_rows=250).fit(X)
    inc = KMeans(4, init=init, tol=1e-12, chunk_rows=250, update="incremental",
                 n_blocks=6).fit(X)
    assert inc.converged_ and batch.converged_
    np.testing.assert_allclose(np.sort(inc.cluster_centers_, 0),
                               np.sort(batch.cluster_centers_, 0), atol=1e-9)
    assert inc.inertia_ == pytest.approx(batch.inertia_, rel=1e-12)


def test_fewer_passes_than_batch_from_a_poor_start():
    X = make_blobs(12000, 4, 6, seed=8, spread=2.5)
    means0 = X[:6]
    with quiet():
        batch = GaussianMixture(6, means_init=means0, tol=1e-4, max_iter=500, random_state=0,
                                chunk_rows=250).fit(X)
        inc = GaussianMixture(6, means_init=means0, tol=1e-4, max_iter=500, random_state=0,
                              chunk_rows=250,
                              update="incremental", n_blocks=12).fit(X)
    assert inc.passes_["em"] < batch.passes_["em"]
    assert inc.score(X) >= batch.score(X) - 1e-3


@pytest.mark.parametrize("make", [
    lambda X: GaussianMixture(4, max_iter=12, tol=0, means_init=X[:4], random_state=0,
                              chunk_rows=250, update="incremental", n_blocks=6),
    lambda X: KMeans(4, init=X[:4], max_iter=12, tol=0, chunk_rows=250,
                     update="incremental", n_blocks=6),
], ids=["gmm", "kmeans"])
def test_an_interrupted_fit_resumes_to_the_same_parameters(tmp_path, X, make):
    class Stop(Exception):
        pass

    def stop_at(n_pass, states):
        if n_pass == 5:
            raise Stop

    with quiet():
        whole = make(X).fit(X)
        store = RunStore(str(tmp_path / "run.zarr"))
        store.create({}, "hash", {})
        with pytest.raises(Stop):
            make(X).fit(X, checkpoint=store, callback=stop_at)
        assert len(store.load()[0].blocks) == 6  # the blocks' statistics were checkpointed
        resumed = make(X).fit(X, checkpoint=RunStore(str(tmp_path / "run.zarr")))
    name = "means_" if isinstance(whole, GaussianMixture) else "cluster_centers_"
    np.testing.assert_array_equal(getattr(resumed, name), getattr(whole, name))
    assert resumed.n_iter_ == whole.n_iter_


def test_too_few_chunks_fall_back_to_batch(X):
    with quiet():
        batch = GaussianMixture(4, max_iter=5, tol=0, random_state=0).fit(X)
        inc = GaussianMixture(4, max_iter=5, tol=0, random_state=0,
                              update="incremental").fit(X)  # one chunk
    np.testing.assert_array_equal(inc.means_, batch.means_)


def test_bad_update_is_refused(X):
    from daskem import ParameterError

    with pytest.raises(ParameterError, match="update must be one of"):
        KMeans(3, update="online").fit(X)
    with pytest.raises(ParameterError, match="n_blocks must be an integer >= 1"):
        GaussianMixture(3, update="incremental", n_blocks=0).fit(X)
