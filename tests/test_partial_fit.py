"""partial_fit: stepwise EM for mixtures, mini-batch k-means, against references."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.cluster import MiniBatchKMeans

from daskem import DataError, GaussianMixture, KMeans
from daskem.engine.stepwise import step_size


@pytest.fixture(scope="module")
def X():
    return make_blobs(20000, 3, 4, seed=2, spread=1.0)


def batches(X, size=1000):
    return [X[a:a + size] for a in range(0, len(X), size)]


@pytest.mark.parametrize("weighted", [False, True])
def test_kmeans_partial_fit_is_scikit_learns_mini_batch_update(X, weighted):
    init = X[:4]
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(X)) if weighted else None
    ours = KMeans(4, init=init)
    ref = MiniBatchKMeans(4, init=init, n_init=1, reassignment_ratio=0)
    for a in range(0, len(X), 1000):
        sw = None if w is None else w[a:a + 1000]
        ours.partial_fit(X[a:a + 1000], sample_weight=sw)
        ref.partial_fit(X[a:a + 1000], sample_weight=sw)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12,
                               atol=1e-12)
    assert ours.n_steps_ == ref.n_steps_ == 20


def test_mixture_stream_approaches_the_batch_fit(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stream = GaussianMixture(4, random_state=0)
        for batch in batches(X):
            stream.partial_fit(batch)
        full = GaussianMixture(4, random_state=0).fit(X)
    assert stream.n_steps_ == 20 and len(stream.lower_bounds_) >= 20
    assert stream.score(X) == pytest.approx(full.score(X), abs=0.01)
    order_s, order_f = np.argsort(stream.means_[:, 0]), np.argsort(full.means_[:, 0])
    np.testing.assert_allclose(stream.means_[order_s], full.means_[order_f], atol=0.1)
    assert stream.reseeds_ == []


def test_one_stepwise_step_by_hand(X):
    """The second batch's step: the fit's statistics per unit weight and the batch's (scipy
    densities), mixed with η = 2^−0.6, then the M-step by hand."""
    b0, b1 = X[:5000], X[5000:8000]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = GaussianMixture(4, random_state=0).fit(b0)
    shift, stored = est._fit_stats
    w0, m0, c0 = est.weights_.copy(), est.means_.copy(), est.covariances_.copy()
    est.partial_fit(b1)

    def raw(nk, s1, s2_packed, shift):
        d = s1.shape[1]
        iu, ju = np.triu_indices(d)
        s2 = np.zeros((len(nk), d, d))
        s2[:, iu, ju] = s2_packed
        s2[:, ju, iu] = s2_packed
        sx = s1 + nk[:, None] * shift
        sxx = (s2 + np.einsum("ki,j->kij", s1, shift) + np.einsum("i,kj->kij", shift, s1)
               + nk[:, None, None] * np.outer(shift, shift))
        return nk, sx, sxx

    n0, sx0, sxx0 = raw(stored.nk, stored.s1, stored.s2, shift)
    total0 = stored.weight_sum
    logp = np.stack([np.log(w0[k]) + multivariate_normal(m0[k], c0[k]).logpdf(b1)
                     for k in range(4)], axis=1)
    resp = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
    eta = 2.0 ** -0.6
    assert step_size(0) == pytest.approx(eta)
    mix = [(1 - eta) * a / total0 + eta * b / len(b1) for a, b in (
        (n0, resp.sum(0)), (sx0, resp.T @ b1), (sxx0, np.einsum("nk,ni,nj->kij", resp, b1, b1)))]
    nk = mix[0] + 10 * np.finfo(float).eps
    means = mix[1] / nk[:, None]
    covs = mix[2] / nk[:, None, None] - np.einsum("ki,kj->kij", means, means) + 1e-6 * np.eye(3)
    np.testing.assert_allclose(est.means_, means, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(est.covariances_, covs, rtol=1e-8, atol=1e-9)
    np.testing.assert_allclose(est.weights_, nk / nk.sum(), rtol=1e-9)
    assert est.lower_bound_ == pytest.approx(float(logsumexp(logp, axis=1).mean()), rel=1e-10)
    assert est.n_steps_ == 2


@pytest.mark.parametrize("make", [lambda: GaussianMixture(4, random_state=0),
                                  lambda: KMeans(4, random_state=0)], ids=["gmm", "kmeans"])
def test_dask_batches_equal_numpy_batches_and_repeat_exactly(X, make):
    def run(as_dask):
        est = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for batch in batches(X[:8000], 2000):
                est.partial_fit(da.from_array(batch, chunks=(500, -1)) if as_dask else batch)
        return est.means_ if hasattr(est, "means_") else est.cluster_centers_

    numpy_run = run(False)
    np.testing.assert_array_equal(run(False), numpy_run)
    np.testing.assert_allclose(run(True), numpy_run, rtol=1e-10, atol=1e-10)


def test_partial_fit_continues_a_fit(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(4, random_state=0).fit(X[:15000])
        km = KMeans(4, random_state=0).fit(X[:15000])
    means, centers = gm.means_.copy(), km.cluster_centers_.copy()
    gm.partial_fit(X[15000:16000])
    km.partial_fit(X[15000:16000])
    assert gm.n_steps_ == 2 and km.n_steps_ == 1
    # a batch from the same distribution moves the model a little, not to the batch alone
    assert 0 < np.abs(gm.means_ - means).max() < 0.3
    assert 0 < np.abs(km.cluster_centers_ - centers).max() < 0.1
    # k-means: each center carries the weight of the rows the fit gave it
    assert km._counts.sum() == pytest.approx(16000)


def test_a_batch_with_other_features_is_refused(X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm = GaussianMixture(2, random_state=0).partial_fit(X[:2000])
    km = KMeans(2, random_state=0).partial_fit(X[:2000])
    for est in (gm, km):
        with pytest.raises(DataError, match="X has 2 features, but .* expecting 3 features"):
            est.partial_fit(X[:100, :2])
