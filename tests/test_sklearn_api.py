"""daskem's estimators as scikit-learn estimators: scikit-learn's own estimator checks, and
the API that code written against scikit-learn's KMeans and GaussianMixture uses."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from daskem import GaussianMixture, KMeans

# The checks daskem fails, and why (the README's table of differences repeats them).
# scikit-learn's own KMeans fails the same two checks (its expected failures).
WEIGHT_EQUIVALENCE = ("the random initialisation draws rows: a row repeated twice and a row "
                      "of weight 2 are drawn differently (scikit-learn's KMeans fails this too)")
EXPECTED_FAILURES = {
    "KMeans": {"check_sample_weight_equivalence_on_dense_data": WEIGHT_EQUIVALENCE,
               "check_sample_weight_equivalence_on_sparse_data": WEIGHT_EQUIVALENCE},
    "GaussianMixture": {"check_sample_weight_equivalence_on_dense_data": WEIGHT_EQUIVALENCE},
}


def expected_failed_checks(estimator):
    return EXPECTED_FAILURES[type(estimator).__name__]


@pytest.mark.filterwarnings("ignore::UserWarning")  # daskem's and scikit-learn's own
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@parametrize_with_checks([KMeans(n_clusters=3, n_init=1, random_state=0),
                          GaussianMixture(n_components=2, random_state=0)],
                         expected_failed_checks=expected_failed_checks)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


# ---------------------------------------------------------------- behaviour, against scikit-learn

import warnings  # noqa: E402

import dask.array as da  # noqa: E402
import pandas as pd  # noqa: E402
import scipy.sparse as sp  # noqa: E402
from conftest import make_blobs  # noqa: E402
from sklearn import cluster, mixture  # noqa: E402
from sklearn.base import clone, is_clusterer  # noqa: E402
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning  # noqa: E402
from sklearn.exceptions import NotFittedError as SklearnNotFittedError  # noqa: E402
from sklearn.metrics.pairwise import euclidean_distances  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402

from daskem import CovarianceError  # noqa: E402

CTYPES = ["full", "tied", "diag", "spherical"]


@pytest.fixture(scope="module")
def X():
    return make_blobs(n_samples=1500, n_features=4, n_centers=3, seed=3)


def test_tol_zero_stops_when_no_label_changes():
    """scikit-learn's test_kmeans_convergence: tol=0 stops once labels are stable."""
    X = np.random.default_rng(0).normal(size=(5000, 10))
    init = X[:5].copy()
    ours = KMeans(5, init=init, n_init=1, tol=0).fit(X)
    ref = cluster.KMeans(5, init=init, n_init=1, tol=0, algorithm="lloyd").fit(X)
    assert ours.converged_ and ours.n_iter_ < 300
    assert ours.n_iter_ == ref.n_iter_
    np.testing.assert_array_equal(ours.labels_, ref.labels_)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12)


