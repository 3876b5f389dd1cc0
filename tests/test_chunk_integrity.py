"""Every chunk of a Zarr input exists and reads, or the error names it (and its rows).

Zarr reads a chunk that is not stored as the fill value: without these checks a store that
lost a chunk is fitted as if the chunk held zeros. A garbled chunk fails in a codec with a
message that names neither the chunk nor its rows.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import time
import warnings

import dask
import numpy as np
import pytest
import zarr
from conftest import synthetic_store
from distributed import Client, LocalCluster

from daskem import ConvergenceWarning, KMeans
from daskem.config import DataConfig
from daskem.errors import DataError
from daskem.io.checked import (
    ChunkError,
    ChunkGrid,
    MissingChunkError,
    StrictStore,
    _bounds,
    list_chunks,
    open_store,
)
from daskem.io.source import ZarrRows, open_source

N_ROWS, N_FEATURES, CHUNK_ROWS = 20_000, 4, 5_000


def make_store(path, seed=7):
    return synthetic_store(path, N_ROWS, N_FEATURES, 3, chunk_rows=CHUNK_ROWS, seed=seed)


@pytest.fixture
def store(tmp_path):
    return make_store(tmp_path / "features.zarr")


def chunk_file(store, i, name="X"):
    return os.path.join(store, name, "c", str(i), "0")


def garble(path):
    """Overwrite bytes in the middle of a stored chunk."""
    data = bytearray(open(path, "rb").read())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(range(64))
    open(path, "wb").write(bytes(data))


def truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])


def zarr_message(store, region, name="X"):
    """What zarr itself says when reading ``region`` of the damaged array."""
    with pytest.raises(Exception) as info:  # noqa: B017 - any codec error
        zarr.open_array(str(store), path=name, mode="r")[region]
    return str(info.value)


def rows_named(message, i):
    first = i * CHUNK_ROWS
    return (f"chunk ({i}, 0) of array X in" in message
            and f"rows {first:,}-{first + CHUNK_ROWS - 1:,}" in message
            and f"key X/c/{i}/0" in message)


@pytest.fixture(scope="module")
def client():
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=None)
    with cluster, Client(cluster) as c:
        yield c


# ------------------------------------------------------------------ at open time


def test_missing_chunk_is_found_when_the_source_is_opened(store):
    os.remove(chunk_file(store, 3))
    with pytest.raises(DataError) as info:
        open_source(DataConfig(path=str(store)))
    message = str(info.value)
    assert isinstance(info.value, MissingChunkError)
    assert message.startswith("data.path: chunk (3, 0) of array X in ")
    assert rows_named(message, 3) and "rows 15,000-19,999" in message
    assert "is missing" in message and "data.missing_chunks: fill" in info.value.remedy
    assert info.value.key == "X/c/3/0"


def test_several_missing_chunks_name_the_first_and_the_count(store):
    os.remove(chunk_file(store, 1))
    os.remove(chunk_file(store, 3))
    with pytest.raises(MissingChunkError, match=r"chunk \(1, 0\) .* is missing \(2 of its 4 "
                       r"chunks are missing\)"):
        open_source(DataConfig(path=str(store)))


def test_fill_policy_reads_the_fill_value(store):
    expected = zarr.open_array(str(store), path="X", mode="r")[:]
    os.remove(chunk_file(store, 2))
    source = open_source(DataConfig(path=str(store), missing_chunks="fill"))
    with dask.config.set(scheduler="synchronous"):
        full = source.full.compute()
    fill = slice(2 * CHUNK_ROWS, 3 * CHUNK_ROWS)
    assert np.all(full[fill] == 0.0)
    np.testing.assert_array_equal(np.delete(full, fill, axis=0),
                                  np.delete(expected, fill, axis=0))
    np.testing.assert_array_equal(source.rows.read(0, N_ROWS), full)
    assert source.rows.missing_chunks == "fill"


def test_a_sound_store_reads_as_zarr_reads_it(store):
    expected = zarr.open_array(str(store), path="X", mode="r")[:]
    source = open_source(DataConfig(path=str(store)))
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(source.full.compute(), expected)
    np.testing.assert_array_equal(source.rows.read(123, 17_000), expected[123:17_000])
    # one task per storage chunk, the array once in the graph
    assert source.full.numblocks == (4, 1)
    assert len(dict(source.full.__dask_graph__())) == 5


def test_url_store_is_listed_and_read_through_fsspec(store):
    url = "file://" + os.path.abspath(store)
    source = open_source(DataConfig(path=url))
    assert source.fingerprint["chunks"] == open_source(
        DataConfig(path=str(store))).fingerprint["chunks"]
    os.remove(chunk_file(store, 0))
    with pytest.raises(MissingChunkError) as info:
        open_source(DataConfig(path=url))
    assert rows_named(str(info.value), 0)
    with pytest.raises(MissingChunkError) as info:
        source.rows.read(0, 100)
    assert rows_named(str(info.value), 0)


def test_sharded_array_names_the_missing_shard(tmp_path):
    path = str(tmp_path / "sharded.zarr")
    root = zarr.open_group(path, mode="w")
    arr = root.create_array("X", shape=(1000, 3), chunks=(50, 3), shards=(200, 3),
                            dtype="f8")
    arr[:] = np.random.default_rng(0).normal(size=(1000, 3))
    os.remove(os.path.join(path, "X", "c", "2", "0"))
    with pytest.raises(MissingChunkError, match=r"shard \(2, 0\) of array X .*rows 400-599, "
                       r"key X/c/2/0\) is missing"):
        open_source(DataConfig(path=path))


def test_local_path_refuses_storage_options(store):
    from daskem.config import ConfigError

    with pytest.raises(ConfigError, match="data.storage_options"):
        open_source(DataConfig(path=str(store), storage_options={"anon": True}))


# ------------------------------------------------------------------ at read time


def test_strict_store_survives_pickling(store):
    strict = open_store(str(store))
    assert isinstance(strict, StrictStore)
    arr = zarr.open_array(strict, path="X", mode="r")
    copy = pickle.loads(pickle.dumps(arr))
    os.remove(chunk_file(store, 1))
    with pytest.raises(MissingChunkError, match="X/c/1/0"):
        copy[CHUNK_ROWS:CHUNK_ROWS + 10]
    assert copy[:10].shape == (10, 4)  # the chunks that are there still read


def test_errors_survive_pickling():
    error = MissingChunkError("data.path: chunk (1, 0) ...", key="X/c/1/0")
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is MissingChunkError and copy.key == "X/c/1/0"
    assert str(copy) == str(error) and isinstance(copy, DataError)


@pytest.mark.distributed
def test_chunk_deleted_after_open_fails_on_the_cluster(store, client):
    source = open_source(DataConfig(path=str(store)))
    os.remove(chunk_file(store, 2))
    with pytest.raises(DataError) as info:
        source.full.sum().compute()
    assert isinstance(info.value, MissingChunkError) and rows_named(str(info.value), 2)
    with pytest.raises(DataError) as info:
        source.rows.read(0, N_ROWS)
    assert rows_named(str(info.value), 2)
    rows = pickle.loads(pickle.dumps(source.rows))
    with pytest.raises(DataError) as info:
        rows.read(CHUNK_ROWS * 2 + 5, CHUNK_ROWS * 2 + 10)
    assert rows_named(str(info.value), 2)
    for X in (source.rows, source.full):
        with pytest.raises(DataError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            KMeans(3, max_iter=3).fit(X)
        assert isinstance(info.value, MissingChunkError), X
        assert rows_named(str(info.value), 2) and "is missing" in str(info.value)


@pytest.mark.distributed
@pytest.mark.parametrize("damage", [garble, truncate], ids=["garbled", "truncated"])
def test_damaged_chunk_is_named_with_the_codec_message(store, client, damage):
    source = open_source(DataConfig(path=str(store)))
    damage(chunk_file(store, 1))
    original = zarr_message(store, slice(CHUNK_ROWS, 2 * CHUNK_ROWS))
    for compute in (lambda: source.full.sum().compute(),
                    lambda: source.rows.read(0, N_ROWS),
                    lambda: KMeans(3, max_iter=3).fit(source.rows)):
        with pytest.raises(DataError) as info, warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            compute()
        message = str(info.value)
        assert isinstance(info.value, ChunkError)
        assert rows_named(message, 1) and "rows 5,000-9,999" in message
        assert message.endswith(f"cannot be read: {original}"), message


def test_damaged_chunk_found_when_opened_is_still_named_on_read(store):
    truncate(chunk_file(store, 3))
    source = open_source(DataConfig(path=str(store)))  # present: the listing is content-blind
    with pytest.raises(ChunkError) as info, dask.config.set(scheduler="synchronous"):
        source.full[-10:].compute()  # a read of part of the chunk names the whole chunk
    assert rows_named(str(info.value), 3) and "cannot be read" in str(info.value)


def test_reader_without_open_source_is_strict(store):
    rows = ZarrRows(str(store), "X")
    os.remove(chunk_file(store, 0))
    with pytest.raises(MissingChunkError) as info:
        rows.read(10, 20)
    assert rows_named(str(info.value), 0)
    with pytest.raises(MissingChunkError), dask.config.set(scheduler="synchronous"):
        rows.to_dask()[:5].compute()


def test_a_failure_that_does_not_recur_is_raised_as_it_came(store):
    arr = zarr.open_array(str(store), path="X", mode="r")
    grid = ChunkGrid.of(arr, str(store))

    class Flaky:
        shape, dtype, calls = arr.shape, arr.dtype, 0

        def __getitem__(self, key):
            Flaky.calls += 1
            if Flaky.calls == 1:
                raise OSError("connection reset")
            return arr[key]

    from daskem.io.checked import read_checked

    with pytest.raises(OSError, match="connection reset"):
        read_checked(Flaky(), grid, slice(0, 10))


def test_bounds_of_index_keys():
    shape = (100, 4)
    assert _bounds((slice(10, 20), slice(None)), shape) == [(10, 20), (0, 4)]
    assert _bounds(slice(95, None), shape) == [(95, 100), (0, 4)]
    assert _bounds((7, Ellipsis), shape) == [(7, 8), (0, 4)]
    assert _bounds((np.array([3, 50]), slice(1, 2)), shape) == [(3, 51), (1, 2)]
    assert _bounds((slice(None, None, -1),), shape) == [(0, 100), (0, 4)]


# ------------------------------------------------------------------ xarray datasets


def write_dataset(path):
    import xarray as xr

    rng = np.random.default_rng(11)
    shape = (12, 6, 5)  # time, y, x
    ds = xr.Dataset(
        {name: (("time", "y", "x"), rng.normal(loc=j, size=shape))
         for j, name in enumerate(["a", "b", "c"])},
        coords={"time": np.arange(12), "y": np.linspace(0, 1, 6), "x": np.arange(5.0)})
    ds["c"].encoding.update({"dtype": "int16", "scale_factor": 0.01, "_FillValue": -9999})
    ds.chunk({"time": 4}).to_zarr(path, mode="w", consolidated=False)
    return xr.open_zarr(path, consolidated=False).load()


def xarray_config(path, **kw):
    return DataConfig(path=str(path), features=["a", "b", "c"], **kw)


def test_xarray_reads_as_xarray_does(tmp_path):
    path = tmp_path / "grid.zarr"
    ds = write_dataset(str(path))
    source = open_source(xarray_config(path))
    expected = np.stack([ds[v].values for v in ("a", "b", "c")], axis=-1).reshape(-1, 3)
    with dask.config.set(scheduler="synchronous"):
        np.testing.assert_array_equal(source.full.compute(), expected)  # CF decoding kept
    assert source.layout.sample_dims == ["time", "y", "x"]
    assert re.fullmatch(r"[0-9a-f]{64}", source.fingerprint["chunks"])


def test_xarray_missing_chunk_names_the_variable(tmp_path):
    path = tmp_path / "grid.zarr"
    write_dataset(str(path))
    source = open_source(xarray_config(path))
    os.remove(os.path.join(path, "b", "c", "1", "0", "0"))
    message = ("data.path: chunk (1, 0, 0) of variable b in " + str(path)
               + " (time 4-7, y 0-5, x 0-4, key b/c/1/0/0) is missing")
    with pytest.raises(MissingChunkError) as info:
        open_source(xarray_config(path))
    assert str(info.value).startswith(message)
    with pytest.raises(MissingChunkError) as info, dask.config.set(scheduler="synchronous"):
        source.full.compute()  # deleted after the source was opened
    assert str(info.value).startswith(message)
    filled = open_source(xarray_config(path, missing_chunks="fill"))
    with dask.config.set(scheduler="synchronous"):
        assert filled.full.compute().shape == (360, 3)


@pytest.mark.distributed
def test_xarray_damaged_chunk_names_the_variable_on_the_cluster(tmp_path, client):
    path = tmp_path / "grid.zarr"
    write_dataset(str(path))
    source = open_source(xarray_config(path))
    garble(os.path.join(path, "c", "c", "2", "0", "0"))
    original = zarr_message(path, slice(8, 12), name="c")
    with pytest.raises(ChunkError) as info:
        source.full.sum().compute()
    assert str(info.value) == (f"data.path: chunk (2, 0, 0) of variable c in {path} (time 8-11,"
                               f" y 0-5, x 0-4, key c/c/2/0/0) cannot be read: {original}")


# ------------------------------------------------------------------ the fingerprint


def test_fingerprint_digest_follows_the_stored_chunks(tmp_path):
    path = tmp_path / "features.zarr"
    make_store(path)
    first = open_source(DataConfig(path=str(path))).fingerprint
    assert {"path", "format", "shape", "dtype", "chunk_rows", "features", "chunks"} <= set(first)
    copy = tmp_path / "copy.zarr"
    shutil.copytree(path, copy)  # the same content, times kept (cp -p, rsync -a)
    copied = open_source(DataConfig(path=str(copy))).fingerprint
    assert copied["chunks"] == first["chunks"]
    time.sleep(0.01)
    arr = zarr.open_array(str(path), path="X", mode="r+")
    arr[CHUNK_ROWS:2 * CHUNK_ROWS] = arr[CHUNK_ROWS:2 * CHUNK_ROWS]  # rewritten, same values
    # The listing cannot tell an identical rewrite from a change: a rewritten chunk counts
    # as changed (the safe side: a resume is refused, not continued on other data).
    assert open_source(DataConfig(path=str(path))).fingerprint["chunks"] != first["chunks"]
    first = open_source(DataConfig(path=str(path))).fingerprint
    arr = zarr.open_array(str(path), path="X", mode="r+")
    arr[:CHUNK_ROWS] = arr[:CHUNK_ROWS] * 2 + 1  # one chunk rewritten with other values
    changed = open_source(DataConfig(path=str(path))).fingerprint
    assert changed["chunks"] != first["chunks"]
    assert {k: v for k, v in changed.items() if k != "chunks"} == {
        k: v for k, v in first.items() if k != "chunks"}


def test_a_store_that_cannot_be_listed_is_still_read_strictly(store, monkeypatch):
    import daskem.io.source as source_module

    def refuse(*args):
        raise NotImplementedError("HTTP servers do not list the keys of a store")

    monkeypatch.setattr(source_module, "list_chunks", refuse)
    os.remove(chunk_file(store, 1))
    source = open_source(DataConfig(path=str(store)))  # not found at open time ...
    assert source.fingerprint["chunks"] is None
    assert any("could not list the chunks of array X" in note for note in source.notes)
    with pytest.raises(MissingChunkError) as info, dask.config.set(scheduler="synchronous"):
        source.full.compute()  # ... but when read
    assert rows_named(str(info.value), 1)


def test_listing_skips_metadata_and_gives_sizes(store):
    found = list_chunks(str(store), None, "X")
    assert sorted(found) == [f"X/c/{i}/0" for i in range(4)]
    assert all(size == os.path.getsize(chunk_file(store, i))
               for i, (size, _) in enumerate(found[k] for k in sorted(found)))
    assert list_chunks("file://" + os.path.abspath(store), None, "X") == found
