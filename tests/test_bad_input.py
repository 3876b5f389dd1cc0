"""Bad input, through the API and through `daskem run`: a clear error before any model is
written, or a documented policy; never a silent wrong model, never a hang."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import yaml
import zarr
from conftest import make_blobs, run_cli

from daskem import (
    ClusterPolicyWarning,
    ConvergenceWarning,
    DataError,
    DataWarning,
    GaussianMixture,
    KMeans,
)
from daskem.store import RunStore

# ------------------------------------------------------------------------ through the API


def test_constant_feature_is_reported_and_harmless():
    X = make_blobs(1500, 3, 3, seed=1)
    X[:, 1] = 7.0
    with pytest.warns(DataWarning, match=r"1 feature\(s\) of X are constant \(columns 1\)"):
        gm = GaussianMixture(3, random_state=0).fit(X)
    np.testing.assert_allclose(gm.covariances_[:, 1, 1], 1e-6, rtol=1e-6)  # reg_covar only
    assert np.all(np.linalg.eigvalsh(gm.covariances_) > 0)


@pytest.mark.parametrize("make", [lambda: KMeans(2), lambda: GaussianMixture(2)])
def test_float32_offset_beyond_resolution_is_refused(make):
    rng = np.random.default_rng(0)
    X = (1e6 + rng.normal(scale=1e-3, size=(1000, 3))).astype(np.float32)
    with pytest.raises(DataError, match="no variation.*store the data as float64"):
        make().fit(X)


@pytest.mark.parametrize("make,what", [(lambda: KMeans(5, random_state=0), "clusters"),
                                       (lambda: GaussianMixture(5, random_state=0),
                                        "components")])
def test_fewer_distinct_points_than_components(make, what):
    X = np.repeat(np.random.default_rng(0).normal(size=(3, 2)), 100, axis=0)
    with pytest.warns(ConvergenceWarning, match=f"Number of distinct {what} \\(\\d\\)"):
        with pytest.warns(ClusterPolicyWarning):
            make().fit(X)


def test_collinear_features_keep_positive_definite_covariances():
    base = make_blobs(1200, 2, 3, seed=2)
    X = np.column_stack([base, base @ [1.0, -2.0]])  # the third column is a combination
    gm = GaussianMixture(3, random_state=0).fit(X)
    assert np.all(np.linalg.eigvalsh(gm.covariances_) > 0)
    assert np.isfinite(gm.score(X))


def test_mixture_component_started_far_away_is_reseeded():
    X = make_blobs(1500, 2, 3, seed=4, spread=0.5)
    means = np.array([X[0], X[1], [1e4, 1e4]])
    with pytest.warns(ClusterPolicyWarning, match="re-seeded"):
        gm = GaussianMixture(3, covariance_type="diag", means_init=means, random_state=0,
                             max_iter=200).fit(X)
    assert gm.reseeds_ and gm.reseeds_[0][1].component == 2
    assert np.abs(gm.means_).max() < 100  # moved onto the data


def test_high_dimensional_data_do_not_underflow():
    rng = np.random.default_rng(3)
    X = np.concatenate([rng.normal(size=(400, 512)), rng.normal(size=(400, 512)) + 1.5])
    gm = GaussianMixture(2, covariance_type="diag", random_state=0).fit(X)
    proba = gm.predict_proba(X)
    assert np.all(np.isfinite(proba)) and np.allclose(proba.sum(axis=1), 1)
    assert np.isfinite(gm.lower_bound_) and gm.lower_bound_ < -500  # densities ~ e^-700
    truth = np.repeat([0, 1], 400)
    labels = gm.predict(X)
    assert max((labels == truth).mean(), (labels != truth).mean()) == 1.0


# ------------------------------------------------------------------------ through `daskem run`


def write_array(path, data, chunks):
    group = zarr.open_group(str(path), mode="w")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr warns that string arrays are not in its spec
        group.create_array("X", data=data, chunks=chunks)
    return path


def run_job(tmp_path, data_path, **model):
    config = tmp_path / "job.yaml"
    store = tmp_path / "run.zarr"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(data_path)}, "model": {"n_components": 2, **model},
        "cluster": {"n_workers": 1, "dashboard_address": None},
        "run": {"store": str(store)}}))
    result = run_cli("run", config, "-q")
    lines = [line for line in result.stderr.splitlines()
             if line.startswith("daskem: error:")]
    model_written = RunStore(str(store)).exists() and "model" in zarr.open_group(
        str(store), mode="r")
    return result.returncode, lines, model_written


def good(n=400, d=3):
    return np.random.default_rng(0).normal(size=(n, d))


CASES = {
    "nan": (lambda p: write_array(p, np.where(np.arange(400)[:, None] == 123, np.nan, good()),
                                  (100, 3)), 3, "row 123 (chunk 1)"),
    "inf": (lambda p: write_array(p, np.where(np.arange(400)[:, None] == 7, np.inf, good()),
                                  (100, 3)), 3, "row 7 (chunk 0)"),
    "all-nan chunk": (lambda p: write_array(
        p, np.where((np.arange(400) // 100 == 2)[:, None], np.nan, good()), (100, 3)), 3,
        "300 non-finite value(s)"),
    "3-d": (lambda p: write_array(p, np.zeros((10, 4, 3)), (5, 4, 3)), 3, "is 3-D"),
    "strings": (lambda p: write_array(p, np.array([["a", "b"]] * 20), (10, 2)), 3,
                "dtype"),
    "float32 offset": (lambda p: write_array(
        p, (1e6 + 1e-3 * good()).astype(np.float32), (100, 3)), 3, "no variation"),
    "K > n": (lambda p: write_array(p, good(5), (5, 3)), 2,
              "model.n_components: 6 is larger than the 5 samples"),
    "missing store": (lambda p: p, 2, "data.path: no Zarr store"),
    "unreadable store": (lambda p: (p.mkdir(), (p / "zarr.json").write_text("{not json"),
                                    p)[-1], 3, "cannot open"),
}


@pytest.mark.distributed
@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_through_daskem_run(tmp_path, case):
    make, code, message = CASES[case]
    data_path = make(tmp_path / "data.zarr")
    model = {"n_components": 6} if case == "K > n" else {}
    returncode, lines, model_written = run_job(tmp_path, data_path, **model)
    assert returncode == code, lines
    assert len(lines) == 1 and message in lines[0], lines
    assert not model_written


@pytest.mark.distributed
def test_missing_variable_through_daskem_run(tmp_path):
    path = write_array(tmp_path / "data.zarr", good(), (100, 3))
    config = tmp_path / "job.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(path), "variable": "features"},
        "run": {"store": str(tmp_path / "r.zarr")}}))
    result = run_cli("run", config, timeout=120)
    assert result.returncode == 2
    assert "data.variable: no array 'features'" in result.stderr and "it has: X" in result.stderr
