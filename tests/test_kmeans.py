"""KMeans against scikit-learn from the same centers, and k-means|| seeding quality."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from sklearn.cluster import KMeans as SkKMeans

from daskem import ClusterPolicyWarning, KMeans

CHUNKINGS = {
    "numpy": lambda X: X,
    "dask-one-chunk": lambda X: da.from_array(X, chunks=(-1, -1)),
    "dask-uneven": lambda X: da.from_array(X, chunks=((1200, 0, 1, 2799), (X.shape[1],))),
    "dask-even": lambda X: da.from_array(X, chunks=(500, -1)),
}


@pytest.fixture(scope="module")
def data():
    return make_blobs(4000, 5, 8, seed=11, spread=2.0)


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
@pytest.mark.parametrize("max_iter", [3, 300])
def test_matches_sklearn_lloyd(data, chunking, max_iter, sync_scheduler):
    init = data[np.random.default_rng(0).choice(len(data), 8, replace=False)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = SkKMeans(8, init=init, n_init=1, max_iter=max_iter, tol=1e-4,
                      algorithm="lloyd").fit(data)
    X = CHUNKINGS[chunking](data)
    ours = KMeans(8, init=init, max_iter=max_iter, tol=1e-4).fit(X)
    np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=1e-9)
    np.testing.assert_array_equal(np.asarray(ours.labels_), sk.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, sk.cluster_centers_, rtol=1e-9,
                               atol=1e-9)
    np.testing.assert_allclose(np.asarray(ours.transform(X)), sk.transform(data), rtol=1e-7)
    np.testing.assert_allclose(ours.score(X), sk.score(data), rtol=1e-9)
    # a pass with no label change ends both fits; daskem sees it one pass later
    assert sk.n_iter_ <= ours.n_iter_ <= sk.n_iter_ + 1


def test_weighted_matches_sklearn(data, sync_scheduler):
    rng = np.random.default_rng(1)
    w = rng.uniform(0.2, 3.0, size=len(data))
    init = data[:8]
    sk = SkKMeans(8, init=init, n_init=1, max_iter=50).fit(data, sample_weight=w)
    ours = KMeans(8, init=init, max_iter=50, chunk_rows=777).fit(data, sample_weight=w)
    np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=1e-9)
    np.testing.assert_array_equal(ours.labels_, sk.labels_)


def test_float32_labels_match_sklearn(data):
    x32 = data.astype(np.float32)
    init = x32[:8]
    sk = SkKMeans(8, init=init, n_init=1, max_iter=20).fit(x32)
    ours = KMeans(8, init=init, max_iter=20).fit(x32)
    assert (np.asarray(ours.labels_) == sk.labels_).mean() > 0.999
    np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=1e-5)


def test_kmeans_parallel_is_close_to_kmeans_plusplus():
    """64 well-separated clusters: k-means|| within 5% of scikit-learn's k-means++."""
    X = make_blobs(20000, 8, 64, seed=5, spread=0.4)
    X = da.from_array(X, chunks=(2500, -1))
    ratios = []
    xs = X.compute()
    for seed in range(5):
        ours = KMeans(64, init="k-means||", random_state=seed, max_iter=100).fit(X)
        sk = SkKMeans(64, init="k-means++", n_init=1, random_state=seed, max_iter=100).fit(xs)
        ratios.append(ours.inertia_ / sk.inertia_)
    assert np.median(ratios) < 1.05, ratios


@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_sample_inits_find_blobs(init):
    X, centers = make_blobs(5000, 3, 5, seed=2, spread=0.3, return_centers=True)
    km = KMeans(5, init=init, n_init=5, random_state=0).fit(X)
    gap = np.sqrt(((centers[:, None] - km.cluster_centers_[None]) ** 2).sum(-1)).min(1)
    assert gap.max() < 0.1


def test_labels_lazy_for_dask(data):
    X = da.from_array(data, chunks=(1000, -1))
    km = KMeans(8, random_state=0).fit(X)
    assert isinstance(km.labels_, da.Array)
    assert isinstance(km.transform(X), da.Array)
    assert km.transform(X).shape == (4000, 8)
    np.testing.assert_array_equal(km.labels_.compute(), km.predict(data))


def test_restarts_keep_lowest_inertia(data):
    # restart 0 of n_init=6 is the single run with the same random_state
    single = KMeans(8, init="random", n_init=1, random_state=3).fit(data)
    many = KMeans(8, init="random", n_init=6, random_state=3).fit(data)
    assert many.inertia_ <= single.inertia_
    others = [KMeans(8, init="random", n_init=1, random_state=s).fit(data).inertia_
              for s in range(4, 10)]
    assert many.inertia_ <= np.median(others)


def test_empty_cluster_policy_reported():
    X = np.concatenate([np.zeros((50, 2)), np.ones((50, 2)) * 10])
    X = X + np.random.default_rng(0).normal(scale=0.01, size=X.shape)
    init = np.array([[0.0, 0.0], [10.0, 10.0], [1e6, 1e6]])
    with pytest.warns(ClusterPolicyWarning, match="empty cluster"):
        km = KMeans(3, init=init, max_iter=10).fit(X)
    assert km.reseeds_
    assert np.abs(km.cluster_centers_).max() < 20  # moved onto data, not left far or at 0
    assert len(np.unique(km.labels_)) == 3


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_label_margin_is_a_lower_bound_of_the_true_one(dtype):
    from daskem.kernels.estep import KMeansKernelParams, kmeans_chunk_stats

    rng = np.random.default_rng(4)
    X = (rng.normal(size=(3000, 6)) + 100.0).astype(dtype)  # far from the origin
    centers = X[:7].astype(np.float64)
    stats = kmeans_chunk_stats(X, None, 0, KMeansKernelParams.build(centers, dtype))
    c = centers.astype(dtype).astype(np.float64)
    dist = np.sqrt(((X.astype(np.float64)[:, None, :] - c[None]) ** 2).sum(-1))
    two = np.sort(dist, axis=1)[:, :2]
    true = float((two[:, 1] - two[:, 0]).min())
    assert stats.margin <= true
    assert stats.margin >= true - (1e-3 if dtype == np.float32 else 1e-8)


def test_tol_zero_stops_when_no_label_changes_as_scikit_learn_does():
    """A pass that moves no label is a fixed point: the fit stops there (scikit-learn's
    strict convergence), and the inertia follows from that pass without another."""
    X = np.random.default_rng(0).normal(size=(5000, 10))
    init = X[:5]
    ours = KMeans(5, n_init=1, tol=0, init=init).fit(X)
    ref = SkKMeans(5, n_init=1, tol=0, init=init).fit(X)
    assert ours.converged_ and ours.n_iter_ == ref.n_iter_ < 300
    assert "score" not in ours.passes_  # no pass for the final inertia
    assert ours.inertia_ == pytest.approx(ref.inertia_, rel=1e-12)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, atol=1e-12)
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
