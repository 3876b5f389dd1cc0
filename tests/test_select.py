"""Model selection: a grid of mixtures in shared passes, chosen by BIC or AIC."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from daskem import GaussianMixture, ParameterError, select_mixture
from daskem.estimators.selection import grid

TRUE_K = 4


def mixture_data(covariance_type: str, n_per=1500, d=3, k=TRUE_K, seed=0):
    """Well-separated components whose covariances have the structure of the type."""
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=1.0, size=(k, d))
    # Push the means apart: at least 12 standard deviations between any two.
    means = np.stack([m + 14.0 * np.eye(d)[i % d] * (1 + i // d) for i, m in enumerate(means)])
    tied = rng.normal(size=(d, d)) * 0.4 + np.eye(d)
    parts = []
    for i in range(k):
        z = rng.normal(size=(n_per, d))
        if covariance_type == "full":
            a = rng.normal(size=(d, d)) * 0.5 + np.eye(d)
        elif covariance_type == "tied":
            a = tied
        elif covariance_type == "diag":
            a = np.diag(rng.uniform(0.4, 1.6, size=d))
        elif covariance_type == "spherical":
            a = np.eye(d) * rng.uniform(0.5, 1.5)
        else:  # fixed: unit variance
            a = np.eye(d)
        parts.append(z @ a + means[i])
    x = np.concatenate(parts)
    return x[rng.permutation(len(x))]


@pytest.mark.parametrize("covariance_type", ["full", "tied", "diag", "spherical", "fixed"])
def test_bic_picks_the_true_number_of_components(covariance_type, sync_scheduler):
    x = da.from_array(mixture_data(covariance_type), chunks=1000)
    sel = select_mixture(x, range(1, 8), [covariance_type], random_state=0, n_init=2,
                         tol=1e-4, max_iter=300)
    assert sel.best.n_components == TRUE_K, sel.format()
    assert sel.best.covariance_type == covariance_type


def test_grid_matches_separate_fits_and_shares_passes(compute_counter):
    x = da.from_array(mixture_data("full", n_per=800, seed=3), chunks=700)
    settings = dict(random_state=7, tol=1e-4, max_iter=300, n_init=2, sample_size=2000)
    sel = select_mixture(x, [2, 3, 4, 5], ["full", "diag"], **settings)
    select_passes = compute_counter.calls
    separate_passes = 0
    for cand in sel.candidates:
        before = compute_counter.calls
        alone = GaussianMixture(cand.n_components, covariance_type=cand.covariance_type,
                                **settings).fit(x)
        separate_passes += compute_counter.calls - before
        est = cand.estimator
        np.testing.assert_allclose(est.means_, alone.means_, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(est.covariances_, alone.covariances_, rtol=1e-12,
                                   atol=1e-12)
        np.testing.assert_allclose(est.weights_, alone.weights_, rtol=1e-12, atol=1e-12)
        assert est.n_iter_ == alone.n_iter_
        assert cand.bic == pytest.approx(alone.bic(x), rel=1e-12)
        assert cand.aic == pytest.approx(alone.aic(x), rel=1e-12)
    # Each separate fit reads the data for its own summary, seeding and iterations.
    assert select_passes < separate_passes / 3, (select_passes, separate_passes)


def test_criteria_agree_with_scikit_learn(sync_scheduler):
    xn = mixture_data("diag", n_per=500, seed=5)
    sel = select_mixture(da.from_array(xn, chunks=600), [2, 4], ["full", "spherical"],
                         random_state=0, criterion="aic")
    reference_aic = []
    for cand in sel.candidates:
        est = cand.estimator
        ref = SkGaussianMixture(cand.n_components, covariance_type=cand.covariance_type)
        ref.weights_, ref.means_ = est.weights_, est.means_
        ref.covariances_, ref.precisions_cholesky_ = est.covariances_, est.precisions_cholesky_
        assert cand.bic == pytest.approx(ref.bic(xn), rel=1e-10)
        assert cand.aic == pytest.approx(ref.aic(xn), rel=1e-10)
        assert cand.log_likelihood == pytest.approx(ref.score(xn) * len(xn), rel=1e-10)
        assert cand.n_parameters == ref._n_parameters()
        reference_aic.append(ref.aic(xn))
    # The choice: the least AIC as scikit-learn computes it.
    assert sel.best_index == int(np.argmin(reference_aic))
    table = sel.table()
    assert sum(row["chosen"] for row in table) == 1
    assert "*" in sel.format().splitlines()[sel.best_index + 1][:1]


def test_converged_candidates_drop_out_of_the_passes(sync_scheduler):
    x = da.from_array(mixture_data("spherical", n_per=600, seed=2), chunks=800)
    running = []

    def callback(n_pass, states):
        running.append(sum(not s.converged and s.n_iter < 200 for s in states))

    sel = select_mixture(x, [1, 4, 6], ["spherical"], random_state=1, tol=1e-6,
                         max_iter=200, callback=callback, init_params="k-means||")
    iters = sorted(c.estimator.n_iter_ for c in sel.candidates)
    assert len(running) == iters[-1]  # one pass per iteration of the longest candidate
    assert running[0] == 3 and running[-1] == 0
    # running[j] counts the models still running after pass j + 1: it falls exactly at
    # the iterations at which candidates ended, and a candidate that ended is in no pass.
    ended = [j + 1 for j in range(len(running)) if running[j] < (running[j - 1] if j else 3)]
    assert ended == sorted(set(iters))


def test_grid_rejects_bad_candidates():
    with pytest.raises(ParameterError, match="covariance_types"):
        grid([2, 3], ["full", "ful"])
    with pytest.raises(ParameterError, match="repeat"):
        grid([2, 2], ["full"])
    with pytest.raises(ParameterError, match="integers >= 1"):
        grid([0, 3], ["full"])
    with pytest.raises(ParameterError, match="criterion"):
        select_mixture(np.zeros((10, 2)), [2], criterion="bick")
    assert grid([3, 2], "diag") == [(2, "diag"), (3, "diag")]


def test_interrupted_selection_resumes_to_the_same_candidates(tmp_path, sync_scheduler):
    from daskem.errors import ConvergenceWarning
    from daskem.store import RunStore

    x = da.from_array(mixture_data("full", n_per=500, seed=8), chunks=900)
    settings = dict(random_state=2, tol=1e-6, n_init=2)
    whole = select_mixture(x, [2, 4], ["full", "diag"], max_iter=40, **settings)
    store = RunStore(str(tmp_path / "sel.zarr"))
    # A run stopped after its first iteration (its checkpoints stay), then started again.
    with pytest.warns(ConvergenceWarning):
        select_mixture(x, [2, 4], ["full", "diag"], max_iter=1, checkpoint=store, **settings)
    assert max(s.n_iter for s in store.load()) == 1
    resumed = select_mixture(x, [2, 4], ["full", "diag"], max_iter=40, checkpoint=store,
                             **settings)
    for a, b in zip(whole.candidates, resumed.candidates, strict=True):
        np.testing.assert_array_equal(a.estimator.means_, b.estimator.means_)
        np.testing.assert_array_equal(a.estimator.covariances_, b.estimator.covariances_)
        assert a.estimator.lower_bounds_ == b.estimator.lower_bounds_
        assert a.bic == b.bic
