"""The data at the boundary: checked once, turned into row-chunks the passes map over.

Policy on input types (the estimators' docs repeat it):

* ``float32`` and ``float64`` are used as they are (float32 stays float32 in the per-chunk
  math); ``float16`` is widened to float32; integer and boolean data are converted to
  float64, as scikit-learn does.
* strings, objects, complex numbers, dates and anything else are refused.
* the data must be 2-D (n_samples, n_features); a 1-D array is refused with a hint.
* non-finite values (NaN, ±inf) are refused, naming the first row that has one.
* sparse matrices (``scipy.sparse``, in memory or as the chunks of a dask array) are kept
  sparse in memory and made dense one chunk at a time, inside each task.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Protocol

import dask
import dask.array as da
import numpy as np
import scipy.sparse
from threadpoolctl import threadpool_limits

from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, ReadRows, map_reduce
from daskem.errors import DataError, DataWarning
from daskem.kernels.random import spawn_seeds
from daskem.kernels.summary import SampleRequest, Summary, summarise_chunk

# Target size of a chunk made from an in-memory array.
DEFAULT_CHUNK_BYTES = 32 * 2**20
# Target size of the block of rows one task reads itself from a row reader.
DEFAULT_TASK_BYTES = 64 * 2**20


class RowReader(Protocol):
    """A source that tasks can read rows from directly (see :class:`~daskem.io.ZarrRows`)."""

    shape: tuple[int, int]
    dtype: np.dtype
    chunk_rows: int  # the storage chunking; blocks are whole multiples of it

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` as a float array of shape (stop − start, n_features)."""

    def to_dask(self) -> da.Array:
        """The same rows as a lazy dask array (for per-sample outputs)."""


def is_row_reader(X) -> bool:
    return hasattr(X, "read") and hasattr(X, "to_dask") and hasattr(X, "chunk_rows")


