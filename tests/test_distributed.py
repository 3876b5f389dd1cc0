"""Fits on a real distributed.LocalCluster with worker processes."""

from __future__ import annotations

import warnings

import dask
import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs
from distributed import Client, LocalCluster, get_task_stream

from daskem import ConvergenceWarning, GaussianMixture, KMeans
from daskem.engine.reduce import iteration_label
from daskem.kernels import estep

pytestmark = pytest.mark.distributed


def cluster_client(n_workers):
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                           dashboard_address=None, host="127.0.0.1")
    return cluster, Client(cluster)


@pytest.fixture(scope="module")
def data():
    X = make_blobs(6000, 4, 4, seed=21, spread=1.5)
    return X, da.from_array(X, chunks=(450, -1))  # 14 chunks, the last one short


def fit_all(X):
    """Every estimator flavour, a few iterations from fixed starts; returns a dict of arrays."""
    out = {}
    init = X[:4].compute() if isinstance(X, da.Array) else X[:4]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for ctype in ("full", "diag"):
            gm = GaussianMixture(4, covariance_type=ctype, max_iter=8, tol=0,
                                 random_state=0).fit(X)
            out[f"gmm-{ctype}-means"] = gm.means_
            out[f"gmm-{ctype}-cov"] = gm.covariances_
            out[f"gmm-{ctype}-lb"] = np.array(gm.lower_bounds_)
        km = KMeans(4, init=init, max_iter=20).fit(X)
        out["km-centers"] = km.cluster_centers_
        out["km-inertia"] = np.array(km.inertia_)
        km2 = KMeans(4, init="k-means||", random_state=3).fit(X)
        out["km||-centers"] = km2.cluster_centers_
        # Incremental EM: an M-step after each of 3 blocks of chunks (14 chunks here).
        gi = GaussianMixture(4, max_iter=6, tol=0, random_state=0, update="incremental",
                             n_blocks=3).fit(X)
        out["gmm-incremental-means"] = gi.means_
        out["gmm-incremental-lb"] = np.array(gi.lower_bounds_)
        ki = KMeans(4, init=init, max_iter=10, update="incremental", n_blocks=3).fit(X)
        out["km-incremental-centers"] = ki.cluster_centers_
    return out


@pytest.fixture(scope="module")
def results(data):
    """Every flavour fitted in-process and on 1 and 2 workers, with the compiled kernels
    for every chunk (by default chunks this small get the NumPy twins): the worker
    processes inherit DASKEM_KERNELS."""
    _, X = data
    runs = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DASKEM_KERNELS", "compiled")
        mp.setattr(estep, "KERNELS", "compiled")
        with dask.config.set(scheduler="synchronous"):
            runs["sync"] = fit_all(X)
        for n_workers in (1, 2):
            cluster, client = cluster_client(n_workers)
            try:
                runs[n_workers] = fit_all(X)
                runs[f"{n_workers}-labels"] = KMeans(4, init=X[:4].compute(),
                                                     max_iter=5).fit(X).labels_.compute()
                runs[f"{n_workers}-kernels"] = set(client.run(
                    lambda: __import__("daskem.kernels.estep").kernels.estep.KERNELS).values())
            finally:
                client.close()
                cluster.close()
    with dask.config.set(scheduler="synchronous"):
        runs["numpy-twins"] = fit_all(X)  # chunks this small: the NumPy twins
    return runs


def test_bit_identical_on_one_and_two_workers(results):
    assert results["1-kernels"] == results["2-kernels"] == {"compiled"}
    one, two = results[1], results[2]
    for key in one:
        np.testing.assert_array_equal(one[key], two[key], err_msg=key)
    np.testing.assert_array_equal(results["1-labels"], results["2-labels"])


def test_distributed_agrees_with_synchronous(results):
    for key, value in results["sync"].items():
        np.testing.assert_allclose(results[2][key], value, rtol=1e-10, atol=1e-12,
                                   err_msg=key)