@pytest.mark.parametrize("ctype", CTYPES)
def test_degenerate_covariance_without_regularisation(ctype):
    """scikit-learn's test_regularisation: every covariance type fails alike, a ValueError
    naming what collapsed; a small reg_covar fits."""
    X = np.vstack((np.ones((5, 5)), np.zeros((5, 5))))
    with pytest.raises(ValueError, match="ill-defined empirical covariance.*increase reg_covar"
                       ) as info:
        GaussianMixture(2, covariance_type=ctype, reg_covar=0, random_state=0).fit(X)
    assert isinstance(info.value, CovarianceError)
    assert ("tied covariance" if ctype == "tied" else "components [0, 1]") in str(info.value)
    with pytest.raises(ValueError, match="ill-defined"):
        mixture.GaussianMixture(2, covariance_type=ctype, reg_covar=0, random_state=0).fit(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        GaussianMixture(2, covariance_type=ctype, reg_covar=1e-6, random_state=0).fit(X)


def _start(X, k, ctype, seed=0):
    """Initial parameters both libraries take (from scikit-learn's own initialisation)."""
    ref = mixture.GaussianMixture(k, covariance_type=ctype, max_iter=0, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref.fit(X)
    return dict(weights_init=ref.weights_, means_init=ref.means_,
                precisions_init=ref.precisions_)


@pytest.mark.parametrize("ctype", CTYPES)
def test_warm_start_continues_em(X, ctype):
    """Four warm-started fits of one iteration each: the lower bound never falls, and the
    model is scikit-learn's after the same four warm-started iterations."""
    start = _start(X, 3, ctype)
    ours = GaussianMixture(3, covariance_type=ctype, max_iter=1, warm_start=True, **start)
    ref = mixture.GaussianMixture(3, covariance_type=ctype, max_iter=1, warm_start=True,
                                  **start)
    bounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(4):
            ours.fit(X)
            ref.fit(X)
            bounds.append(ours.lower_bound_)
    assert np.all(np.diff(bounds) >= -1e-12)
    np.testing.assert_allclose(ours.means_, ref.means_, rtol=1e-10)
    np.testing.assert_allclose(ours.covariances_, ref.covariances_, rtol=1e-10)
    np.testing.assert_allclose(ours.lower_bound_, ref.lower_bound_, rtol=1e-10)
    cold = GaussianMixture(3, covariance_type=ctype, max_iter=4, tol=0, **start)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cold.fit(X)
    np.testing.assert_allclose(ours.means_, cold.means_, rtol=1e-10)


def test_max_iter_zero_keeps_the_initial_parameters(X):
    start = _start(X, 3, "full")
    ours = GaussianMixture(3, max_iter=0, **start)
    # (scikit-learn cannot take all three initial arrays with max_iter=0: it then has no
    # covariances_; it is given the means only.)
    ref = mixture.GaussianMixture(3, max_iter=0, means_init=start["means_init"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # neither warns about convergence
        ours.fit(X)
        ref.fit(X)
    assert ours.n_iter_ == ref.n_iter_ == 0 and not ours.converged_ and not ref.converged_
    assert ours.lower_bound_ == ref.lower_bound_ == -np.inf
    np.testing.assert_allclose(ours.means_, start["means_init"], rtol=1e-12)
    np.testing.assert_allclose(ours.weights_, start["weights_init"], rtol=1e-12)
    np.testing.assert_allclose(ours.precisions_, start["precisions_init"], rtol=1e-10)


def test_float32_in_float32_out(X):
    X32 = X.astype(np.float32)
    km = KMeans(3, random_state=0).fit(X32)
    assert km.cluster_centers_.dtype == np.float32
    assert km.transform(X32).dtype == np.float32
    gm = GaussianMixture(3, random_state=0).fit(X32)
    for name in ("weights_", "means_", "covariances_", "precisions_cholesky_",
                 "precisions_"):
        assert getattr(gm, name).dtype == np.float32, name
    assert gm.predict_proba(X32).dtype == gm.score_samples(X32).dtype == np.float32
    lazy = gm.score_samples(da.from_array(X32, chunks=500))
    assert lazy.dtype == lazy.compute().dtype == np.float32
    # and float64 stays float64
    assert KMeans(3, random_state=0).fit(X).cluster_centers_.dtype == np.float64


@pytest.mark.parametrize("fmt", ["csr", "csc", "coo"])
def test_sparse_input_matches_dense(fmt):
    rng = np.random.default_rng(1)
    dense = make_blobs(n_samples=800, n_features=6, n_centers=3, seed=1)
    dense[rng.random(dense.shape) < 0.5] = 0.0
    sparse = sp.random(1, 1).asformat(fmt).__class__(dense)
    init = dense[:3].copy()
    a = KMeans(3, init=init, chunk_rows=100).fit(dense)
    b = KMeans(3, init=init, chunk_rows=100).fit(sparse)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-12)
    np.testing.assert_array_equal(b.labels_, a.labels_)
    np.testing.assert_allclose(b.transform(sparse), a.transform(dense), rtol=1e-12)
    np.testing.assert_allclose(b.score(sparse), a.score(dense), rtol=1e-12)
    ref = cluster.KMeans(3, init=init, n_init=1).fit(sp.csr_matrix(dense))
    np.testing.assert_allclose(b.cluster_centers_, ref.cluster_centers_, rtol=1e-10)


def test_dask_array_of_sparse_chunks_matches_dense():
    dense = make_blobs(n_samples=900, n_features=5, n_centers=3, seed=2)
    dense[np.abs(dense) < 2] = 0.0
    lazy = da.from_array(sp.csr_matrix(dense), chunks=(200, -1), asarray=False)
    init = dense[:3].copy()
    a = KMeans(3, init=init).fit(dense)
    b = KMeans(3, init=init).fit(lazy)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-12)
    np.testing.assert_array_equal(b.labels_.compute(), a.labels_)
    np.testing.assert_allclose(b.transform(lazy).compute(), a.transform(dense), rtol=1e-12)


def test_mixture_refuses_sparse_input_as_scikit_learn_does(X):
    with pytest.raises(TypeError, match="Sparse data was passed"):
        GaussianMixture(2).fit(sp.csr_matrix(X))


def test_transform_is_the_distance_to_every_center(X):
    km = KMeans(3, random_state=0).fit(X)
    np.testing.assert_allclose(km.transform(X), euclidean_distances(X, km.cluster_centers_),
                               rtol=1e-10)
    np.testing.assert_allclose(km.fit_transform(X), km.transform(X), rtol=1e-12)
    np.testing.assert_array_equal(km.fit_predict(X), km.predict(X))


def test_feature_names(X):
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    km = KMeans(3, random_state=0).fit(df)
    np.testing.assert_array_equal(km.feature_names_in_, ["a", "b", "c", "d"])
    ref = cluster.KMeans(3, n_init=1, random_state=0).fit(df)
    np.testing.assert_array_equal(km.get_feature_names_out(), ref.get_feature_names_out())
    with pytest.raises(ValueError, match="Feature names unseen at fit time"):
        km.predict(df.rename(columns={"d": "e"}))
    out = km.set_output(transform="pandas").transform(df)
    assert list(out.columns) == list(ref.get_feature_names_out())
    gm = GaussianMixture(2, random_state=0).fit(df)
    np.testing.assert_array_equal(gm.feature_names_in_, ["a", "b", "c", "d"])
    gm = GaussianMixture(2, random_state=0).fit(X)
    assert not hasattr(gm, "feature_names_in_")
    with pytest.raises(ValueError, match="X has 3 features, but GaussianMixture is expecting 4"):
        gm.score_samples(X[:, :3])


def test_callable_init(X):
    calls = []

    def init(data, n_clusters, random_state):
        calls.append((data.shape, n_clusters, type(random_state)))
        return data[random_state.choice(len(data), n_clusters, replace=False)]

    km = KMeans(3, init=init, n_init=2, random_state=0).fit(X)
    assert calls == [(X.shape, 3, np.random.RandomState)] * 2
    first = init(X, 3, np.random.RandomState(0))
    ref = KMeans(3, init=first).fit(X)
    ours = KMeans(3, init=lambda d, k, random_state: first, n_init=1).fit(X)
    np.testing.assert_allclose(ours.cluster_centers_, ref.cluster_centers_, rtol=1e-12)
    assert len(km.restarts_) == 2


def test_algorithm_and_copy_x(X):
    init = X[:3].copy()
    lloyd = KMeans(3, init=init).fit(X)
    elkan = KMeans(3, init=init, algorithm="elkan", copy_x=False).fit(X)
    np.testing.assert_allclose(elkan.cluster_centers_, lloyd.cluster_centers_, rtol=1e-12)
    before = X.copy()
    KMeans(3, init=init, copy_x=False).fit(X)
    np.testing.assert_array_equal(X, before)
    with pytest.raises(ValueError, match="algorithm must be one of lloyd, elkan"):
        KMeans(3, algorithm="auto").fit(X)


def test_unfitted_and_warning_classes_are_scikit_learns(X):
    with pytest.raises(SklearnNotFittedError):
        GaussianMixture(2).sample(0)
    with pytest.raises(SklearnNotFittedError):
        KMeans(2).transform(X)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        warnings.simplefilter("error", SklearnConvergenceWarning)
        with pytest.raises(SklearnConvergenceWarning):
            GaussianMixture(3, max_iter=1, tol=0, random_state=0).fit(X)
    gm = GaussianMixture(2, random_state=0).fit(X)
    with pytest.raises(ValueError, match="n_samples must be an integer >= 1"):
        gm.sample(0)


def test_grid_search_over_n_components_by_score():
    X = make_blobs(n_samples=1200, n_features=2, n_centers=3, seed=5)
    grid = {"n_components": [1, 2, 3]}
    ours = GridSearchCV(GaussianMixture(random_state=0, n_init=2), grid, cv=3).fit(X)
    ref = GridSearchCV(mixture.GaussianMixture(random_state=0, n_init=2), grid, cv=3).fit(X)
    assert ours.best_params_ == ref.best_params_ == {"n_components": 3}
    np.testing.assert_allclose(ours.cv_results_["mean_test_score"],
                               ref.cv_results_["mean_test_score"], rtol=1e-3)


def test_pipeline_with_a_scaler(X):
    init = StandardScaler().fit_transform(X)[:3]
    ours = make_pipeline(StandardScaler(), KMeans(3, init=init)).fit(X)
    ref = make_pipeline(StandardScaler(), cluster.KMeans(3, init=init, n_init=1)).fit(X)
    np.testing.assert_array_equal(ours.predict(X), ref.predict(X))
    np.testing.assert_allclose(ours.transform(X), ref.transform(X), rtol=1e-10)
    np.testing.assert_allclose(ours.score(X), ref.score(X), rtol=1e-10)


def test_clone_tags_and_repr():
    km = KMeans(4, init="random", algorithm="elkan")
    assert clone(km).get_params() == km.get_params()
    assert is_clusterer(km) and km.__sklearn_tags__().input_tags.sparse
    assert not GaussianMixture().__sklearn_tags__().input_tags.sparse
    assert repr(km) == "KMeans(algorithm='elkan', init='random', n_clusters=4)"
    assert "KMeans" in km._repr_html_()
    with pytest.raises(ValueError, match="Invalid parameter 'n_cluster'"):
        km.set_params(n_cluster=3)


def test_scikit_learn_stays_out_of_the_engine_and_the_workers():
    """Only the estimators import scikit-learn; what a worker runs never loads it."""
    import pathlib
    import re
    import subprocess
    import sys

    import daskem

    root = pathlib.Path(daskem.__file__).parent
    importers = sorted(str(p.relative_to(root)) for p in root.rglob("*.py")
                       if re.search(r"^\s*(from|import) sklearn", p.read_text(), re.M))
    assert importers and all(p.startswith("estimators/") or p == "errors.py"
                             for p in importers), importers
    code = ("import sys, numpy as np\n"
            "import daskem.engine.em, daskem.engine.data, daskem.io, daskem.kernels.compiled\n"
            "from daskem.kernels.estep import KMeansKernelParams, kmeans_chunk_stats\n"
            "x = np.random.default_rng(0).normal(size=(100, 3))\n"
            "kmeans_chunk_stats(x, None, 0, KMeansKernelParams.build(x[:2], x.dtype))\n"
            "from daskem.errors import DataError\n"
            "print('sklearn' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("ours, theirs", [(KMeans, cluster.KMeans),
                                          (GaussianMixture, mixture.GaussianMixture)])
def test_every_parameter_attribute_and_method_of_scikit_learns(ours, theirs, X):
    assert set(theirs().get_params()) <= set(ours().get_params())
    public = {name for name in dir(theirs) if not name.startswith("_")}
    assert public <= set(dir(ours)), public - set(dir(ours))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ours(3, random_state=0).fit(X)
        b = theirs(3, random_state=0).fit(X)
    fitted = {name for name in vars(b) if name.endswith("_") and not name.startswith("_")}
    assert fitted <= set(vars(a)), fitted - set(vars(a))
