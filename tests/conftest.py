from __future__ import annotations

import subprocess
import sys

import dask
import numpy as np
import pytest


def make_blobs(n_samples=2000, n_features=3, n_centers=3, seed=0, spread=1.0, offset=0.0,
               dtype=np.float64, return_centers=False):
    """Anisotropic Gaussian blobs with unequal sizes (a mixture worth fitting)."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=6.0, size=(n_centers, n_features))
    share = np.linspace(1, 2, n_centers)
    sizes = rng.multinomial(n_samples, share / share.sum())
    parts = []
    for c, size in zip(centers, sizes, strict=False):
        a = rng.normal(size=(n_features, n_features)) * 0.5 + np.eye(n_features)
        parts.append(rng.normal(size=(size, n_features)) @ a * spread + c)
    X = np.concatenate(parts) + offset
    X = X[rng.permutation(n_samples)].astype(dtype)
    return (X, centers + offset) if return_centers else X


@pytest.fixture
def blobs():
    return make_blobs()


@pytest.fixture
def sync_scheduler():
    with dask.config.set(scheduler="synchronous"):
        yield


class ComputeCounter:
    """Counts how many times dask's scheduler is asked to run a graph."""

    def __init__(self):
        self.calls = 0

    def __call__(self, dsk, keys, **kwargs):
        self.calls += 1
        return dask.get(dsk, keys, **kwargs)


@pytest.fixture
def compute_counter():
    counter = ComputeCounter()
    with dask.config.set(scheduler=counter):
        yield counter


def assert_rel(actual, expected, rtol, atol=0.0, what=""):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


SCRIPTS = __import__("pathlib").Path(__file__).resolve().parents[1] / "scripts"


def feature_store_module():
    """scripts/make_feature_store.py, imported (the package never imports scripts/)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_feature_store",
                                                  SCRIPTS / "make_feature_store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_store(path, n_rows: int, n_features: int, n_components: int, *,
                    chunk_rows: int, seed: int):
    """Write a Zarr feature store from the synthetic generator at ``path``; return it."""
    mfs = feature_store_module()
    mfs.write_zarr(str(path), mfs.synthetic_array(n_rows, n_features, n_components,
                                                  chunk_rows=chunk_rows, seed=seed))
    return path


@pytest.fixture(scope="session")
def small_store(tmp_path_factory):
    """A 3,000 x 4 Zarr feature store from the synthetic generator."""
    return synthetic_store(tmp_path_factory.mktemp("stores") / "small.zarr", 3000, 4, 3,
                           chunk_rows=700, seed=5)


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """The real ``daskem`` command (``python -m daskem ARGS``), its output captured."""
    return subprocess.run([sys.executable, "-m", "daskem", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, timeout=timeout, env=env)


def start_cli(*args, cwd=None, **popen) -> subprocess.Popen:
    """The real ``daskem`` command started in a session of its own (so that a test can
    signal it and its worker processes together)."""
    popen = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True, **popen}
    return subprocess.Popen([sys.executable, "-m", "daskem", *map(str, args)], cwd=cwd,
                            start_new_session=True, **popen)


def fitted_parameters(estimator) -> dict:
    """A fitted estimator's parameters, objective and objective per iteration, named as
    the model record names them (an attribute renamed or missing fails here)."""
    from daskem.model import kind_of

    kind = kind_of(estimator)
    out = {f"{name}_": getattr(estimator, f"{name}_") for name in kind.arrays}
    out[f"{kind.objective_attr}_"] = getattr(estimator, f"{kind.objective_attr}_")
    out[kind.history_attr] = np.asarray(getattr(estimator, kind.history_attr))
    return out


def assert_same_parameters(a, b) -> None:
    """Bit for bit the same fitted parameters (see :func:`fitted_parameters`)."""
    pa, pb = fitted_parameters(a), fitted_parameters(b)
    assert list(pa) == list(pb)
    for name, value in pa.items():
        np.testing.assert_array_equal(value, pb[name], err_msg=name)


# The embedded cluster of the CLI tests: two worker processes, no dashboard.
CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}


def write_config(tmp_path, name, **sections):
    """A job config ``<tmp_path>/<name>.yaml`` with the test cluster and ``sections``."""
    import yaml

    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"cluster": CLUSTER, **sections}))
    return path
