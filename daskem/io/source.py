"""Opening a feature store as a (n_samples, n_features) dask array.

A config that points at nothing (no store at ``data.path``, no such variable) is a
:class:`~daskem.errors.ConfigError` naming the key; a source whose content cannot be used
(wrong dimensions, object dtype, only missing values) is a :class:`~daskem.errors.DataError`.

Sources: a Zarr array (or an array inside a Zarr group), an xarray dataset stored in Zarr
(feature variables named, sample dimensions stacked in order, e.g. time × lat × lon), a
NumPy ``.npy`` file; any of them at a local path or an fsspec URL with storage options.
Nothing is read here but metadata and one listing of the keys stored under each input
array, except for the policies that need a pass: ``missing: drop`` (one pass to find the
rows to keep) and ``standardize`` (one pass for mean and standard deviation).

Every chunk of a Zarr input must be stored and readable (``data.missing_chunks: error``):
the listing is compared with each array's chunk grid when the source is opened, the arrays
are read through :class:`~daskem.io.checked.StrictStore` (a chunk missing later is an
error too, never the fill value), and a chunk that fails to read is a
:class:`~daskem.io.checked.ChunkError` naming the chunk, its key and its rows. The same
listing gives the fingerprint's ``chunks`` digest (key and size of every stored chunk).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, Protocol

import dask
import dask.array as da
import numpy as np

from daskem.errors import ConfigError, DataError
from daskem.io.checked import (
    CheckedArray,
    ChunkGrid,
    check_chunks,
    checked_dask,
    chunks_digest,
    list_chunks,
    open_store,
    read_checked,
    reader_dask,
)


class DataConfig(Protocol):
    """The settings a source is opened with: what a job's ``data:`` section holds
    (:class:`daskem.config.DataConfig` is one); ``io`` depends on these names only."""

    path: str
    format: str  # "auto" | "zarr" | "xarray" | "npy"
    variable: str | None
    features: list[str] | None
    feature_dim: str | None
    sample_dims: list[str] | None
    missing: str  # "error" | "drop" | "marginalize"
    chunk_rows: int | None
    standardize: bool
    missing_chunks: str  # "error" | "fill"
    storage_options: dict[str, Any]


class ZarrRows:
    """Rows of a 2-D Zarr array, read by the tasks themselves (a row reader).

    Pass it to ``fit`` instead of a dask array: every task then reads a block of about
    64 MiB of whole Zarr chunks, so a pass costs the scheduler one task per block, however
    finely the store is chunked. Integers are read as float64; ``standardize`` is an
    optional (mean, scale) applied to every row read.

    ``missing_chunks="error"`` (the default): a chunk that is not stored is an error, never
    the fill value; any chunk that fails to read is a :class:`~daskem.io.checked.ChunkError`
    naming the chunk and its rows.
    """

    def __init__(self, path: str, component: str | None = None,
                 storage_options: dict | None = None,
                 standardize: tuple[np.ndarray, np.ndarray] | None = None,
                 missing_chunks: str = "error") -> None:
        self.path = path
        self.component = component
        self.storage_options = storage_options or None
        self.standardize = standardize
        self.missing_chunks = missing_chunks
        arr = self._open()
        self.shape = tuple(int(s) for s in arr.shape)
        self.dtype = np.dtype(np.float64) if arr.dtype.kind in "iub" else arr.dtype
        self.chunk_rows = int(arr.chunks[0])
        self.grid = ChunkGrid.of(arr, path)
        self._array = arr

    def _open(self):
        import zarr

        store = open_store(self.path, self.storage_options,
                           strict=self.missing_chunks == "error")
        return zarr.open_array(store, path=self.component or "", mode="r")

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_array"] = None  # reopened where it is read
        return state

    def read(self, start: int, stop: int) -> np.ndarray:
        if self._array is None:
            self._array = self._open()
        x = read_checked(self._array, self.grid, slice(start, stop)).astype(self.dtype,
                                                                             copy=False)
        if self.standardize is not None:
            mean, scale = self.standardize
            x = ((x - mean) / scale).astype(self.dtype, copy=False)
        return x

    def to_dask(self) -> da.Array:
        arr = self._array if self._array is not None else self._open()
        x = checked_dask(arr, self.grid, arr.chunks, token=self.missing_chunks)
        x = x.astype(self.dtype)
        if self.standardize is not None:
            mean, scale = self.standardize
            x = ((x - mean) / scale).astype(self.dtype)
        return x


    def standardized(self, standardize: tuple[np.ndarray, np.ndarray] | None) -> ZarrRows:
        """The same rows with ``standardize`` applied by :meth:`read` and :meth:`to_dask`."""
        return ZarrRows(self.path, self.component, self.storage_options, standardize,
                        missing_chunks=self.missing_chunks)


class DroppedRows:
    """The rows of another row reader that have no missing value (``missing: drop``) as a
    row reader: row ``i`` is the ``i``-th complete row of ``rows``.

    ``kept``: the complete rows in each block of ``rows.chunk_rows`` source rows (the drop
    pass counts them). A task reads whole source blocks and keeps their complete rows, so
    the fit's tasks still read their own rows, one task per block of about 64 MiB.
    """

    def __init__(self, rows, kept: np.ndarray) -> None:
        self.rows = rows
        self.kept = np.asarray(kept, dtype=np.int64)
        self.ends = np.cumsum(self.kept)  # complete rows up to the end of each block
        self.shape = (int(self.ends[-1]) if len(self.ends) else 0, rows.shape[1])
        self.dtype = rows.dtype
        self.chunk_rows = rows.chunk_rows

    def standardized(self, standardize) -> DroppedRows:
        return DroppedRows(self.rows.standardized(standardize), self.kept)

    def blocks(self, task_rows: int | None = None) -> list[tuple[int, int]]:
        """Ranges of complete rows that begin and end on source block boundaries, each
        read from about ``task_rows`` source rows (default: about 64 MiB)."""
        from daskem.engine.data import DEFAULT_TASK_BYTES

        step = self.chunk_rows
        if task_rows is None:
            task_rows = DEFAULT_TASK_BYTES // max(self.shape[1] * self.dtype.itemsize, 1)
        per_task = max(1, task_rows // step)
        starts = np.concatenate([[0], self.ends])
        edges = [int(starts[i]) for i in range(0, len(self.kept), per_task)] + [self.shape[0]]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Complete rows ``start:stop``: the source blocks holding them, read and filtered."""
        if stop <= start:
            return np.empty((0, self.shape[1]), dtype=self.dtype)
        first = int(np.searchsorted(self.ends, start, side="right"))
        last = int(np.searchsorted(self.ends, stop, side="left")) + 1
        n = self.rows.shape[0]
        x = self.rows.read(first * self.chunk_rows, min(last * self.chunk_rows, n))
        x = x[np.isfinite(x).all(axis=1)]
        offset = int(self.ends[first - 1]) if first else 0
        return x[start - offset:stop - offset]

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, _ = rows.indices(self.shape[0])
        return self.read(start, stop)[:, cols]

    @property
    def ndim(self) -> int:
        return 2

    def to_dask(self) -> da.Array:
        """The complete rows as a lazy dask array, one task per source block."""
        return reader_dask(self, (tuple(int(k) for k in self.kept), (self.shape[1],)))

    def __dask_tokenize__(self):
        from dask.base import tokenize

        return ("daskem-dropped-rows", tokenize(self.rows), self.kept.tolist())


