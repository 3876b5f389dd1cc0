"""The compiled chunk kernels against their NumPy twins and against naive computations
(scipy's distances and log-sum-exp, loops over rows), on float32 and float64, odd block
sizes, empty and one-row chunks, weights."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

from daskem import GaussianMixture, KMeans
from daskem.kernels import estep
from daskem.kernels.compiled import kmeans_fused, mixture_fused, warm_up
from daskem.kernels.covariance import NAMES, covariance, log_gaussian_prob
from daskem.kernels.estep import (
    GaussianKernelParams,
    KMeansKernelParams,
    gaussian_chunk_stats,
    gaussian_chunk_stats_numpy,
    kmeans_chunk_stats,
    kmeans_chunk_stats_numpy,
)

DTYPES = [np.float64, np.float32]
RTOL = {np.float64: 1e-12, np.float32: 1e-5}


@pytest.fixture(autouse=True)
def compiled_for_every_chunk(monkeypatch):
    """The dispatchers choose the compiled kernels for small chunks too."""
    monkeypatch.setattr(estep, "KERNELS", "compiled")


def blobs(n, d, k, dtype, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d)) + offset
    return (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype), centers


def test_warm_up_compiles_once_per_process():
    warm_up()
    assert warm_up() == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 5, 600])
@pytest.mark.parametrize("block", [1, 7, 256, 10_000])
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_kernel_against_naive_distances(dtype, n, block, weighted):
    x, centers = blobs(n, 5, 6, dtype, offset=100.0)  # far from the origin: the shift matters
    rng = np.random.default_rng(1)
    w = rng.uniform(0.0, 2.0, size=n) if weighted else None
    if weighted and n:
        w[::4] = 0.0  # zero weights count as rows of weight zero
    p = KMeansKernelParams.build(centers, dtype)
    labels, dist_sq, nk, s1, objective, weight_sum, margin = kmeans_fused(
        x, w, p.shift, p.scorer, p.centers, block=block)
    c = p.centers.astype(np.float64)
    dist = cdist(x.astype(np.float64), c, "sqeuclidean")
    ww = np.ones(n) if w is None else w
    np.testing.assert_array_equal(labels, dist.argmin(axis=1))
    np.testing.assert_allclose(dist_sq, dist.min(axis=1) if n else [], rtol=RTOL[dtype])
    expect_nk = np.bincount(labels, weights=ww, minlength=6)
    np.testing.assert_allclose(nk, expect_nk, rtol=1e-12)
    expect_s1 = np.zeros((6, 5))
    for i in range(n):  # one row at a time
        expect_s1[labels[i]] += ww[i] * (x[i].astype(np.float64) - c[labels[i]])
    np.testing.assert_allclose(s1, expect_s1, rtol=RTOL[dtype], atol=RTOL[dtype] * 10)
    np.testing.assert_allclose(objective, ww @ dist.min(axis=1) if n else 0.0,
                               rtol=RTOL[dtype])
    assert weight_sum == pytest.approx(ww.sum(), rel=1e-12)
    if n == 0:
        assert margin == np.inf
    else:
        # A true lower bound of d₂ − d₁ for every row, and not a vacuous one.
        two = np.sqrt(np.sort(dist, axis=1)[:, :2])
        exact = float((two[:, 1] - two[:, 0]).min())
        assert margin <= exact
        assert margin > 0.5 * exact - 1e-3 * np.sqrt(dist.min())


@pytest.mark.parametrize("dtype", DTYPES)
def test_kmeans_one_center_has_no_margin(dtype):
    x, centers = blobs(50, 3, 1, dtype)
    p = KMeansKernelParams.build(centers, dtype)
    assert kmeans_fused(x, None, p.shift, p.scorer, p.centers)[-1] == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_chunk_stats_equal_the_numpy_twin(dtype, weighted):
    x, centers = blobs(3000, 8, 7, dtype, seed=3, offset=50.0)
    w = np.random.default_rng(4).uniform(0.1, 2.0, 3000) if weighted else None
    p = KMeansKernelParams.build(centers + 0.3, dtype, far_capacity=7)
    a = kmeans_chunk_stats(x, w, 1000, p)
    b = kmeans_chunk_stats_numpy(x, w, 1000, p)
    np.testing.assert_allclose(a.nk, b.nk, rtol=1e-12)
    # The twin sums float32 residuals in float32; the compiled kernel in float64.
    np.testing.assert_allclose(a.s1, b.s1, rtol=RTOL[dtype], atol=RTOL[dtype] * 100)
    assert a.objective == pytest.approx(b.objective, rel=RTOL[dtype])
    assert a.weight_sum == pytest.approx(b.weight_sum, rel=1e-12)
    assert a.n_samples == b.n_samples == 3000
    np.testing.assert_array_equal(a.far.index, b.far.index)
    np.testing.assert_array_equal(a.far.label, b.far.label)
    np.testing.assert_allclose(a.far.score, b.far.score, rtol=RTOL[dtype])
    # Both margins are lower bounds of the same quantity, within a few ulps of each other.
    assert a.margin == pytest.approx(b.margin, rel=1e-3)


def gaussian_params(name, k, d, rng, offset):
    means = rng.normal(scale=3.0, size=(k, d)) + offset
    a = rng.normal(size=(k, d, d))
    full = a @ np.swapaxes(a, 1, 2) / d + np.eye(d)
    cov = {"full": full, "tied": full[0], "diag": rng.uniform(0.5, 2.0, (k, d)),
           "spherical": rng.uniform(0.5, 2.0, k), "fixed": np.full(k, 1.5)}[name]
    weights = rng.dirichlet(np.ones(k))
    return weights, means, covariance(name).precision_cholesky(cov)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("n,block", [(0, 256), (1, 256), (301, 7), (700, 256)])
def test_mixture_kernel_against_scipy(name, dtype, hard, n, block):
    rng = np.random.default_rng(5)
    k, d = 4, 3
    weights, means, prec_chol = gaussian_params(name, k, d, rng, 20.0)
    x = (means[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)
    w = rng.uniform(0.0, 2.0, size=n)
    p = GaussianKernelParams.build(weights, means, prec_chol, name, hard=hard)
    kind = covariance(name)
    nk, s1, quad_sums, objective, weight_sum, lse = mixture_fused(
        x, w, p.shift, p.weights_t, kind.quad, hard, True, block=block)
    x64 = x.astype(np.float64)
    logp = log_gaussian_prob(x64, means, prec_chol, name) + np.log(weights)
    expect_lse = logsumexp(logp, axis=1)
    if hard:
        resp = np.eye(k)[logp.argmax(axis=1)] if n else np.zeros((0, k))
        per_row = logp.max(axis=1) if n else np.zeros(0)
    else:
        resp = np.exp(logp - expect_lse[:, None])
        per_row = expect_lse
    rw = resp * w[:, None]
    z = x64 - p.shift
    np.testing.assert_allclose(lse, expect_lse, rtol=1e-12)
    np.testing.assert_allclose(objective, per_row @ w if n else 0.0, rtol=1e-11)
    assert weight_sum == pytest.approx(w.sum(), rel=1e-12)
    np.testing.assert_allclose(nk, rw.sum(axis=0), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s1, rw.T @ z, rtol=1e-10, atol=1e-9)
    scatter = np.einsum("nk,ni,nj->kij", rw, z, z)
    s2 = kind.s2_from_quad(quad_sums)
    if kind.keeps_s2:
        iu, ju = np.triu_indices(d)
        expect = {0: scatter[:, iu, ju], 1: np.einsum("kii->ki", scatter),
                  2: np.einsum("kii->k", scatter)}[kind.quad]
        np.testing.assert_allclose(s2, expect, rtol=1e-10, atol=1e-8)
    else:
        assert s2 is None


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hard", [False, True])
def test_gaussian_chunk_stats_equal_the_numpy_twin(name, dtype, hard):
    rng = np.random.default_rng(6)
    weights, means, prec_chol = gaussian_params(name, 5, 4, rng, -30.0)
    x = (means[rng.integers(0, 5, 2000)] + rng.normal(size=(2000, 4)) * 2).astype(dtype)
    w = rng.uniform(0.1, 2.0, 2000)
    p = GaussianKernelParams.build(weights, means, prec_chol, name, hard=hard, far_capacity=5)
    a = gaussian_chunk_stats(x, w, 7, p)
    b = gaussian_chunk_stats_numpy(x, w, 7, p)
    for field in ("nk", "s1", "s2"):
        if getattr(b, field) is None:
            assert getattr(a, field) is None
        else:
            np.testing.assert_allclose(getattr(a, field), getattr(b, field), rtol=1e-10,
                                       atol=1e-9)
    assert a.objective == pytest.approx(b.objective, rel=1e-12)
    np.testing.assert_array_equal(a.far.index, b.far.index)
    np.testing.assert_array_equal(a.far.label, b.far.label)
    np.testing.assert_allclose(a.far.score, b.far.score, rtol=1e-12)


def test_a_row_no_component_explains_has_no_responsibility():
    x = np.array([[0.0, 0.0], [1.0, 1.0]])
    p = GaussianKernelParams.build(np.array([1.0, 0.0]), np.zeros((2, 2)),
                                   np.ones(2), "spherical")
    wt = p.weights_t.copy()
    wt[:, -1] = -np.inf  # every component impossible
    nk, s1, _, objective, weight_sum, lse = mixture_fused(x, None, p.shift, wt, 2, False,
                                                          True)
    np.testing.assert_array_equal(nk, 0.0)
    assert objective == -np.inf and np.all(lse == -np.inf) and weight_sum == 2.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_fits_with_either_kernels_agree(dtype, monkeypatch):
    x, _ = blobs(4000, 4, 5, dtype, seed=8, offset=10.0)
    kw = dict(random_state=0, chunk_rows=700)
    km_c = KMeans(5, **kw).fit(x)
    gm_c = GaussianMixture(5, covariance_type="full", **kw).fit(x)
    monkeypatch.setattr(estep, "KERNELS", "numpy")
    km_n = KMeans(5, **kw).fit(x)
    gm_n = GaussianMixture(5, covariance_type="full", **kw).fit(x)
    tol = 1e-9 if dtype == np.float64 else 1e-4
    np.testing.assert_allclose(km_c.cluster_centers_, km_n.cluster_centers_, rtol=tol)
    assert km_c.n_iter_ == km_n.n_iter_
    np.testing.assert_allclose(gm_c.means_, gm_n.means_, rtol=tol)
    assert gm_c.lower_bound_ == pytest.approx(gm_n.lower_bound_, rel=1e-9)
