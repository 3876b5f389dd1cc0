"""xarray feature stores read as rows: each block of rows is one task that reads every
feature variable, and the rows equal xarray's own stacking of the same dataset."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import xarray as xr

from daskem.io.source import open_source


def settings(path, **kw):
    base = dict(path=str(path), format="xarray", variable=None, features=None,
                feature_dim=None, sample_dims=None, missing="error", chunk_rows=None,
                standardize=False, missing_chunks="error", storage_options={})
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """Variables in different dimension orders and chunkings, one scaled integer (CF
    decoded), one without the time dimension (repeated along it), and a cube holding
    features along its own dimension."""
    rng = np.random.default_rng(4)
    t, la, lo = 10, 6, 7
    coords = {"time": np.arange(t), "lat": np.linspace(-5, 5, la), "lon": np.arange(lo) * 2.0}
    ds = xr.Dataset(coords=coords)
    ds["a"] = (("time", "lat", "lon"), rng.normal(size=(t, la, lo)))
    ds["b"] = (("lat", "time", "lon"), rng.normal(size=(la, t, lo)).astype(np.float32))
    ds["c"] = (("time", "lat", "lon"), rng.normal(size=(t, la, lo)).round(2))
    ds["static"] = (("lat", "lon"), rng.normal(size=(la, lo)))
    ds["cube"] = (("band", "time", "lat", "lon"), rng.normal(size=(3, t, la, lo)))
    ds = ds.assign_coords(band=np.array(["red", "green", "nir"], dtype=object))
    ds["c"].encoding.update({"dtype": "int16", "scale_factor": 0.01, "_FillValue": -9999})
    ds["a"].encoding["chunks"] = (4, la, lo)
    ds["b"].encoding["chunks"] = (la, 3, lo)
    ds["c"].encoding["chunks"] = (4, 3, 4)
    ds["static"].encoding["chunks"] = (3, lo)
    ds["cube"].encoding["chunks"] = (3, 5, la, lo)
    path = tmp_path_factory.mktemp("xr") / "mixed.zarr"
    ds.to_zarr(path, mode="w", consolidated=False)
    return path


def reference(path, features, sample_dims):
    ds = xr.open_zarr(path, consolidated=False).load()
    arr = ds[features].to_dataarray("feature").transpose(*sample_dims, "feature")
    return arr.values.reshape(-1, len(features))


@pytest.mark.parametrize("sample_dims", [["time", "lat", "lon"], ["lat", "lon", "time"]])
def test_rows_equal_xarrays_stacking(mixed, sample_dims):
    features = ["a", "b", "c", "static"]
    source = open_source(settings(mixed, features=features, sample_dims=sample_dims))
    got = source.full.compute()
    np.testing.assert_array_equal(got, reference(mixed, features, sample_dims))
    assert got.dtype == np.float64 and source.features == features
    assert source.layout.sample_dims == sample_dims


def test_one_task_per_block_cut_where_any_variable_s_chunk_ends(mixed):
    from daskem.io.source import _xarray_source

    X = _xarray_source(settings(mixed, features=["a", "b", "c", "static"])).X
    # time chunks: a every 4, b every 3, c every 4: blocks 0-3, 3-4, 4-6, 6-8, 8-9, 9-10.
    cells = 6 * 7
    assert X.chunks == (tuple(n * cells for n in (3, 1, 2, 2, 1, 1)), (4,))
    graph = dict(X.__dask_graph__())
    assert len(graph) == X.numblocks[0] + 1  # one task per block, and the reader once


def test_a_variable_holding_the_features_along_a_dimension(mixed):
    source = open_source(settings(mixed, variable="cube", feature_dim="band"))
    ds = xr.open_zarr(mixed, consolidated=False).load()
    expected = ds["cube"].transpose("time", "lat", "lon", "band").values.reshape(-1, 3)
    np.testing.assert_array_equal(source.full.compute(), expected)
    assert source.features == ["red", "green", "nir"]
    assert source.full.chunks[0] == (5 * 42, 5 * 42)  # the cube's time chunks


def test_the_source_is_a_row_reader_that_fits_as_its_dask_array_does(mixed):
    from daskem import GaussianMixture

    mean, scale = np.arange(4.0), np.arange(1.0, 5.0)
    source = open_source(settings(mixed, features=["a", "b", "c", "static"]),
                         standardize=(mean, scale))
    reader = source.rows
    assert reader is not None and reader.chunk_rows == 3 * 42  # the first block
    expected = source.full.compute()  # standardised
    np.testing.assert_allclose(reader.read(0, reader.shape[0]), expected, rtol=1e-15)
    np.testing.assert_allclose(reader.read(130, 300), expected[130:300], rtol=1e-15)
    np.testing.assert_allclose(reader.to_dask().compute(), expected, rtol=1e-15)
    a = GaussianMixture(2, covariance_type="diag", random_state=0, chunk_rows=126).fit(reader)
    b = GaussianMixture(2, covariance_type="diag", random_state=0,
                        chunk_rows=126).fit(reader.to_dask())
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
    assert a.n_iter_ == b.n_iter_
    # Data kept in cluster memory are a dask array: no row reader then.
    assert open_source(settings(mixed, features=["a"]), persist=True).rows is None


@pytest.mark.parametrize("fmt", ["xarray", "zarr"])
def test_dropping_rows_keeps_a_row_reader(tmp_path, fmt):
    """``missing: drop``: the complete rows, read by the fit's tasks from whole source
    blocks, equal the dask array's boolean selection."""
    import zarr

    from daskem import GaussianMixture

    rng = np.random.default_rng(7)
    x = rng.normal(size=(10, 6, 7, 3))
    x[rng.random(size=(10, 6, 7)) < 0.3] = np.nan  # whole rows missing
    x[2, 1, 1, 0] = np.nan  # one value missing
    x[5:7] = np.nan  # two whole blocks of time with no complete row
    rows = x.reshape(-1, 3)
    if fmt == "xarray":
        path = tmp_path / "grid.zarr"
        ds = xr.Dataset({f"v{j}": (("time", "lat", "lon"), x[..., j]) for j in range(3)})
        for j in range(3):
            ds[f"v{j}"].encoding["chunks"] = (1, 6, 7)
        ds.to_zarr(path, mode="w", consolidated=False)
        # (all-NaN chunks are not stored: read as the fill value)
        cfg = settings(path, features=["v0", "v1", "v2"], missing="drop", missing_chunks="fill")
    else:
        path = tmp_path / "rows.zarr"
        zarr.create_array(str(path), data=rows, chunks=(42, 3))
        cfg = settings(path, format="zarr", missing="drop")
    source = open_source(cfg)
    complete = rows[np.isfinite(rows).all(axis=1)]
    reader = source.rows
    assert type(reader).__name__ == "DroppedRows" and reader.shape == complete.shape
    assert source.n_dropped == len(rows) - len(complete)
    np.testing.assert_array_equal(source.X.compute(), complete)
    for a, b in [(0, len(complete)), (5, 40), (31, 33), (len(complete) - 1, len(complete))]:
        np.testing.assert_array_equal(reader.read(a, b), complete[a:b], err_msg=(a, b))
    for task_rows in (42, 100, 10_000):
        blocks = reader.blocks(task_rows)
        assert blocks[0][0] == 0 and blocks[-1][1] == len(complete)
        assert all(b0[1] == b1[0] for b0, b1 in zip(blocks[:-1], blocks[1:], strict=True))
    a = GaussianMixture(2, covariance_type="diag", random_state=0, chunk_rows=42).fit(reader)
    b = GaussianMixture(2, covariance_type="diag", random_state=0).fit(complete)
    np.testing.assert_allclose(a.means_, b.means_, rtol=1e-10)
