"""Bad input gets one clear error naming what is wrong; odd but valid input a policy."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import xarray as xr
from conftest import make_blobs

from daskem import (
    DataError,
    GaussianMixture,
    KMeans,
    NotFittedError,
    ParameterError,
)

ESTIMATORS = [lambda **kw: KMeans(3, random_state=0, **kw),
              lambda **kw: GaussianMixture(3, random_state=0, **kw)]


@pytest.fixture(scope="module")
def X():
    return make_blobs(600, 3, 3, seed=4)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_one_dimensional_input_refused_with_hint(make, X):
    with pytest.raises(DataError, match=r"2-D.*Reshape your data with X.reshape\(-1, 1\)"):
        make().fit(X[:, 0])


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize("bad", [np.array([["a", "b"]] * 10), np.array([[1 + 2j]] * 10),
                                 np.array([[None, 1.0]] * 10, dtype=object)])
def test_non_numeric_dtype_refused(make, bad):
    # In memory, scikit-learn's check_array words it; lazily, the data layer names the dtype.
    # (None in an object array is a missing value: refused as non-finite, naming the row.)
    with pytest.raises(DataError, match="convert string to float|Complex data not supported|"
                                        "non-finite value.*row 0"):
        make().fit(bad)
    with pytest.raises(DataError, match="dtype"):
        make().fit(da.from_array(bad, chunks=5))


@pytest.mark.parametrize("make", ESTIMATORS)
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_values_name_the_row(make, X, value):
    bad = X.copy()
    bad[417, 1] = value
    with pytest.raises(DataError, match="row 417"):
        make().fit(da.from_array(bad, chunks=(100, -1)))


def test_non_finite_chunk_named(X):
    bad = X.copy()
    bad[200:300] = np.nan  # an all-NaN chunk
    with pytest.raises(DataError, match=r"300 non-finite.*row 200 \(chunk 2\)"):
        KMeans(3).fit(da.from_array(bad, chunks=(100, -1)))


@pytest.mark.parametrize("make,name", [(lambda: KMeans(700), "n_clusters"),
                                       (lambda: GaussianMixture(700), "n_components")])
def test_fewer_samples_than_components(make, name, X):
    with pytest.raises(DataError, match=f"n_samples=600 should be >= {name}=700"):
        make().fit(X)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_components=0), "n_components must be an integer >= 1"),
    (dict(covariance_type="ful"), "covariance_type must be one of full, tied, diag"),
    (dict(tol=-1.0), "tol must be >= 0"),
    (dict(reg_covar=float("nan")), "reg_covar must be a finite number"),
    (dict(init_params="kmeans++"), "init_params must be one of"),
    (dict(assignment="soft-ish"), "assignment must be one of soft, hard"),
    (dict(n_init=0), "n_init must be an integer >= 1"),
    (dict(means_init=np.zeros((2, 3))), r"'means_init' should have the shape of \(3, 3\)"),
    (dict(weights_init=[0.5, 0.5, 0.5]), "'weights_init' should be non-negative and sum to 1"),
    (dict(precisions_init=-np.ones((3, 3))), "'precisions_init'.*positive"),
    (dict(split_every=1), "split_every must be an integer >= 2"),
    (dict(covariance_type="full", precisions_init=np.stack([np.triu(np.ones((3, 3)))] * 3)),
     "'precisions_init'.*symmetric"),
])
def test_gaussian_mixture_parameters(kwargs, match, X):
    params = dict(n_components=3, covariance_type="diag")
    params.update(kwargs)
    with pytest.raises(ParameterError, match=match):
        GaussianMixture(**params).fit(X)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_clusters=0), "n_clusters must be an integer >= 1"),
    (dict(n_clusters=2.5), "n_clusters must be an integer"),
    (dict(init="kmeans"), "init must be one of k-means||, k-means++, random"),
    (dict(init=np.zeros((2, 3))), r"'init' should have the shape of \(3, 3\)"),
    (dict(max_iter=0), "max_iter must be an integer >= 1"),
])
def test_kmeans_parameters(kwargs, match, X):
    params = dict(n_clusters=3)
    params.update(kwargs)
    with pytest.raises(ParameterError, match=match):
        KMeans(**params).fit(X)


@pytest.mark.parametrize("make", ESTIMATORS)
def test_bad_sample_weight(make, X):
    w = np.ones(len(X))
    w[5] = -1
    with pytest.raises(DataError, match="negative or non-finite.*row 5"):
        make().fit(X, sample_weight=w)
    with pytest.raises(DataError, match=r"sample_weight must have shape \(600,\)"):
        make().fit(X, sample_weight=np.ones(10))
    with pytest.raises(DataError, match="sums to zero"):
        make().fit(X, sample_weight=np.zeros(len(X)))


@pytest.mark.parametrize("make", ESTIMATORS)
def test_predict_checks(make, X):
    est = make()
    with pytest.raises(NotFittedError, match="not fitted yet"):
        est.predict(X)
    est.fit(X)
    with pytest.raises(DataError, match=f"X has 2 features, but {type(est).__name__} is "
                                        "expecting 3 features as input"):
        est.predict(X[:, :2])


def test_integers_and_booleans_become_float64():
    rng = np.random.default_rng(0)
    Xi = rng.integers(0, 100, size=(300, 2))
    a = KMeans(3, random_state=0).fit(Xi)
    b = KMeans(3, random_state=0).fit(Xi.astype(np.float64))
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    KMeans(2, random_state=0).fit(rng.integers(0, 2, size=(300, 3)).astype(bool))


def test_xarray_input_equals_numpy(X):
    arr = xr.DataArray(X, dims=("sample", "feature"))
    chunked = xr.DataArray(da.from_array(X, chunks=(200, -1)), dims=("sample", "feature"))
    a = GaussianMixture(3, random_state=0).fit(X)
    for data in (arr, chunked):
        b = GaussianMixture(3, random_state=0).fit(data)
        np.testing.assert_allclose(b.means_, a.means_, rtol=1e-9)


def test_dask_columns_are_rechunked(X):
    Xd = da.from_array(X, chunks=(200, 1))
    a = KMeans(3, init=X[:3]).fit(X)
    b = KMeans(3, init=X[:3]).fit(Xd)
    np.testing.assert_allclose(b.cluster_centers_, a.cluster_centers_, rtol=1e-12)


def test_sklearn_clone_and_params():
    from sklearn.base import clone

    gm = GaussianMixture(4, covariance_type="tied", reg_covar=1e-4)
    copy = clone(gm)
    assert copy.get_params() == gm.get_params()
    assert "covariance_type='tied'" in repr(gm)
    with pytest.raises(ValueError, match="Invalid parameter 'colour'"):
        gm.set_params(colour="red")