def reader_blocks(reader: RowReader, task_rows: int | None = None) -> list[tuple[int, int]]:
    """Row ranges of about ``DEFAULT_TASK_BYTES``, in whole storage chunks (a reader with a
    ``blocks(task_rows)`` method says where its own are)."""
    if hasattr(reader, "blocks"):
        return reader.blocks(task_rows)
    n, d = reader.shape
    step = reader.chunk_rows
    if task_rows is None:
        task_rows = DEFAULT_TASK_BYTES // max(d * np.dtype(reader.dtype).itemsize, 1)
    task_rows = max(step, task_rows // step * step)
    return [(start, min(start + task_rows, n)) for start in range(0, n, task_rows)]


# Incremental EM: the fewest chunks in a block. A block's chunks are its only
# parallelism (its M-step waits for all of them), so a block of one chunk would leave all
# but one worker thread idle.
MIN_BLOCK_CHUNKS = 4

# The phases a pass is counted under, by the engine's task-name prefix.
PASS_PHASES = {"summary": "summary", "seed": "seeding", "init": "initialisation",
               "estep": "em", "final": "score", "select": "score", "score": "score"}


@dataclass
class ChunkedData:
    """A 2-D dask array cut into row-chunks, with optional sample weights aligned to it."""

    array: da.Array
    weights: da.Array | None
    from_memory: bool
    reader: RowReader | None = None
    task_rows: int | None = None
    # Full reads of the data so far, by phase (see PASS_PHASES): the budget of a fit.
    passes: dict = field(default_factory=dict)
    # In-memory data of one chunk: its passes run in this process (see as_chunked).
    local: bool = False

    def __post_init__(self) -> None:
        if self.reader is not None:
            blocks = reader_blocks(self.reader, self.task_rows)
            self.chunks = [ReadRows(self.reader, a, b) for a, b in blocks]
            self.offsets = np.array([a for a, _ in blocks], dtype=int)
            if self.weights is not None:
                self.weights = self.weights.rechunk((tuple(b - a for a, b in blocks),))
        else:
            # optimize_graph=False: optimising drops the futures of a persisted array; the
            # pass culls its graph when it is computed.
            self.chunks = list(self.array.to_delayed(optimize_graph=False)[:, 0])
            self.offsets = np.concatenate([[0], np.cumsum(self.array.chunks[0])[:-1]]
                                          ).astype(int)
        self.weight_chunks = (None if self.weights is None
                              else list(self.weights.to_delayed(optimize_graph=False)))

    @property
    def n_samples(self) -> int:
        return int(self.array.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.array.shape[1])

    @property
    def dtype(self) -> np.dtype:
        return self.array.dtype

    @property
    def n_chunks(self) -> int:
        return len(self.chunks)

    def count_pass(self, phase: str) -> None:
        name = PASS_PHASES.get(phase, phase)
        self.passes[name] = self.passes.get(name, 0) + 1

    def map_reduce(self, kernel, payload, *, phase: str, label: str = "",
                   split_every: int = DEFAULT_SPLIT_EVERY, blocks=None):
        """One pass: ``kernel`` on every chunk, results added up (one ``compute``).

        With ``blocks`` (ranges ``(start, stop)`` of chunk numbers), the results are added
        up per block instead and returned as a list, in one ``compute``; that counts as a
        pass only when the blocks cover every chunk (an incremental sweep counts its pass
        itself, with :meth:`count_pass`).
        """
        if self.local:
            # As on a worker: one BLAS thread (threaded BLAS on blocks of 256 rows spends
            # more time starting threads than computing: 23 ms against 7 ms per iteration
            # of a 20,000 × 8, K = 8 mixture), and the same arithmetic as there.
            with threadpool_limits(1):
                return self._map_reduce(kernel, payload, phase, label, split_every, blocks,
                                        "sync")
        return self._map_reduce(kernel, payload, phase, label, split_every, blocks, None)

    def _map_reduce(self, kernel, payload, phase, label, split_every, blocks, scheduler):
        if blocks is None:
            self.count_pass(phase)
            return map_reduce(self.chunks, self.weight_chunks, self.offsets, kernel, payload,
                              phase=phase, label=label, split_every=split_every,
                              scheduler=scheduler)
        roots = []
        for j, (a, b) in enumerate(blocks):
            weights = None if self.weight_chunks is None else self.weight_chunks[a:b]
            roots.append(map_reduce(self.chunks[a:b], weights, self.offsets[a:b], kernel,
                                    payload, phase=phase, label=f"{label}b{j:03d}",
                                    split_every=split_every, compute=False))
        if sum(b - a for a, b in blocks) == self.n_chunks:
            self.count_pass(phase)
        return list(dask.compute(*roots, scheduler=scheduler))

    def block_ranges(self, n_blocks: int) -> list[tuple[int, int]]:
        """``n_blocks`` consecutive ranges of chunks, as even as possible, each of at
        least ``MIN_BLOCK_CHUNKS`` chunks (fewer blocks if the data have too few chunks).

        The ranges depend on the chunk grid alone, never on the cluster, so a fit does
        not depend on how many workers ran it.
        """
        n = self.n_chunks
        n_blocks = max(1, min(int(n_blocks), n // MIN_BLOCK_CHUNKS))
        edges = [n * j // n_blocks for j in range(n_blocks + 1)]
        return list(zip(edges[:-1], edges[1:], strict=True))

    def chunk_of_row(self, row: int) -> int:
        """The source's chunk holding ``row`` (the storage chunk, for a row reader)."""
        if self.reader is not None:
            return int(row // self.reader.chunk_rows)
        return int(np.searchsorted(self.offsets, row, side="right") - 1)


def _as_dask(X, what: str) -> tuple[da.Array, bool]:
    if is_row_reader(X):
        return X.to_dask(), False
    if X is None:
        raise DataError(f"{what} is None; expected an array of shape (n_samples, n_features)")
    if hasattr(X, "dims") and hasattr(X, "data") and hasattr(X, "coords"):  # xarray
        X = X.data
    if isinstance(X, da.Array):
        return X, False
    if scipy.sparse.issparse(X):
        return X.tocsr(), True
    if hasattr(X, "__dask_graph__"):
        raise DataError(f"{what} is a {type(X).__name__}; pass a dask array "
                        "(for a dask DataFrame: df.to_dask_array(lengths=True))")
    try:
        arr = np.asarray(X)
    except Exception as exc:  # noqa: BLE001 - anything unconvertible is a data error
        raise DataError(f"{what} cannot be converted to an array: {exc}") from None
    return arr, True


def not_two_d(what: str, shape: tuple) -> str:
    """The error for data that are not (n_samples, n_features)."""
    hint = (". Reshape your data with X.reshape(-1, 1) for a single feature or "
            "X.reshape(1, -1) for a single sample") if len(shape) == 1 else ""
    return (f"{what} must be 2-D (n_samples, n_features); got {len(shape)}-D with shape "
            f"{tuple(shape)}{hint}")


def _check_dtype(dtype: np.dtype, what: str) -> np.dtype:
    if dtype.kind == "f":
        return np.dtype(np.float32) if dtype.itemsize <= 4 else np.dtype(np.float64)
    if dtype.kind in "iub":
        return np.dtype(np.float64)
    raise DataError(
        f"{what} has dtype {dtype}; daskem needs numbers (float32, float64, integers or "
        "booleans)")


def in_memory_chunks(arr, dtype: np.dtype, chunk_rows: int | None = None) -> da.Array:
    """An in-memory array (NumPy, or sparse CSR) as a dask array of row-chunks of about
    ``DEFAULT_CHUNK_BYTES`` once dense (or ``chunk_rows`` rows)."""
    if scipy.sparse.issparse(arr):
        arr = arr.astype(dtype)
    else:
        arr = np.asarray(arr, dtype=dtype)
    rows = chunk_rows or max(1, DEFAULT_CHUNK_BYTES // max(arr.shape[1] * dtype.itemsize, 1))
    return da.from_array(arr, chunks=(min(rows, max(arr.shape[0], 1)), -1), asarray=False)


def as_chunked(X, sample_weight=None, *, chunk_rows: int | None = None, what: str = "X",
               persist_memory: bool = True) -> ChunkedData:
    """Check ``X`` (and ``sample_weight``) and cut it into row-chunks.

    NumPy input is cut into chunks of about 32 MiB (or ``chunk_rows`` rows) and persisted
    once, so that a distributed scheduler receives it once rather than every iteration.
    In-memory data that make a single chunk stay here and every pass over them runs in
    this process: one task per pass gains nothing from a cluster, and shipping it there
    costs a pass about 25 ms of scheduling and transfer (``scripts/bench_overhead.py``).
    The result is the same computation on the same chunk, with one BLAS thread as on a
    worker.
    """
    if is_row_reader(X):
        return _reader_chunked(X, sample_weight, chunk_rows, what)
    arr, from_memory = _as_dask(X, what)
    if arr.ndim != 2:
        raise DataError(not_two_d(what, arr.shape))
    dtype = _check_dtype(arr.dtype, what)
    if from_memory:
        arr = in_memory_chunks(arr, dtype, chunk_rows)
    else:
        if arr.dtype != dtype:
            arr = arr.astype(dtype)
        if any(np.isnan(c) for c in arr.chunks[0]):
            arr = arr.compute_chunk_sizes()
        target = {1: -1}
        if chunk_rows:
            target[0] = chunk_rows
        if arr.numblocks[1] > 1 or chunk_rows:
            arr = arr.rechunk(target)
    n_samples, n_features = arr.shape
    if n_samples == 0:
        raise DataError(f"{what} has 0 samples")
    if n_features == 0:
        raise DataError(f"{what} has 0 features")
    weights = None
    if sample_weight is not None:
        weights = _as_weights(sample_weight, n_samples, arr.chunks[0])
    local = from_memory and arr.numblocks[0] == 1
    if from_memory and persist_memory and not local:
        arr = arr.persist()
        weights = weights.persist() if weights is not None else None
    return ChunkedData(arr, weights, from_memory, local=local)


def _reader_chunked(reader, sample_weight, chunk_rows, what) -> ChunkedData:
    if len(reader.shape) != 2:
        raise DataError(not_two_d(what, reader.shape))
    _check_dtype(np.dtype(reader.dtype), what)
    if reader.shape[0] == 0:
        raise DataError(f"{what} has 0 samples")
    array = reader.to_dask()
    weights = None
    if sample_weight is not None:
        weights = _as_weights(sample_weight, reader.shape[0], array.chunks[0])
    return ChunkedData(array, weights, False, reader=reader, task_rows=chunk_rows)


def _as_weights(sample_weight, n_samples: int, row_chunks) -> da.Array:
    if np.isscalar(sample_weight):
        sample_weight = np.full(n_samples, float(sample_weight))
    if isinstance(sample_weight, da.Array):
        w = sample_weight
    else:
        w = np.asarray(sample_weight)
        if w.dtype.kind not in "iubf":
            raise DataError(f"sample_weight has dtype {w.dtype}; expected numbers")
        w = da.from_array(w.astype(np.float64))
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise DataError(f"sample_weight must have shape ({n_samples},); got {w.shape}")
    return w.astype(np.float64).rechunk((row_chunks,))


def summarise(data: ChunkedData, random_state, sample_size: int, *,
              split_every: int = DEFAULT_SPLIT_EVERY, marginalize: bool = False) -> Summary:
    """The one pass every fit starts with; raises :class:`DataError` on bad values.

    ``marginalize``: NaN is a missing value (``missing="marginalize"``), only ±inf is bad.
    """
    (seed,) = spawn_seeds(random_state, 1)
    probability = min(1.0, sample_size / max(data.n_samples, 1))
    summary = data.map_reduce(summarise_chunk, SampleRequest(seed, probability, marginalize),
                              phase="summary", split_every=split_every)
    check_summary(data, summary, marginalize)
    return summary


def check_summary(data: ChunkedData, summary: Summary, marginalize: bool = False) -> None:
    if summary.n_nonfinite:
        row = summary.first_nonfinite_row
        what = "infinite value(s)" if marginalize else "non-finite value(s) (NaN or inf)"
        hint = ("" if marginalize else " (or fit with missing='marginalize', which treats NaN "
                "as missing)")
        raise DataError(
            f"X contains {summary.n_nonfinite} {what}; the first "
            f"is in row {row} (chunk {data.chunk_of_row(row)}). Remove or impute them "
            f"first{hint}.")
    if summary.n_missing:
        if summary.n_empty >= summary.n_samples:
            raise DataError("every row of X is missing all its features")
        unobserved = np.flatnonzero(summary.n_observed == 0)
        if unobserved.size:
            raise DataError(f"X has no observed value in feature(s) "
                            f"{', '.join(map(str, unobserved[:10]))}: a feature that is "
                            "always missing cannot be modelled; leave it out")
    if summary.n_bad_weights:
        row = summary.first_bad_weight_row
        raise DataError(
            f"sample_weight has {summary.n_bad_weights} negative or non-finite value(s); "
            f"the first is at row {row}")
    if not summary.weight_sum > 0:
        raise DataError("sample_weight sums to zero; at least one sample needs a positive weight")
    check_variation(data.dtype, summary)


def check_variation(dtype: np.dtype, summary: Summary) -> None:
    """Refuse data in which no feature varies; warn about the features that do not.

    A feature is constant when its standard deviation is within two units of the dtype's
    resolution at the feature's magnitude: float32 data at an offset of 1e6 keep nothing
    of a spread of 1e-3 (their spacing there is 0.06).
    """
    std = np.sqrt(summary.variance)
    resolution = np.spacing(np.abs(summary.mean).astype(dtype)).astype(np.float64)
    constant = np.flatnonzero(std <= 2 * resolution)
    if constant.size == 0:
        return
    hint = ""
    if dtype == np.float32 and np.any(np.abs(summary.mean[constant]) > 1e3):
        hint = ("; float32 cannot hold small variations far from zero: store the data as "
                "float64, or subtract an offset first")
    if constant.size == len(std):
        raise DataError(f"X has no variation: all {len(std)} features are constant "
                        f"(feature 0: mean {summary.mean[0]:.6g}, std {std[0]:.3g}){hint}")
    shown = ", ".join(map(str, constant[:10])) + (" ..." if constant.size > 10 else "")
    warnings.warn(f"{constant.size} feature(s) of X are constant (columns {shown}); they "
                  f"carry no information for clustering{hint}", DataWarning, stacklevel=4)