def _kept_rows(rows) -> np.ndarray:
    """One pass: the complete rows (no missing value) in each block of ``rows``."""
    x = rows.to_dask()
    counts = x.map_blocks(lambda b: np.isfinite(b).all(axis=1).sum(keepdims=True),
                          drop_axis=1, chunks=((1,) * x.numblocks[0],), dtype=np.int64,
                          name="daskem-missing")
    return np.asarray(counts.compute())


@dataclass
class GridLayout:
    """How rows map back onto an xarray dataset's sample dimensions."""

    sample_dims: list[str]
    shape: tuple[int, ...]
    coords: dict[str, Any]  # 1-D coordinate values of each sample dimension


@dataclass
class Source:
    """The samples of a data source, and what is needed to write outputs aligned to it."""

    full: da.Array  # (n_rows, n_features): every row of the source, in order
    X: da.Array  # the rows used for fitting (``full`` without dropped rows)
    rows: ZarrRows | None  # a row reader for fitting, where the source allows one
    features: list[str]
    n_dropped: int
    layout: GridLayout | None  # None: outputs are plain arrays aligned with the rows
    fingerprint: dict
    standardize: tuple[np.ndarray, np.ndarray] | None = None  # (mean, scale)
    description: str = ""
    notes: list[str] = field(default_factory=list)
    passes: dict = field(default_factory=dict)  # full reads made opening it, by policy
    first_row: int = 0  # the data's row that is row 0 here (a fit of the new rows only)
    unscaled: da.Array | None = None  # ``full`` before standardisation (when standardized)

    @property
    def n_rows(self) -> int:
        return int(self.full.shape[0])


