"""Reading Zarr chunks that must exist: a missing or unreadable chunk is a named DataError.

Zarr reads a chunk that is not stored as the array's fill value, so a store that lost a
chunk reads as if that chunk held zeros (or NaN), and a garbled chunk fails with a codec's
message (``Zstd decompression error: invalid input data``) that names neither the chunk
nor its rows. This module gives the io layer:

* :class:`StrictStore`, a :class:`zarr.storage.WrapperStore` whose reads raise
  :class:`MissingChunkError` when a chunk key is not stored (metadata documents may be
  absent: zarr probes for them). Arrays opened on it never read a missing chunk as the fill
  value, in this process or on a worker the array was pickled to.
* :class:`CheckedArray`, an array-like for ``dask.array.from_array``, and
  :func:`read_checked`, for row readers: a read that fails is read again chunk by chunk
  (only then, so a good read costs nothing extra) to find the first chunk that fails, and
  the failure becomes a :class:`ChunkError` naming the store, the array or variable, the
  chunk's grid index, its key and its rows (or index ranges), keeping the original message.
* :func:`list_chunks`, one listing of the keys stored under an array (with their sizes),
  compared with the array's chunk grid when a source is opened, and hashed into the data
  fingerprint (:func:`chunks_digest`).

The unit is the stored object: the chunk, or the shard of a sharded array.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from zarr.storage import WrapperStore

from daskem.errors import DataError

# Documents zarr looks for and may legitimately not find; every other key is a chunk.
METADATA_NAMES = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})

FILL_REMEDY = ("restore it and rerun; or set data.missing_chunks: fill if chunks equal to the "
               "fill value were left unwritten on purpose")


class ChunkError(DataError):
    """A stored chunk of the input is missing or cannot be read."""

    remedy = "replace the damaged chunk from a good copy of the store and rerun"

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key

    def __reduce__(self):  # keep ``key`` when a worker sends the error to the client
        return (type(self), (str(self), self.key))


class MissingChunkError(ChunkError):
    """A chunk of the array's grid is not in the store."""

    remedy = FILL_REMEDY


def is_metadata_key(key: str) -> bool:
    return key.rsplit("/", 1)[-1] in METADATA_NAMES


def is_url(path: str) -> bool:
    """Whether zarr opens ``path`` through fsspec (the test zarr itself uses)."""
    return "://" in path or ("::" in path and "local://" not in path)


class StrictStore(WrapperStore):
    """A read-only store on which a chunk that is not stored is an error, not fill value."""

    def _with_store(self, store):
        return type(self)(store)

    def _missing(self, key: str) -> MissingChunkError:
        return MissingChunkError(f"chunk key {key} is missing from {self._store}", key=key)

    async def get(self, key, prototype, byte_range=None):
        value = await self._store.get(key, prototype, byte_range)
        if value is None and not is_metadata_key(key):
            raise self._missing(key)
        return value

    async def get_partial_values(self, prototype, key_ranges):
        key_ranges = list(key_ranges)
        values = await self._store.get_partial_values(prototype, key_ranges)
        for (key, _), value in zip(key_ranges, values, strict=True):
            if value is None and not is_metadata_key(key):
                raise self._missing(key)
        return values

    async def _get_many(self, requests):
        async for key, value in self._store._get_many(requests):
            if value is None and not is_metadata_key(key):
                raise self._missing(key)
            yield key, value

    def __repr__(self) -> str:
        return f"StrictStore({self._store!r})"


def open_store(path: str, storage_options: dict | None = None, *, strict: bool = True):
    """A read-only zarr store at ``path`` built as ``zarr.open`` builds it; strict: wrapped
    in :class:`StrictStore`."""
    from zarr.storage import FsspecStore, LocalStore

    if is_url(path):
        store = FsspecStore.from_url(path, storage_options=storage_options or None,
                                     read_only=True)
    else:
        if storage_options:
            raise TypeError("storage_options apply to fsspec URLs (s3://, gs://, ...); "
                            f"{path} is a local path")
        store = LocalStore(path, read_only=True)
    return StrictStore(store) if strict else store


