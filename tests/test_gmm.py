"""GaussianMixture against scikit-learn from the same start, over several chunkings."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskem import ConvergenceWarning, GaussianMixture

TYPES = ["full", "tied", "diag", "spherical"]
N_ITER = 6

CHUNKINGS = {
    "numpy-one-chunk": lambda X: X,
    "numpy-337-rows": lambda X: X,  # chunk_rows=337 below
    "dask-uneven": lambda X: da.from_array(X, chunks=((700, 1, 0, 999, 300), (X.shape[1],))),
    "dask-even": lambda X: da.from_array(X, chunks=(250, -1)),
}


def start(X, ctype, k=3, seed=0):
    """A reasonable common start: scikit-learn's own k-means init, run for one step."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning

        warnings.simplefilter("ignore", SkConvergenceWarning)
        sk = SkGaussianMixture(k, covariance_type=ctype, max_iter=1, random_state=seed).fit(X)
    return dict(weights_init=sk.weights_, means_init=sk.means_, precisions_init=sk.precisions_)


def fit_both(X, ctype, chunking, n_iter=N_ITER, **extra):
    init = start(X, ctype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn that tol=0 was not met
        sk = SkGaussianMixture(3, covariance_type=ctype, max_iter=n_iter, tol=0, **init).fit(X)
        ours = GaussianMixture(3, covariance_type=ctype, max_iter=n_iter, tol=0,
                               chunk_rows=337 if chunking == "numpy-337-rows" else None,
                               **init, **extra).fit(CHUNKINGS[chunking](X))
    return sk, ours


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("ctype", TYPES)
def test_matches_sklearn(ctype, chunking, blobs, sync_scheduler):
    sk, ours = fit_both(blobs, ctype, chunking)
    rel = dict(rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.weights_, sk.weights_, **rel)
    np.testing.assert_allclose(ours.means_, sk.means_, **rel)
    np.testing.assert_allclose(ours.covariances_, sk.covariances_, **rel)
    np.testing.assert_allclose(ours.precisions_cholesky_, sk.precisions_cholesky_, **rel)
    assert ours.n_iter_ == sk.n_iter_ == N_ITER
    np.testing.assert_allclose(ours.lower_bounds_, sk.lower_bounds_, rtol=1e-10)
    X = CHUNKINGS[chunking](blobs)
    np.testing.assert_allclose(ours.score(X), sk.score(blobs), rtol=1e-8)
    np.testing.assert_allclose(ours.bic(X), sk.bic(blobs), rtol=1e-8)
    np.testing.assert_allclose(ours.aic(X), sk.aic(blobs), rtol=1e-8)
    np.testing.assert_allclose(np.asarray(ours.score_samples(X)), sk.score_samples(blobs),
                               rtol=1e-8)
    np.testing.assert_allclose(np.asarray(ours.predict_proba(X)), sk.predict_proba(blobs),
                               atol=1e-8)
    np.testing.assert_array_equal(np.asarray(ours.predict(X)), sk.predict(blobs))


def test_converges_like_sklearn(blobs, sync_scheduler):
    init = start(blobs, "full")
    sk = SkGaussianMixture(3, tol=1e-8, max_iter=500, **init).fit(blobs)
    ours = GaussianMixture(3, tol=1e-8, max_iter=500, **init).fit(blobs)
    assert ours.converged_ and sk.converged_
    assert ours.n_iter_ == sk.n_iter_
    np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-6)


def test_per_sample_outputs_are_lazy_for_dask(blobs):
    X = da.from_array(blobs, chunks=(500, -1))
    gm = GaussianMixture(3, random_state=0).fit(X)
    for out in (gm.predict(X), gm.predict_proba(X), gm.score_samples(X), gm.fit_predict(X)):
        assert isinstance(out, da.Array)
        assert out.chunks[0] == X.chunks[0]
    assert gm.predict_proba(X).shape == (2000, 3)
    np.testing.assert_allclose(gm.predict_proba(X).sum(axis=1).compute(), 1.0)
    assert isinstance(gm.predict(blobs), np.ndarray)


def naive_em(X, weights, means, variance, n_iter, hard=False, update_cov=False):
    """Textbook EM with Σ_k = σ²·I held fixed (soft k-means), or classification EM."""
    k, d = means.shape
    for _ in range(n_iter):
        logp = np.stack([np.log(weights[j]) + multivariate_normal(
            means[j], variance * np.eye(d)).logpdf(X) for j in range(k)], axis=1)
        if hard:
            resp = np.zeros_like(logp)
            resp[np.arange(len(X)), logp.argmax(1)] = 1
        else:
            resp = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
        nk = resp.sum(0)
        means = resp.T @ X / nk[:, None]
        weights = nk / nk.sum()
    return weights, means