def _detect_format(cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    if cfg.path.endswith(".npy"):
        return "npy"
    if cfg.features or cfg.sample_dims or cfg.feature_dim:
        return "xarray"
    return "zarr"


def _check_numeric(dtype: np.dtype, where: str) -> None:
    if dtype.kind == "O":
        raise DataError(f"{where} has object dtype; object (pickle) codecs are refused: "
                        "daskem reads numbers only")
    if dtype.kind not in "fiub":
        raise DataError(f"{where} has dtype {dtype}; daskem needs numbers")


@dataclass
class _Opened:
    """What an opener found: the rows, their names and layout, the stored chunks."""

    X: da.Array
    names: list[str]
    layout: GridLayout | None = None
    chunks: list[tuple[str, int]] | None = None  # (key, size) of every stored input chunk
    component: str | None = None  # zarr: the array's path inside the store
    reader: GridRows | None = None  # xarray: the rows as a row reader
    notes: list[str] = field(default_factory=list)


def _open_store(cfg: DataConfig):
    """The store at ``data.path``: strict (a missing chunk is an error) unless
    ``data.missing_chunks: fill``."""
    try:
        return open_store(cfg.path, cfg.storage_options or None,
                          strict=cfg.missing_chunks == "error")
    except TypeError as exc:
        raise ConfigError(f"data.storage_options: {exc}") from None
    except FileNotFoundError:
        raise ConfigError(f"data.path: no Zarr store at {cfg.path}") from None
    except Exception as exc:  # noqa: BLE001 - fsspec raises many kinds for bad URLs
        raise DataError(f"data.path: cannot open {cfg.path} as Zarr: {exc}") from None


def _stored_chunks(cfg: DataConfig, grid: ChunkGrid, notes: list[str]
                   ) -> list[tuple[str, int]] | None:
    """One listing of the keys stored under ``grid``'s array, checked against its grid.

    None when the store cannot be listed (the reads still refuse a missing chunk).
    """
    try:
        found = list_chunks(cfg.path, cfg.storage_options or None, grid.array)
    except FileNotFoundError:
        found = {}
    except Exception as exc:  # noqa: BLE001 - a store that cannot be listed is still read
        notes.append(f"could not list the chunks of {grid.label} ({type(exc).__name__}: "
                     f"{exc}); missing chunks are found when they are read")
        return None
    return check_chunks(grid, found, missing=cfg.missing_chunks)


def _open_zarr_array(cfg: DataConfig, store=None):
    import zarr

    store = store if store is not None else _open_store(cfg)
    try:
        node = zarr.open(store, mode="r")
    except FileNotFoundError:
        raise ConfigError(f"data.path: no Zarr store at {cfg.path}") from None
    except Exception as exc:  # noqa: BLE001 - zarr raises many kinds for unreadable stores
        raise DataError(f"data.path: cannot open {cfg.path} as Zarr: {exc}") from None
    if isinstance(node, zarr.Array):
        return node, []
    arrays = {name: arr for name, arr in node.arrays()}
    if cfg.variable is not None:
        if cfg.variable not in arrays:
            raise ConfigError(f"data.variable: no array {cfg.variable!r} in {cfg.path}; it has: "
                            f"{', '.join(sorted(arrays)) or 'no arrays'}")
        arr = arrays[cfg.variable]
    else:
        two_d = [name for name, arr in arrays.items() if arr.ndim == 2]
        if len(arrays) == 1:
            arr = next(iter(arrays.values()))
        elif len(two_d) == 1:
            arr = arrays[two_d[0]]
        else:
            raise ConfigError(f"data.variable: {cfg.path} holds {len(arrays)} arrays "
                              f"({', '.join(sorted(arrays)) or 'none'}); name the one to use")
    names = node.attrs.get("features") or []
    return arr, list(names)


def _zarr_source(cfg: DataConfig) -> _Opened:
    arr, names = _open_zarr_array(cfg)
    _check_numeric(arr.dtype, f"the Zarr array at {cfg.path}")
    if arr.ndim != 2:
        raise DataError(f"data.path: the Zarr array at {cfg.path} is {arr.ndim}-D; expected "
                        "(n_samples, n_features)")
    grid = ChunkGrid.of(arr, cfg.path)
    notes: list[str] = []
    stored = _stored_chunks(cfg, grid, notes)
    X = checked_dask(arr, grid, arr.chunks, token=_token(cfg, stored))
    if len(names) != arr.shape[1]:
        names = [f"feature_{j}" for j in range(arr.shape[1])]
    return _Opened(X, names, chunks=stored, component=arr.path or None, notes=notes)


def _token(cfg: DataConfig, stored: list[tuple[str, int]] | None) -> str:
    """Part of the read tasks' names: the policy and what the listing found."""
    return f"{cfg.missing_chunks}-{chunks_digest(stored) if stored is not None else ''}"


def _npy_source(cfg: DataConfig) -> _Opened:
    import fsspec

    try:
        if "://" in cfg.path:
            with fsspec.open(cfg.path, "rb", **cfg.storage_options) as fh:
                arr = np.load(fh, allow_pickle=False)
        else:
            arr = np.load(cfg.path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise ConfigError(f"data.path: no file at {cfg.path}") from None
    except ValueError as exc:  # pickled object arrays
        raise DataError(f"data.path: {cfg.path} cannot be read without pickle ({exc}); "
                        "object arrays are refused") from None
    _check_numeric(arr.dtype, f"the array in {cfg.path}")
    if arr.ndim != 2:
        raise DataError(f"data.path: the array in {cfg.path} is {arr.ndim}-D; expected "
                        "(n_samples, n_features)")
    X = da.from_array(arr, chunks=(cfg.chunk_rows or "auto", -1))
    return _Opened(X, [f"feature_{j}" for j in range(arr.shape[1])])


def _xarray_source(cfg: DataConfig) -> _Opened:
    import xarray as xr
    import zarr

    store = _open_store(cfg)
    try:
        # chunks=None: lazily indexed variables (CF decoding kept), read below through
        # CheckedArray by GridRows, one task per block of the leading sample dimension;
        # cache=False: a variable is not kept in memory once read.
        ds = xr.open_dataset(store, engine="zarr", consolidated=False, chunks=None,
                             cache=False)
        # The variables' attributes as stored (scale_factor, _FillValue, ...): GridRows
        # reads raw chunks and decodes them as xarray does.
        raw = xr.open_dataset(store, engine="zarr", consolidated=False, chunks=None,
                              decode_cf=False)
    except FileNotFoundError:
        raise ConfigError(f"data.path: no Zarr store at {cfg.path}") from None
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"data.path: cannot open {cfg.path} as an xarray dataset: "
                        f"{exc}") from None
    if cfg.features:
        missing = [name for name in cfg.features if name not in ds.data_vars]
        if missing:
            raise ConfigError(f"data.features: no variable {', '.join(map(repr, missing))} in "
                            f"{cfg.path}; it has: {', '.join(sorted(map(str, ds.data_vars)))}")
        for name in cfg.features:
            _check_numeric(ds[name].dtype, f"data.features: variable {name!r}")
        inputs = list(cfg.features)
    elif cfg.variable:
        if cfg.variable not in ds.data_vars:
            raise ConfigError(f"data.variable: no variable {cfg.variable!r} in {cfg.path}; it "
                            f"has: {', '.join(sorted(map(str, ds.data_vars)))}")
        _check_numeric(ds[cfg.variable].dtype, f"data.variable: variable {cfg.variable!r}")
        if not cfg.feature_dim or cfg.feature_dim not in ds[cfg.variable].dims:
            raise ConfigError(f"data.feature_dim: give the feature dimension of {cfg.variable!r}"
                            f" (one of {', '.join(map(str, ds[cfg.variable].dims))})")
        inputs = [cfg.variable]
    else:
        raise ConfigError("data.features: name the feature variables (or data.variable with "
                        "data.feature_dim) of the xarray dataset")
    if cfg.features:
        names = list(cfg.features)
        other = list(dict.fromkeys(str(d) for name in names for d in ds[name].dims))
    else:
        var = ds[cfg.variable]
        names = ([str(v) for v in var[cfg.feature_dim].values] if cfg.feature_dim in var.coords
                 else [f"{cfg.variable}_{j}" for j in range(var.sizes[cfg.feature_dim])])
        other = [str(d) for d in var.dims if d != cfg.feature_dim]
    sample_dims = list(cfg.sample_dims) if cfg.sample_dims else other
    if sorted(sample_dims) != sorted(other):
        raise ConfigError(f"data.sample_dims: {sample_dims} must list exactly the dimensions "
                          f"{other} of the features")
    notes: list[str] = []
    stored: list[tuple[str, int]] | None = []
    columns = []
    for name in inputs:
        try:
            zarr_arr = zarr.open_array(store, path=name, mode="r")
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"data.path: cannot open variable {name!r} of {cfg.path}: "
                            f"{exc}") from None
        var = ds[name].variable
        grid = ChunkGrid.of(zarr_arr, cfg.path, label=f"variable {name}", dims=var.dims)
        listed = _stored_chunks(cfg, grid, notes)
        stored = None if listed is None or stored is None else stored + listed
        columns.append(GridColumn(_checked_reader(var, grid, _token(cfg, listed)),
                                  tuple(map(str, var.dims)),
                                  None if cfg.features else cfg.feature_dim,
                                  zarr_arr, dict(raw[name].attrs)))
    shape = tuple(int(ds.sizes[d]) for d in sample_dims)
    blocks = _blocks(columns, sample_dims[0], shape[0])
    rows = GridRows(columns, sample_dims, shape, len(names), lead_chunk=blocks[0])
    X = reader_dask(rows, (tuple(n * rows.inner for n in blocks), (len(names),)))
    coords = {d: np.asarray(ds[d].values) if d in ds.coords else np.arange(ds.sizes[d])
              for d in sample_dims}
    return _Opened(X, names, GridLayout(sample_dims, shape, coords), chunks=stored, notes=notes,
                   reader=rows)


