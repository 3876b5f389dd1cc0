"""Numerical accuracy: data far from the origin, float32, many chunks."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from daskem import ConvergenceWarning, GaussianMixture, KMeans


def two_pass_m_step(X, weights, means, covariances, reg_covar):
    """One EM step in float64, textbook style: responsibilities, means, then covariances
    around those means (a second pass)."""
    log_prob = np.stack([np.log(w) + multivariate_normal(m, c).logpdf(X)
                         for w, m, c in zip(weights, means, covariances, strict=False)], axis=1)
    resp = np.exp(log_prob - logsumexp(log_prob, axis=1, keepdims=True))
    nk = resp.sum(axis=0)
    new_means = resp.T @ X / nk[:, None]
    covs = []
    for k in range(len(nk)):
        diff = X - new_means[k]
        covs.append((resp[:, k] * diff.T) @ diff / nk[k] + reg_covar * np.eye(X.shape[1]))
    return new_means, np.stack(covs)


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_float32_far_from_origin_matches_float64_two_pass(offset):
    X32 = make_blobs(4000, 3, 3, seed=7, spread=2.0, offset=offset).astype(np.float32)
    X = X32.astype(np.float64)  # the reference sees exactly the same values
    rng = np.random.default_rng(0)
    means = X[rng.choice(len(X), 3, replace=False)]
    covariances = np.stack([np.cov(X.T)] * 3)
    weights = np.full(3, 1 / 3)
    precisions = np.linalg.inv(covariances)
    with pytest.warns(ConvergenceWarning):
        gm = GaussianMixture(3, max_iter=1, tol=0, weights_init=weights, means_init=means,
                             precisions_init=precisions, chunk_rows=500).fit(X32)
    ref_means, ref_cov = two_pass_m_step(X, weights, means, covariances, 1e-6)
    # float32 data give float32 means (scikit-learn's rule): the float64 reference's,
    # correctly rounded (the fit's statistics are float64).
    assert gm.means_.dtype == np.float32
    np.testing.assert_array_max_ulp(gm.means_, ref_means.astype(np.float32), maxulp=1)
    np.testing.assert_allclose(gm.covariances_, ref_cov, rtol=1e-5, atol=1e-5 * np.abs(
        ref_cov).max())
    assert np.all(np.linalg.eigvalsh(gm.covariances_) > 0)


@pytest.mark.parametrize("offset", [1e2, 1e4, 1e6])
def test_kmeans_float32_far_from_origin(offset):
    X32 = make_blobs(4000, 3, 4, seed=8, spread=2.0, offset=offset).astype(np.float32)
    init = X32[:4]
    km = KMeans(4, init=init, max_iter=1).fit(X32)
    X = X32.astype(np.float64)
    labels = ((X[:, None, :] - init.astype(np.float64)[None]) ** 2).sum(-1).argmin(1)
    ref = np.stack([X[labels == k].mean(0) for k in range(4)])
    np.testing.assert_allclose(km.cluster_centers_, ref, rtol=1e-6)


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical"])
def test_one_chunk_vs_64_chunks(ctype):
    X = make_blobs(6400, 4, 3, seed=9, offset=1e3)
    init = GaussianMixture(3, covariance_type=ctype, max_iter=2, tol=0, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        init.fit(X)
        start = dict(weights_init=init.weights_, means_init=init.means_,
                     precisions_init=init.precisions_)
        with dask.config.set(scheduler="synchronous"):
            one = GaussianMixture(3, covariance_type=ctype, max_iter=10, tol=0,
                                  **start).fit(da.from_array(X, chunks=(6400, 4)))
            many = GaussianMixture(3, covariance_type=ctype, max_iter=10, tol=0,
                                   **start).fit(da.from_array(X, chunks=(100, 4)))
    for name in ("weights_", "means_", "covariances_"):
        np.testing.assert_allclose(getattr(many, name), getattr(one, name), rtol=1e-10,
                                   err_msg=name)
    np.testing.assert_allclose(many.lower_bounds_, one.lower_bounds_, rtol=1e-12)