# ------------------------------------------------------------------ the chunk grid


@dataclass(frozen=True)
class ChunkGrid:
    """The storage grid of one array, to name a chunk: its index, key and rows."""

    store: str  # the store as configured (data.path)
    array: str  # the array's path inside the store ("" at the root)
    label: str  # "array X", "variable sst"
    shape: tuple[int, ...]
    chunks: tuple[int, ...]  # the stored object: a chunk, or a shard of a sharded array
    metadata: Any  # zarr array metadata (encodes chunk keys)
    dims: tuple[str, ...] | None = None  # named dimensions (xarray); None: rows, columns
    sharded: bool = False

    @classmethod
    def of(cls, arr, store: str, label: str | None = None,
           dims: Sequence[str] | None = None) -> ChunkGrid:
        """The grid of a zarr array ``arr`` opened from ``store``."""
        path = arr.path or ""
        shards = getattr(arr, "shards", None)
        return cls(store=store, array=path,
                   label=label or (f"array {path}" if path else "the array"),
                   shape=tuple(int(s) for s in arr.shape),
                   chunks=tuple(int(c) for c in (shards or arr.chunks)),
                   metadata=arr.metadata, dims=tuple(map(str, dims)) if dims else None,
                   sharded=bool(shards))

    @property
    def grid_shape(self) -> tuple[int, ...]:
        return tuple(-(-n // c) for n, c in zip(self.shape, self.chunks, strict=True))

    @property
    def n_chunks(self) -> int:
        return int(np.prod(self.grid_shape, dtype=np.int64))

    def all_coords(self) -> Iterable[tuple[int, ...]]:
        return itertools.product(*(range(g) for g in self.grid_shape))

    def key(self, coords: Sequence[int]) -> str:
        name = self.metadata.encode_chunk_key(tuple(int(c) for c in coords))
        return f"{self.array}/{name}" if self.array else name

    def ranges(self, coords: Sequence[int]) -> list[tuple[int, int]]:
        """[start, stop) of the chunk along each dimension."""
        return [(i * c, min((i + 1) * c, n))
                for i, c, n in zip(coords, self.chunks, self.shape, strict=True)]

    def where(self, coords: Sequence[int]) -> str:
        """``chunk (3, 0) of array X in data/demo.zarr (rows 75,000-99,999, key X/c/3/0)``"""
        spans = self.ranges(coords)
        if self.dims is not None:
            parts = [f"{d} {a:,}-{b - 1:,}" for d, (a, b) in zip(self.dims, spans, strict=True)]
        elif len(spans) == 2:
            parts = [f"rows {spans[0][0]:,}-{spans[0][1] - 1:,}"]
            if self.grid_shape[1] > 1:
                parts.append(f"columns {spans[1][0]:,}-{spans[1][1] - 1:,}")
        else:
            parts = [f"axis {k} {a:,}-{b - 1:,}" for k, (a, b) in enumerate(spans)]
        unit = "shard" if self.sharded else "chunk"
        index = "(" + ", ".join(str(int(c)) for c in coords) + ("," if len(coords) == 1 else "")
        return (f"{unit} {index}) of {self.label} in {self.store} "
                f"({', '.join(parts)}, key {self.key(coords)})")


def missing_message(grid: ChunkGrid, coords: Sequence[int], n_missing: int = 1) -> str:
    more = ""
    if n_missing > 1:
        unit = "shards" if grid.sharded else "chunks"
        more = f" ({n_missing:,} of its {grid.n_chunks:,} {unit} are missing)"
    return f"data.path: {grid.where(coords)} is missing{more}"


def chunk_error(grid: ChunkGrid, coords: Sequence[int], exc: BaseException) -> ChunkError:
    """The error for chunk ``coords`` whose read raised ``exc``."""
    if isinstance(exc, MissingChunkError):
        return MissingChunkError(missing_message(grid, coords), key=grid.key(coords))
    reason = str(exc) or type(exc).__name__
    return ChunkError(f"data.path: {grid.where(coords)} cannot be read: {reason}",
                      key=grid.key(coords))


# ------------------------------------------------------------------ reading


def _bounds(key: Any, shape: Sequence[int]) -> list[tuple[int, int]]:
    """[start, stop) along each dimension covering an index ``key`` (a bounding box)."""
    if not isinstance(key, tuple):
        key = (key,)
    key = tuple(k for k in key if k is not None)
    if any(k is Ellipsis for k in key):
        at = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (len(shape) - len(key) + 1)
        key = key[:at] + fill + key[at + 1:]
    key = key + (slice(None),) * (len(shape) - len(key))
    out = []
    for k, n in zip(key, shape, strict=False):
        if isinstance(k, slice):
            start, stop, step = k.indices(n)
            if step < 0:
                start, stop = stop + 1, start + 1
            out.append((start, max(start, stop)))
        elif isinstance(k, (int, np.integer)):
            i = int(k) % n if n else 0
            out.append((i, i + 1))
        else:
            try:
                idx = np.asarray(k)
                if idx.dtype.kind in "iu" and idx.size:
                    idx = idx % n
                    out.append((int(idx.min()), int(idx.max()) + 1))
                    continue
            except Exception:  # noqa: BLE001 - any other index: the whole dimension
                pass
            out.append((0, n))
    return out


def locate_failure(source, grid: ChunkGrid, bounds: Sequence[tuple[int, int]]
                   ) -> ChunkError | None:
    """Read the chunks overlapping ``bounds`` one by one (in order); the error naming the
    first that fails, or None if every one reads."""
    spans = [range(a // c, -(-b // c)) for (a, b), c in zip(bounds, grid.chunks, strict=True)]
    for coords in itertools.product(*spans):
        region = tuple(slice(a, b) for a, b in grid.ranges(coords))
        try:
            np.asarray(source[region])
        except Exception as exc:  # noqa: BLE001 - any failure to read the chunk is named
            error = chunk_error(grid, coords, exc)
            error.__cause__ = exc
            return error
    return None


def read_checked(source, grid: ChunkGrid, key: Any) -> np.ndarray:
    """``np.asarray(source[key])``; a failure is a :class:`ChunkError` naming the chunk.

    A failure that does not recur when the chunks are read one by one is raised as it came.
    """
    try:
        return np.asarray(source[key])
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        error = locate_failure(source, grid, _bounds(key, grid.shape))
        if error is None:
            raise
        raise error from exc


class CheckedArray:
    """An array-like over ``source`` (a zarr array, or an xarray backend array) for
    ``dask.array.from_array``: every read that fails names its chunk (see
    :func:`read_checked`). Picklable when ``source`` is; small in a graph."""

    def __init__(self, source, grid: ChunkGrid, dtype=None, token: str | None = None) -> None:
        self.source = source
        self.grid = grid
        self.shape = tuple(int(s) for s in source.shape)
        self.dtype = np.dtype(dtype if dtype is not None else source.dtype)
        self.ndim = len(self.shape)
        self.token = token

    def __getitem__(self, key) -> np.ndarray:
        return read_checked(self.source, self.grid, key)

    def __dask_tokenize__(self):
        return ("daskem-checked", self.grid.store, self.grid.array, self.grid.label,
                self.shape, str(self.dtype), self.token)

    def __repr__(self) -> str:
        return f"CheckedArray({self.grid.label} in {self.grid.store}, shape={self.shape})"


def checked_dask(source, grid: ChunkGrid, chunks, *, dtype=None, token: str = ""):
    """``da.from_array`` over ``source`` with ``chunks``: one task per block, and the
    source once in the graph."""
    return reader_dask(CheckedArray(source, grid, dtype=dtype, token=token), chunks)


def reader_dask(arr, chunks):
    """``da.from_array`` over the array-like ``arr`` (whose reads are checked): one
    ``daskem-read`` task per block, and ``arr`` once in the graph."""
    import dask.array as da
    from dask.base import tokenize

    name = "daskem-read-" + tokenize(arr, chunks)
    return da.from_array(arr, chunks=chunks, name=name, lock=False, asarray=False,
                         meta=np.empty((0,) * arr.ndim, dtype=arr.dtype))


# ------------------------------------------------------------------ listing


# What a listing says of an object's version, by filesystem: a content hash where the
# object store keeps one (S3 ETag, GCS md5/crc32c, Azure content MD5), else its time.
_VERSION_FIELDS = ("ETag", "etag", "md5Hash", "crc32c", "content_md5", "mtime",
                   "LastModified", "last_modified", "updated", "created")


def _version(info: dict) -> str:
    for name in _VERSION_FIELDS:
        if info.get(name) is not None:
            return str(info[name])
    return ""


def list_chunks(path: str, storage_options: dict | None, prefix: str
                ) -> dict[str, tuple[int, str]]:
    """(size in bytes, version) of every object stored under ``prefix`` of the store at
    ``path`` (keys relative to the store, metadata documents left out): one listing.

    The version is what the listing tells of the object's content: its modification time
    on a filesystem, its ETag or content hash on an object store. A chunk rewritten with
    other values of the same size then changes the digest (:func:`chunks_digest`).

    Raises NotImplementedError for stores that cannot be listed (HTTP).
    """
    prefix = prefix.strip("/")
    if not is_url(path):
        top = os.path.join(path, *prefix.split("/")) if prefix else path
        found: dict[str, int] = {}
        if not os.path.isdir(top):
            return found
        head = f"{prefix}/" if prefix else ""
        for root, _, files in os.walk(top, followlinks=True):
            rel = os.path.relpath(root, top)
            base = head if rel == "." else head + rel.replace(os.sep, "/") + "/"
            for name in files:
                if name not in METADATA_NAMES:
                    stat = os.stat(os.path.join(root, name))
                    found[base + name] = (stat.st_size, str(stat.st_mtime))
        return found
    import fsspec

    fs, root = fsspec.core.url_to_fs(path, **(storage_options or {}))
    protocols = {fs.protocol} if isinstance(fs.protocol, str) else set(fs.protocol)
    if protocols & {"http", "https"}:
        # an HTTP "listing" is the links of an index page, if the server makes one
        raise NotImplementedError("HTTP servers do not list the keys of a store")
    root = root.rstrip("/")
    top = f"{root}/{prefix}" if prefix else root
    found = {}
    for full, info in fs.find(top, detail=True).items():
        key = full[len(root):].lstrip("/") if full.startswith(root) else full
        if info.get("type", "file") != "directory" and not is_metadata_key(key):
            found[key] = (int(info.get("size") or 0), _version(info))
    return found


def check_chunks(grid: ChunkGrid, stored: dict[str, tuple[int, str]], *,
                 missing: str = "error") -> list[tuple[str, int, str]]:
    """Compare the stored keys with ``grid``; the (key, size, version) of every stored
    chunk.

    ``missing="error"``: a chunk of the grid that is not stored raises
    :class:`MissingChunkError` naming the first one and the count.
    """
    present = []
    first, n_missing = None, 0
    for coords in grid.all_coords():
        key = grid.key(coords)
        entry = stored.get(key)
        if entry is None:
            n_missing += 1
            if first is None:
                first = coords
        else:
            present.append((key, *entry))
    if n_missing and missing == "error":
        raise MissingChunkError(missing_message(grid, first, n_missing), key=grid.key(first))
    return present


def chunks_digest(chunks: Iterable[tuple[str, int, str]]) -> str:
    """sha256 hex digest of the sorted (key, size, version) of the stored chunks."""
    h = hashlib.sha256()
    for key, size, version in sorted(chunks):
        h.update(f"{key}\t{int(size)}\t{version}\n".encode())
    return h.hexdigest()