def _checked_reader(var, grid: ChunkGrid, token: str) -> CheckedArray:
    """``var`` (lazily indexed, CF-decoded) read through :class:`CheckedArray`."""
    from xarray.core.indexing import (
        ExplicitlyIndexed,
        ImplicitToExplicitIndexingAdapter,
        OuterIndexer,
    )

    lazy = var._data
    if isinstance(lazy, ExplicitlyIndexed):
        lazy = ImplicitToExplicitIndexingAdapter(lazy, OuterIndexer)
    return CheckedArray(lazy, grid, dtype=var.dtype, token=token)


def _blocks(columns: list[GridColumn], dim: str, size: int) -> tuple[int, ...]:
    """Lengths of the blocks along the leading sample dimension ``dim``: cut wherever a
    storage chunk of any input variable ends, so that a block reads whole chunks."""
    cuts = {size}
    for col in columns:
        if dim in col.dims:
            step = col.reader.grid.chunks[col.dims.index(dim)]
            cuts.update(range(step, size, step))
    edges = [0, *sorted(cuts)]
    return tuple(b - a for a, b in zip(edges[:-1], edges[1:], strict=True))


@dataclass(frozen=True)
class GridColumn:
    """One input variable of an xarray source: its reader, its dimensions, and for a
    variable that holds all the features, the dimension they lie along."""

    reader: CheckedArray  # the decoded variable, each failed read naming its chunk
    dims: tuple[str, ...]
    feature_dim: str | None = None
    array: Any = None  # the zarr array, for the raw reads
    attrs: dict = field(default_factory=dict)  # its CF attributes as stored

    def decode(self, raw: np.ndarray) -> np.ndarray:
        """Raw values as xarray decodes them (mask, scale, offset)."""
        import xarray as xr

        return np.asarray(xr.conventions.decode_cf_variable(
            "x", xr.Variable(self.dims, raw, self.attrs)).values)