def test_compiled_kernels_agree_with_the_numpy_twins(results):
    for key, value in results["numpy-twins"].items():
        np.testing.assert_allclose(results[2][key], value, rtol=1e-9, atol=1e-12,
                                   err_msg=key)


def test_chunking_changes_only_rounding(data):
    X, _ = data
    a = fit_all(da.from_array(X, chunks=(6000, -1)))
    b = fit_all(da.from_array(X, chunks=((1, 2999, 0, 3000), (4,))))
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=1e-9, atol=1e-12, err_msg=key)


def test_matches_sklearn_on_two_workers(data):
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    X, Xd = data
    cluster, client = cluster_client(2)
    try:
        for ctype in ("full", "tied", "diag", "spherical"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                start = SkGaussianMixture(4, covariance_type=ctype, max_iter=1,
                                          random_state=0).fit(X)
                init = dict(weights_init=start.weights_, means_init=start.means_,
                            precisions_init=start.precisions_)
                sk = SkGaussianMixture(4, covariance_type=ctype, max_iter=6, tol=0,
                                       **init).fit(X)
                ours = GaussianMixture(4, covariance_type=ctype, max_iter=6, tol=0,
                                       **init).fit(Xd)
            np.testing.assert_allclose(ours.means_, sk.means_, rtol=1e-6, atol=1e-9)
            np.testing.assert_allclose(ours.covariances_, sk.covariances_, rtol=1e-6,
                                       atol=1e-9)
            np.testing.assert_allclose(ours.score(Xd), sk.score(X), rtol=1e-8)
        sk = SkKMeans(4, init=X[:4], n_init=1, max_iter=50).fit(X)
        ours = KMeans(4, init=X[:4], max_iter=50).fit(Xd)
        np.testing.assert_allclose(ours.inertia_, sk.inertia_, rtol=1e-9)
        np.testing.assert_array_equal(ours.labels_.compute(), sk.labels_)
    finally:
        client.close()
        cluster.close()


def test_spans_group_a_fit_by_iteration_and_phase(data):
    """One span per fit, holding the summary, the initialisation and one per iteration,
    each with its own tasks (what the Fine Performance Metrics page splits time by)."""
    _, X = data
    cluster, client = cluster_client(2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            # (the whole-data initialisation: the default one makes no tasks at all)
            GaussianMixture(3, max_iter=4, tol=0, random_state=0,
                            init_params="k-means||").fit(X)

        def spans(dask_scheduler):
            ext = dask_scheduler.extensions["spans"]
            return {s.name: sorted(g.name.rsplit("-", 1)[0] for g in s.groups)
                    for s in ext.spans.values()}

        found = client.run_on_scheduler(spans)
    finally:
        client.close()
        cluster.close()
    fit = ("daskem GaussianMixture.fit",)
    assert fit in found
    for i in range(1, 5):
        groups = found[fit + (f"iteration {i}",)]
        assert any(g.startswith(f"daskem-estep-{iteration_label(i)}") for g in groups), groups
    assert (*fit, "summary") in found
    init = [name for name in found if name[:2] == (*fit, "initialisation")]
    assert (*fit, "initialisation", "init iteration 1") in init
    assert not any(name[:1] != fit and name != ("default",) for name in found), found


def test_one_in_memory_chunk_runs_in_process_with_the_workers_arithmetic(data):
    """NumPy input that makes one chunk is fitted in the client process (no task reaches a
    worker), and gives bit for bit what the same chunk gives on the cluster."""
    X, _ = data
    one_chunk = da.from_array(X, chunks=(len(X), -1))
    cluster, client = cluster_client(2)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            with get_task_stream(client) as stream:
                local = fit_all(X)
            assert not [t for t in stream.data if "daskem" in str(t["key"])]
            with get_task_stream(client) as stream:
                remote = fit_all(one_chunk.persist())
            assert [t for t in stream.data if "daskem-estep" in str(t["key"])]
    finally:
        client.close()
        cluster.close()
    for key in local:
        np.testing.assert_array_equal(local[key], remote[key], err_msg=key)