def test_fixed_covariance_is_soft_kmeans(blobs):
    rng = np.random.default_rng(0)
    means0 = blobs[rng.choice(len(blobs), 3, replace=False)]
    w0 = np.full(3, 1 / 3)
    with pytest.warns(ConvergenceWarning):
        gm = GaussianMixture(3, covariance_type="fixed", fixed_variance=2.5, max_iter=7,
                             tol=0, weights_init=w0, means_init=means0,
                             chunk_rows=300).fit(blobs)
    weights, means = naive_em(blobs, w0, means0, 2.5, 7)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-9)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-9)
    np.testing.assert_array_equal(gm.covariances_, np.full(3, 2.5))


def test_hard_assignment_is_classification_em(blobs):
    rng = np.random.default_rng(1)
    means0 = blobs[rng.choice(len(blobs), 3, replace=False)]
    w0 = np.full(3, 1 / 3)
    with pytest.warns(ConvergenceWarning):
        gm = GaussianMixture(3, covariance_type="fixed", assignment="hard", max_iter=5, tol=0,
                             weights_init=w0, means_init=means0, chunk_rows=300).fit(blobs)
    weights, means = naive_em(blobs, w0, means0, 1.0, 5, hard=True)
    np.testing.assert_allclose(gm.means_, means, rtol=1e-9)
    np.testing.assert_allclose(gm.weights_, weights, rtol=1e-9)


@pytest.mark.parametrize("init_params", ["kmeans", "k-means++", "random", "random_from_data"])
@pytest.mark.parametrize("ctype", ["full", "diag", "fixed"])
def test_inits_find_well_separated_blobs(init_params, ctype):
    X, centers = make_blobs(3000, 2, 4, seed=3, spread=0.3, return_centers=True)
    gm = GaussianMixture(4, covariance_type=ctype, init_params=init_params, n_init=3,
                         random_state=0, max_iter=300, fixed_variance=0.5).fit(X)
    assert gm.converged_
    # every true center has a fitted mean next to it
    gap = np.sqrt(((centers[:, None, :] - gm.means_[None]) ** 2).sum(-1)).min(axis=1)
    assert gap.max() < 0.2, gap
    if ctype != "fixed":
        # the best of 3 restarts is as good as scikit-learn's best of 5
        sk = SkGaussianMixture(4, covariance_type=ctype, n_init=5, random_state=0).fit(X)
        assert gm.score(X) >= sk.score(X) - 1e-4


def test_n_init_restarts_share_passes(blobs, compute_counter):
    """Three restarts cost the passes of one: one compute per iteration for all of them."""
    X = da.from_array(blobs, chunks=(400, -1))
    init = start(blobs, "diag")
    with pytest.warns(ConvergenceWarning):
        GaussianMixture(3, covariance_type="diag", max_iter=4, tol=0, **init).fit(X)
    one = compute_counter.calls
    compute_counter.calls = 0
    with pytest.warns(ConvergenceWarning):
        GaussianMixture(3, covariance_type="diag", max_iter=4, tol=0, n_init=3,
                        **init).fit(X)
    assert compute_counter.calls == one


def test_one_compute_per_iteration(blobs, compute_counter):
    X = da.from_array(blobs, chunks=(400, -1))
    init = start(blobs, "full")
    calls = []
    for n_iter in (3, 7):
        compute_counter.calls = 0
        with pytest.warns(ConvergenceWarning):
            GaussianMixture(3, max_iter=n_iter, tol=0, **init).fit(X)
        calls.append(compute_counter.calls)
    assert calls[1] - calls[0] == 4
    assert calls[0] == 3 + 1  # the summary pass, then one per iteration


def test_float32_stays_close_to_float64(blobs):
    init = start(blobs, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        g64 = GaussianMixture(3, max_iter=5, tol=0, **init).fit(blobs)
        g32 = GaussianMixture(3, max_iter=5, tol=0, **init).fit(blobs.astype(np.float32))
    np.testing.assert_allclose(g32.means_, g64.means_, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(g32.covariances_, g64.covariances_, rtol=1e-3, atol=1e-4)
    assert g32.means_.dtype == np.float32  # as scikit-learn; the fit itself ran in float64


def test_sample_is_ancestral(blobs):
    gm = GaussianMixture(3, random_state=0).fit(blobs)
    X, y = gm.sample(20000)
    assert X.shape == (20000, 3)
    np.testing.assert_allclose(np.bincount(y, minlength=3) / 20000, gm.weights_, atol=0.02)
    for k in range(3):
        np.testing.assert_allclose(X[y == k].mean(0), gm.means_[k], atol=0.15)
        np.testing.assert_allclose(np.cov(X[y == k].T), gm.covariances_[k], atol=0.3)


def test_sample_weight_equals_repeated_rows(blobs, sync_scheduler):
    rng = np.random.default_rng(0)
    counts = rng.integers(1, 4, size=len(blobs))
    repeated = np.repeat(blobs, counts, axis=0)
    init = start(blobs, "full")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        a = GaussianMixture(3, max_iter=5, tol=0, **init).fit(blobs, sample_weight=counts)
        b = GaussianMixture(3, max_iter=5, tol=0, **init).fit(repeated)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    np.testing.assert_allclose(a.covariances_, b.covariances_, rtol=1e-9)
    np.testing.assert_allclose(a.lower_bounds_, b.lower_bounds_, rtol=1e-12)
