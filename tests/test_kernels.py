"""Each kernel against an independent reference: scipy, a naive loop, scikit-learn."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from daskem.kernels.covariance import (
    covariance,
    log_gaussian_prob,
    pack_symmetric,
    unpack_symmetric,
)
from daskem.kernels.estep import (
    GaussianKernelParams,
    KMeansKernelParams,
    gaussian_chunk_stats,
    gaussian_log_prob,
    kmeans_chunk_stats,
    kmeans_labels,
    squared_distances,
)
from daskem.kernels.mstep import gaussian_m_step, kmeans_m_step
from daskem.kernels.random import row_uniform
from daskem.kernels.seeding import kmeans_plusplus
from daskem.kernels.stats import FarPoints
from daskem.kernels.summary import SampleRequest, summarise_chunk

TYPES = ["full", "tied", "diag", "spherical"]


def random_params(ctype, k=3, d=4, seed=1):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3, size=(k, d))
    if ctype == "full":
        a = rng.normal(size=(k, d, d))
        cov = a @ a.transpose(0, 2, 1) + np.eye(d)
    elif ctype == "tied":
        a = rng.normal(size=(d, d))
        cov = a @ a.T + np.eye(d)
    elif ctype == "diag":
        cov = rng.uniform(0.5, 2.0, size=(k, d))
    else:
        cov = rng.uniform(0.5, 2.0, size=k)
    weights = rng.dirichlet(np.ones(k))
    return weights, means, cov


def dense_cov(ctype, cov, k, d):
    if ctype == "full":
        return cov
    if ctype == "tied":
        return np.stack([cov] * k)
    if ctype == "diag":
        return np.stack([np.diag(c) for c in cov])
    return np.stack([c * np.eye(d) for c in cov])


@pytest.mark.parametrize("ctype", TYPES)
def test_log_gaussian_prob_matches_scipy(ctype):
    rng = np.random.default_rng(0)
    x = rng.normal(scale=3, size=(200, 4))
    weights, means, cov = random_params(ctype)
    prec_chol = covariance(ctype).precision_cholesky(cov)
    full = dense_cov(ctype, cov, 3, 4)
    expected = np.stack([multivariate_normal(means[k], full[k]).logpdf(x) for k in range(3)],
                        axis=1)
    np.testing.assert_allclose(log_gaussian_prob(x, means, prec_chol, ctype), expected,
                               rtol=1e-12)
    kp = GaussianKernelParams.build(weights, means, prec_chol, ctype)
    np.testing.assert_allclose(gaussian_log_prob(x, kp), expected + np.log(weights),
                               rtol=1e-12)
    np.testing.assert_allclose(covariance(ctype).covariances_from_cholesky(prec_chol), cov,
                               rtol=1e-10)


@pytest.mark.parametrize("ctype", TYPES + ["fixed"])
@pytest.mark.parametrize("weighted", [False, True])
def test_gaussian_chunk_stats_match_naive_loop(ctype, weighted):
    rng = np.random.default_rng(2)
    x = rng.normal(scale=3, size=(150, 4)) + 100.0  # far from the origin
    w = rng.uniform(0.1, 2.0, size=150) if weighted else None
    base = "spherical" if ctype == "fixed" else ctype
    weights, means, cov = random_params(base)
    means = means + 100.0
    if ctype == "fixed":
        cov = np.full(3, 2.0)
    prec_chol = covariance(ctype).precision_cholesky(cov)
    kp = GaussianKernelParams.build(weights, means, prec_chol, ctype)
    stats = gaussian_chunk_stats(x, w, 0, kp)
    full = dense_cov(base, cov, 3, 4)
    # naive: one row and one component at a time
    ww = np.ones(150) if w is None else w
    nk = np.zeros(3)
    s1 = np.zeros((3, 4))
    s2 = np.zeros((3, 4, 4))
    ll = 0.0
    for i in range(150):
        logp = np.array([np.log(weights[k]) + multivariate_normal(means[k], full[k]).logpdf(x[i])
                         for k in range(3)])
        lse = logsumexp(logp)
        ll += ww[i] * lse
        r = np.exp(logp - lse) * ww[i]
        for k in range(3):
            diff = x[i] - kp.shift  # the statistics' common shift
            nk[k] += r[k]
            s1[k] += r[k] * diff
            s2[k] += r[k] * np.outer(diff, diff)
    np.testing.assert_allclose(stats.objective, ll, rtol=1e-12)
    np.testing.assert_allclose(stats.nk, nk, rtol=1e-10)
    np.testing.assert_allclose(stats.s1, s1, rtol=1e-9, atol=1e-9)
    expected_s2 = {"full": pack_symmetric(s2), "tied": pack_symmetric(s2),
                   "diag": np.diagonal(s2, axis1=1, axis2=2),
                   "spherical": np.trace(s2, axis1=1, axis2=2), "fixed": None}[ctype]
    if expected_s2 is None:
        assert stats.s2 is None
    else:
        np.testing.assert_allclose(stats.s2, expected_s2, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("ctype", TYPES)
def test_m_step_matches_sklearn(ctype):
    from sklearn.mixture._gaussian_mixture import _estimate_gaussian_parameters

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 3)) * [1, 2, 3] + 50
    weights, means, cov = random_params(ctype, d=3)
    means = means + 50
    prec_chol = covariance(ctype).precision_cholesky(cov)
    kp = GaussianKernelParams.build(weights, means, prec_chol, ctype)
    stats = gaussian_chunk_stats(x, None, 0, kp)
    params, events = gaussian_m_step(stats, kp.shift, ctype, 1e-6)
    logp = log_gaussian_prob(x, means, prec_chol, ctype) + np.log(weights)
    resp = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
    w, m, c = _estimate_gaussian_parameters(x, resp, 1e-6, ctype)
    np.testing.assert_allclose(params.weights, w / w.sum(), rtol=1e-10)
    np.testing.assert_allclose(params.means, m, rtol=1e-10)
    np.testing.assert_allclose(params.covariances, c, rtol=1e-7, atol=1e-10)
    assert events == []


def test_kmeans_chunk_stats_match_naive():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 5)) * 3
    w = rng.uniform(0.5, 1.5, size=500)
    centers = x[:6].copy() + 0.1
    stats = kmeans_chunk_stats(x, w, 0, KMeansKernelParams.build(centers, np.float64))
    dist = ((x[:, None, :] - centers[None]) ** 2).sum(-1)
    labels = dist.argmin(1)
    np.testing.assert_array_equal(kmeans_labels(x, KMeansKernelParams.build(centers,
                                                                            np.float64)), labels)
    np.testing.assert_allclose(stats.objective, (dist.min(1) * w).sum(), rtol=1e-12)
    new, events = kmeans_m_step(stats, centers)
    for k in range(6):
        sel = labels == k
        np.testing.assert_allclose(new[k], np.average(x[sel], axis=0, weights=w[sel]),
                                   rtol=1e-12)
    assert events == []
    np.testing.assert_allclose(squared_distances(x, centers), dist, rtol=1e-9, atol=1e-9)


def test_empty_cluster_moves_to_farthest_row_not_origin():
    x = np.array([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.2, 10.0], [50.0, 50.0]])
    centers = np.array([[0.05, 0.0], [10.1, 10.0], [1000.0, 1000.0]])  # the last gets nothing
    kp = KMeansKernelParams.build(centers, np.float64, far_capacity=3)
    stats = kmeans_chunk_stats(x, None, 0, kp)
    assert stats.nk[2] == 0
    new, events = kmeans_m_step(stats, centers)
    np.testing.assert_array_equal(new[2], [50.0, 50.0])  # the farthest row
    assert events[0].component == 2 and events[0].row == 4
    # the row left cluster 1, whose center is again the mean of its two own rows
    np.testing.assert_allclose(new[1], [10.1, 10.0])


def test_collapsed_component_reseeded_at_worst_row():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(size=(100, 2)), rng.normal(size=(100, 2)) + 8,
                        [[40.0, -40.0]]])
    weights = np.array([0.5, 0.5 - 1e-300, 1e-300])
    means = np.array([[0.0, 0.0], [8.0, 8.0], [-500.0, -500.0]])
    cov = np.ones((3, 2))
    kp = GaussianKernelParams.build(weights, means, covariance("diag").precision_cholesky(cov),
                                    "diag", far_capacity=3)
    stats = gaussian_chunk_stats(x, None, 0, kp)
    params, events = gaussian_m_step(stats, means, "diag", 1e-6)
    assert [e.component for e in events] == [2]
    np.testing.assert_array_equal(params.means[2], [40.0, -40.0])
    assert np.all(np.isfinite(params.precisions_cholesky))
    assert params.weights[2] > 0


def test_far_points_merge_is_order_independent():
    rng = np.random.default_rng(6)
    parts = []
    for i in range(5):
        score = rng.integers(0, 4, size=20).astype(float)  # many ties
        parts.append(FarPoints.from_block(score, rng.normal(size=(20, 2)),
                                          np.zeros(20, int), None, 20 * i, 7))
    forward = parts[0]
    for p in parts[1:]:
        forward = forward.merge(p)
    backward = parts[-1]
    for p in reversed(parts[:-1]):
        backward = p.merge(backward)
    np.testing.assert_array_equal(forward.index, backward.index)
    assert len(forward.index) == 7


def test_row_uniform_does_not_depend_on_chunking():
    whole = row_uniform(7, 3, 0, 1000)
    pieces = np.concatenate([row_uniform(7, 3, a, b) for a, b in [(0, 1), (1, 400), (400, 1000)]])
    np.testing.assert_array_equal(whole, pieces)
    assert 0 < whole.min() and whole.max() < 1
    assert abs(whole.mean() - 0.5) < 0.05


def test_summary_merge_matches_numpy():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(1000, 3)) * 5 + 1e4
    req = SampleRequest(seed=1, probability=0.1)
    parts = [summarise_chunk(x[a:b], None, a, req) for a, b in [(0, 10), (10, 10), (10, 600),
                                                               (600, 1000)]]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    np.testing.assert_allclose(total.mean, x.mean(0), rtol=1e-14)
    np.testing.assert_allclose(total.variance, x.var(0), rtol=1e-10)
    whole = summarise_chunk(x, None, 0, req)
    np.testing.assert_array_equal(total.sample_index, whole.sample_index)


def test_kmeans_plusplus_picks_one_row_per_blob():
    rng = np.random.default_rng(9)
    centers = np.array([[0, 0], [100, 0], [0, 100], [100, 100]], float)
    x = np.concatenate([rng.normal(size=(50, 2)) + c for c in centers])
    idx = kmeans_plusplus(x, 4, np.random.default_rng(0))
    assert sorted(idx // 50) == [0, 1, 2, 3]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=6),
       st.sampled_from(TYPES))
def test_stats_merge_equals_one_chunk(cuts, ctype):
    """Merging statistics of any split of the rows equals the statistics of all rows."""
    rng = np.random.default_rng(10)
    x = rng.normal(size=(60, 3))
    weights, means, cov = random_params(ctype, d=3)
    kp = GaussianKernelParams.build(weights, means, covariance(ctype).precision_cholesky(cov),
                                    ctype, far_capacity=3)
    bounds = sorted(set([0, 60] + cuts))
    parts = [gaussian_chunk_stats(x[a:b], None, a, kp)
             for a, b in zip(bounds, bounds[1:], strict=False)]
    total = parts[0]
    for p in parts[1:]:
        total = total + p
    whole = gaussian_chunk_stats(x, None, 0, kp)
    np.testing.assert_allclose(total.nk, whole.nk, rtol=1e-12)
    np.testing.assert_allclose(total.s2, whole.s2, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(total.objective, whole.objective, rtol=1e-12)
    np.testing.assert_array_equal(total.far.index, whole.far.index)


def test_pack_unpack_symmetric_roundtrip():
    a = np.random.default_rng(0).normal(size=(2, 5, 5))
    a = a + a.transpose(0, 2, 1)
    np.testing.assert_array_equal(unpack_symmetric(pack_symmetric(a), 5), a)


@pytest.mark.parametrize("ctype", TYPES)
def test_float32_data_keep_float64_statistics(ctype):
    """Data at an offset of 1e4 in float32: the statistics equal those of the same
    values in float64 (features are formed in float64)."""
    rng = np.random.default_rng(11)
    x32 = (rng.normal(size=(3000, 4)) + 1e4).astype(np.float32)
    weights, means, cov = random_params(ctype)
    means = means * 0.3 + 1e4
    kp = GaussianKernelParams.build(weights, means, covariance(ctype).precision_cholesky(cov),
                                    ctype)
    a = gaussian_chunk_stats(x32, None, 0, kp)
    b = gaussian_chunk_stats(x32.astype(np.float64), None, 0, kp)
    np.testing.assert_allclose(a.s2, b.s2, rtol=1e-12)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-12)