class GridRows:
    """The rows of an xarray dataset's feature variables as one (n_samples, n_features)
    array-like: a block of rows is read as the matching range of the leading sample
    dimension of every variable (checked reads, CF-decoded), each put in sample-dimension
    order and stacked into columns, in one task. Rows are the sample dimensions stacked in
    ``sample_dims`` order, the first slowest.

    Also a row reader (like :class:`ZarrRows`): ``fit`` given one lets each task read its
    own block of about 64 MiB, one task per block however finely the store is chunked.
    ``chunk_rows``: the rows of ``lead_chunk`` steps of the leading dimension (its storage
    chunk). ``standardize``: an optional (mean, scale) applied to every row :meth:`read`.
    """

    def __init__(self, columns: list[GridColumn], sample_dims: list[str],
                 shape: tuple[int, ...], n_features: int, *, lead_chunk: int = 1,
                 standardize: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.columns = columns
        self.sample_dims = list(sample_dims)
        self.sample_shape = shape
        self.inner = int(np.prod(shape[1:], dtype=np.int64))
        self.shape = (int(np.prod(shape, dtype=np.int64)), n_features)
        dtype = np.result_type(*(col.reader.dtype for col in columns))
        self.dtype = np.dtype(np.float64) if dtype.kind in "iub" else dtype
        self.ndim = 2
        self.lead_chunk = lead_chunk
        self.chunk_rows = lead_chunk * self.inner
        self.standardize = standardize

    def standardized(self, standardize: tuple[np.ndarray, np.ndarray] | None) -> GridRows:
        """The same rows with ``standardize`` applied by :meth:`read` and :meth:`to_dask`."""
        return GridRows(self.columns, self.sample_dims, self.sample_shape, self.shape[1],
                        lead_chunk=self.lead_chunk, standardize=standardize)

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` (float, standardised if asked)."""
        x = self[start:stop]
        if self.standardize is not None:
            mean, scale = self.standardize
            x = ((x - mean) / scale).astype(self.dtype, copy=False)
        return x

    def to_dask(self) -> da.Array:
        """The same rows as a lazy dask array, one task per ``chunk_rows`` rows."""
        n = self.shape[0]
        x = reader_dask(self.standardized(None),
                        ((self.chunk_rows,) * (n // self.chunk_rows)
                         + ((n % self.chunk_rows,) if n % self.chunk_rows else ()),
                         (self.shape[1],)))
        if self.standardize is not None:
            mean, scale = self.standardize
            x = ((x - mean) / scale).astype(self.dtype)
        return x

    def __getitem__(self, key) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        start, stop, _ = rows.indices(self.shape[0])
        first, last = start // self.inner, -(-stop // self.inner)
        block = self._read(first, last)
        offset = first * self.inner
        return block[start - offset:stop - offset][:, cols]

    def _read(self, first: int, last: int) -> np.ndarray:
        """Rows of the leading sample dimension's range [first, last)."""
        lead = self.sample_dims[0]
        shape = (last - first, *self.sample_shape[1:])
        out = np.empty((int(np.prod(shape, dtype=np.int64)), self.shape[1]), dtype=self.dtype)
        keys = [tuple(slice(first, last) if d == lead else slice(None) for d in col.dims)
                for col in self.columns]
        parts = self._read_raw(keys)
        if parts is None:  # read again, each failure naming its chunk
            parts = [col.reader[key] for col, key in zip(self.columns, keys, strict=True)]
        j = 0
        for col, part in zip(self.columns, parts, strict=True):
            dims = [d for d in self.sample_dims if d in col.dims]
            if col.feature_dim is not None:
                part = np.transpose(part, [col.dims.index(d) for d in (*dims, col.feature_dim)])
                n = part.shape[-1]
                out[:, j:j + n] = part.reshape(-1, n)
            else:
                part = np.transpose(part, [col.dims.index(d) for d in dims])
                # A variable without some sample dimensions repeats along them.
                full = part.reshape([s if d in col.dims else 1
                                     for d, s in zip(self.sample_dims, shape, strict=True)])
                n = 1
                out[:, j] = np.broadcast_to(full, shape).reshape(-1)
            j += n
        return out

    def _read_raw(self, keys) -> list[np.ndarray] | None:
        """Every variable's part in one go: their chunks fetched and decompressed side by
        side (zarr's per-chunk cost is paid concurrently), then CF-decoded; ``None`` if
        any read fails."""
        from zarr.core.sync import sync

        async def fetch():
            return await asyncio.gather(*(col.array.async_array.getitem(key)
                                          for col, key in zip(self.columns, keys, strict=True)))

        try:
            raws = sync(fetch())
        except Exception:  # noqa: BLE001 - the checked reads say which chunk and why
            return None
        return [col.decode(np.asarray(raw)) for col, raw in zip(self.columns, raws, strict=True)]

    def __dask_tokenize__(self):
        return ("daskem-grid-rows", [col.reader.__dask_tokenize__() for col in self.columns],
                [(col.dims, col.feature_dim) for col in self.columns], self.sample_dims,
                self.standardize is not None and [v.tolist() for v in self.standardize])


def open_source(cfg: DataConfig, *, standardize: tuple[np.ndarray, np.ndarray] | None = None,
                persist: bool = False) -> Source:
    """Open ``cfg``'s data source lazily and apply its chunking and row policies.

    ``standardize`` gives the (mean, scale) of an earlier fit (for scoring new data);
    otherwise ``cfg.standardize`` computes them from this source.
    """
    fmt = _detect_format(cfg)
    opener = {"zarr": _zarr_source, "npy": _npy_source, "xarray": _xarray_source}[fmt]
    opened = opener(cfg)
    full, names, layout = opened.X, opened.names, opened.layout
    if full.dtype.kind in "iub":
        full = full.astype(np.float64)
    full = full.rechunk({0: cfg.chunk_rows or full.chunks[0][0], 1: -1}) if (
        cfg.chunk_rows or full.numblocks[1] > 1 or len(set(full.chunks[0][:-1])) > 1
    ) else full
    fingerprint = {"path": cfg.path, "format": fmt, "shape": list(map(int, full.shape)),
                   "dtype": str(full.dtype), "chunk_rows": int(full.chunks[0][0]),
                   "features": names,
                   "chunks": chunks_digest(opened.chunks) if opened.chunks is not None
                   else None}
    X = full
    n_dropped = 0
    notes = list(opened.notes)
    passes: dict = {}
    # A row reader: the fit's tasks read their own blocks of rows.
    reader = None if persist else (
        ZarrRows(cfg.path, opened.component, cfg.storage_options,
                 missing_chunks=cfg.missing_chunks) if fmt == "zarr" else opened.reader)
    if cfg.missing == "drop":
        passes["missing"] = 1  # one pass: the number of kept rows in each chunk
        if reader is not None:
            reader = DroppedRows(reader, _kept_rows(reader))
            X = reader.to_dask()
        else:
            X = full[da.isfinite(full).all(axis=1)]
            X.compute_chunk_sizes()
        n_dropped = int(full.shape[0] - X.shape[0])
        notes.append(f"dropped {n_dropped:,} of {full.shape[0]:,} rows with missing values")
        if X.shape[0] == 0:
            raise DataError(f"data.missing: every row of {cfg.path} has a missing value")
    if standardize is None and cfg.standardize:
        passes["standardize"] = 1
        if cfg.missing == "marginalize":  # over each feature's observed values
            mean, std = dask.compute(da.nanmean(X, axis=0, dtype=np.float64),
                                     da.nanstd(X, axis=0, dtype=np.float64))
        else:
            mean, std = dask.compute(X.mean(axis=0, dtype=np.float64),
                                     X.std(axis=0, dtype=np.float64))
        scale = np.where(std > 0, std, 1.0)
        standardize = (np.asarray(mean), np.asarray(scale))
        notes.append("standardized each feature to mean 0, variance 1")
    unscaled = None
    if standardize is not None:
        mean, scale = standardize
        unscaled = full
        full = ((full - mean) / scale).astype(full.dtype)
        X = ((X - mean) / scale).astype(X.dtype)
    if persist:
        X = X.persist()
        passes["persist"] = 1
    description = (f"{cfg.path} ({fmt}): {full.shape[0]:,} rows x {full.shape[1]} features, "
                   f"{full.dtype}, {X.numblocks[0]} chunks")
    rows = None if reader is None else reader.standardized(standardize)
    return Source(full=full, X=X, rows=rows, features=names, n_dropped=n_dropped,
                  layout=layout,
                  fingerprint=fingerprint, standardize=standardize, description=description,
                  notes=notes, passes=passes, unscaled=unscaled)
