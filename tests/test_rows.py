"""Row readers: tasks that read their own rows give the fits that dask arrays give."""

from __future__ import annotations

import pickle
import warnings

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import assert_same_parameters, feature_store_module, synthetic_store

from daskem import ConvergenceWarning, GaussianMixture, KMeans
from daskem.engine.data import as_chunked
from daskem.engine.reduce import map_reduce
from daskem.io.source import ZarrRows


@pytest.fixture(scope="module")
def zarr_rows(tmp_path_factory):
    path = synthetic_store(tmp_path_factory.mktemp("rows") / "rows.zarr", 5000, 4, 3,
                           chunk_rows=400, seed=3)
    return ZarrRows(str(path), "X")


def test_reader_reads_what_dask_reads(zarr_rows):
    X = zarr_rows.to_dask()
    np.testing.assert_array_equal(zarr_rows.read(390, 1210), X[390:1210].compute())
    copy = pickle.loads(pickle.dumps(zarr_rows))
    np.testing.assert_array_equal(copy.read(4990, 5000), X[4990:].compute())


def test_blocks_are_whole_storage_chunks(zarr_rows):
    data = as_chunked(zarr_rows, chunk_rows=1000)  # rounded down to 800 = 2 chunks
    assert [c.stop - c.start for c in data.chunks] == [800] * 6 + [200]
    assert as_chunked(zarr_rows).n_chunks == 1  # 160 kB: one block of about 64 MiB


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture(3, covariance_type="full", max_iter=8, tol=0, random_state=0,
                            chunk_rows=400),
    lambda: KMeans(3, init="k-means||", max_iter=8, tol=0, random_state=0, chunk_rows=400),
], ids=["gmm", "kmeans"])
def test_reader_fit_equals_dask_fit(zarr_rows, make, sync_scheduler):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = make().fit(zarr_rows)
        b = make().fit(zarr_rows.to_dask())
    assert_same_parameters(a, b)
    assert isinstance(a.predict(zarr_rows), da.Array)


def test_reader_pass_has_one_task_per_block(zarr_rows):
    data = as_chunked(zarr_rows, chunk_rows=800)
    root = map_reduce(
        data.chunks, None, data.offsets, lambda x, w, o, p: x.shape[0], None,
        phase="test", compute=False)
    graph = dict(root.dask)
    n_map = sum(1 for k in graph if isinstance(k, tuple) and "daskem-test" in k[0])
    assert n_map == data.n_chunks == 7
    assert len(graph) < 2 * n_map  # the map tasks and the reduction, nothing upstream
    with dask.config.set(scheduler="synchronous"):
        assert dask.compute(root)[0] == 5000


def test_synthetic_rows_match_the_virtual_store():
    mfs = feature_store_module()
    reader = mfs.SyntheticRows(1000, 3, 2, chunk_rows=64, seed=4)
    np.testing.assert_array_equal(reader.read(60, 300), reader.to_dask()[60:300].compute())


class CountingRows:
    """A row reader that counts what it reads (the synchronous scheduler runs in-process)."""

    def __init__(self, X, chunk_rows):
        self.X, self.chunk_rows = X, chunk_rows
        self.shape, self.dtype = X.shape, X.dtype
        self.reads: list[tuple[int, int]] = []

    def read(self, start, stop):
        self.reads.append((start, stop))
        return self.X[start:stop]

    def to_dask(self):
        return da.from_array(self.X, chunks=(self.chunk_rows, -1))


def test_every_iteration_reads_the_store_once(sync_scheduler):
    X = np.random.default_rng(0).normal(size=(3000, 3))
    rows = CountingRows(X, 250)
    KMeans(3, init=X[:3], max_iter=7, tol=0, chunk_rows=500).fit(rows)
    blocks = [(a, min(a + 500, 3000)) for a in range(0, 3000, 500)]
    passes = 1 + 7 + 1  # the summary, seven iterations, the final inertia
    assert sorted(rows.reads) == sorted(blocks * passes)


class GraphSizes:
    def __init__(self):
        self.sizes = []

    def __call__(self, dsk, keys, **kwargs):
        graph = dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk
        self.sizes.append(len(dict(graph)))
        return dask.get(dsk, keys, **kwargs)


def test_no_graph_growth_over_many_iterations():
    X = da.from_array(np.random.default_rng(1).normal(size=(2000, 2)), chunks=(100, 2))
    sizes = GraphSizes()
    with dask.config.set(scheduler=sizes), pytest.warns(ConvergenceWarning):
        GaussianMixture(4, covariance_type="diag", max_iter=150, tol=0, random_state=0,
                        init_params="random_from_data").fit(X)
    per_iteration = sizes.sizes[1:]  # after the summary pass (the init is on its sample)
    assert len(per_iteration) == 150
    assert len(set(per_iteration)) == 1, set(per_iteration)


def test_errors_name_the_storage_chunk(tmp_path):
    from daskem import DataError

    X = np.random.default_rng(2).normal(size=(1000, 2))
    X[612, 1] = np.nan
    group = zarr.open_group(str(tmp_path / "nan.zarr"), mode="w")
    group.create_array("X", data=X, chunks=(100, 2))
    with pytest.raises(DataError, match=r"row 612 \(chunk 6\)"):
        KMeans(2).fit(ZarrRows(str(tmp_path / "nan.zarr"), "X"))


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture(3, covariance_type="full", n_init=2, max_iter=6, tol=0,
                            random_state=0, chunk_rows=500),
    lambda: KMeans(3, init="k-means||", n_init=2, max_iter=6, tol=0, random_state=0,
                   chunk_rows=500),
    lambda: KMeans(3, init="k-means++", n_init=1, max_iter=4, tol=0, random_state=0,
                   chunk_rows=500),
    lambda: GaussianMixture(3, max_iter=5, tol=0, random_state=0, chunk_rows=250,
                            update="incremental", n_blocks=3),
    lambda: KMeans(3, init="k-means++", max_iter=4, tol=0, random_state=0,
                   chunk_rows=250, update="incremental", n_blocks=3),
], ids=["gmm-kmeans-init", "kmeans-parallel", "kmeans-plusplus", "gmm-incremental",
        "kmeans-incremental"])
def test_passes_by_phase_equal_the_reads_at_the_source(sync_scheduler, make):
    """n_passes_ and passes_ are what the source saw: every block read once per pass."""
    X = np.random.default_rng(3).normal(size=(3000, 3)) + np.repeat(np.eye(3) * 6, 1000, 0)
    rows = CountingRows(X, 250)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make().fit(rows)
    step = est.chunk_rows
    blocks = [(a, min(a + step, 3000)) for a in range(0, 3000, step)]
    assert len(rows.reads) % len(blocks) == 0
    assert sorted(rows.reads) == sorted(blocks * (len(rows.reads) // len(blocks)))
    assert est.n_passes_ == len(rows.reads) // len(blocks) == sum(est.passes_.values())
    assert est.passes_["summary"] == 1
    assert est.passes_["em"] == (est.max_iter if isinstance(est, GaussianMixture) else est.n_iter_)


def test_io_does_not_depend_on_the_job_schema(zarr_rows):
    """``daskem.io`` opens sources from any object with the data settings' names; importing
    it loads neither the job config nor pydantic."""
    import subprocess
    import sys
    from types import SimpleNamespace

    code = ("import sys, daskem.io\n"
            "print(sorted(m for m in ('daskem.config', 'pydantic') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

    from daskem.io.source import open_source

    settings = SimpleNamespace(path=zarr_rows.path, format="auto", variable="X", features=None,
                               feature_dim=None, sample_dims=None, missing="error",
                               chunk_rows=None, standardize=False, missing_chunks="error",
                               storage_options={})
    source = open_source(settings)
    np.testing.assert_array_equal(source.full.compute(), zarr_rows.read(0, zarr_rows.shape[0]))
