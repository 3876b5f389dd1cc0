"""What both estimators share: parameters, argument checks, per-sample outputs."""

from __future__ import annotations

import functools
import numbers

import numpy as np
import scipy.sparse
from sklearn.base import BaseEstimator
from sklearn.utils.validation import validate_data

from daskem.engine.data import (
    ChunkedData,
    _as_dask,
    _check_dtype,
    as_chunked,
    in_memory_chunks,
    is_row_reader,
    not_two_d,
    summarise,
)
from daskem.engine.em import WithFixed
from daskem.engine.reduce import dense_chunk, span
from daskem.errors import DataError, NotFittedError, ParameterError
from daskem.kernels.summary import Summary

# What a NaN is: an error naming its row, or a missing value (see daskem.kernels.marginal).
MISSING = ("error", "marginalize")


class DaskemEstimator(BaseEstimator):
    """scikit-learn's ``BaseEstimator`` (``get_params``/``set_params``, ``clone``, the
    repr, tags, feature-name checks) and what daskem's estimators add to it."""

    @property
    def _marginalize(self) -> bool:
        return self.missing == "marginalize"

    def _check_missing(self, init_name: str, init, default: str) -> None:
        """``missing`` is valid, and the init ``init_name`` works with it (k-means|| does
        not take missing values)."""
        check_choice("missing", self.missing, MISSING)
        if self._marginalize and isinstance(init, str) and init == "k-means||":
            raise ParameterError(f"{init_name}='k-means||' is not available with "
                                 f"missing='marginalize'; use {default!r} (the default)")

    def _set_passes(self, passes: dict) -> None:
        """``passes_``: the full reads of the data the fit made, by phase (summary,
        seeding, initialisation, em, score); ``n_passes_``: their total."""
        self.passes_ = dict(passes)
        self.n_passes_ = int(sum(passes.values()))

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                "appropriate arguments before using this estimator.")


def check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ParameterError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if value < minimum:
        raise ParameterError(f"{name} must be an integer >= {minimum}; got {value}")
    return int(value)


def check_float(name: str, value, minimum: float, *, strict: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ParameterError(f"{name} must be a finite number; got {value!r}")
    if value < minimum or (strict and value == minimum):
        sign = ">" if strict else ">="
        raise ParameterError(f"{name} must be {sign} {minimum}; got {value}")
    return float(value)


def check_choice(name: str, value, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ParameterError(
            f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}")
    return value


def check_array_shape(name: str, value, shape: tuple) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != shape:
        raise ParameterError(
            f"The parameter '{name}' should have the shape of {shape}, but got {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ParameterError(f"The parameter '{name}' contains non-finite values")
    return arr


def master_rng(random_state) -> np.random.Generator:
    """A Generator from an int, ``None``, a ``Generator`` or a legacy ``RandomState``."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    if isinstance(random_state, np.random.RandomState):
        return np.random.default_rng(random_state.randint(0, 2**31 - 1))
    if random_state is None or isinstance(random_state, numbers.Integral):
        return np.random.default_rng(random_state)
    raise ParameterError(f"random_state must be None, an int or a Generator; "
                         f"got {random_state!r}")


def is_lazy(X) -> bool:
    """Data that stay where they are: a dask array (or an xarray object over one), another
    dask collection, or a row reader. Everything else is in memory."""
    if is_row_reader(X) or hasattr(X, "__dask_graph__"):
        return True
    data = getattr(X, "data", None)
    return hasattr(X, "dims") and hasattr(data, "__dask_graph__")


def check_input(estimator, X, *, reset: bool, sparse: bool = False):
    """``X`` checked at the estimator's door, as scikit-learn's estimators check theirs.

    ``reset=True`` (``fit``) records ``n_features_in_`` and, for a DataFrame,
    ``feature_names_in_``; ``reset=False`` checks ``X`` against them. In-memory input goes
    through scikit-learn's ``check_array``: lists, DataFrames, object arrays of numbers
    become float arrays (float32 and float16 kept for daskem's own policy), sparse input
    becomes CSR where the estimator takes it and is refused with scikit-learn's message
    where not; complex, empty and 1-D input get scikit-learn's errors. Non-finite values
    pass here: the first pass over the data refuses them, naming the row. Lazy input (see
    :func:`is_lazy`) is not read here; only its shape and names are checked.
    """
    if X is None:
        raise DataError("X is None; expected an array of shape (n_samples, n_features)")
    lazy = is_lazy(X)
    shape = np.shape(X if lazy or hasattr(X, "ndim") else np.asarray(X))
    if len(shape) != 2:
        raise DataError(not_two_d("X", shape))
    try:
        if lazy:
            validate_data(estimator, X, reset=reset, skip_check_array=True)
            return X
        return validate_data(estimator, X, reset=reset,
                             accept_sparse="csr" if sparse else False,
                             dtype=[np.float64, np.float32, np.float16],
                             ensure_all_finite=False)
    except ValueError as exc:
        # scikit-learn's words, in daskem's class (a ValueError); its TypeErrors (sparse
        # input refused, an object that is not a number) stay TypeErrors, as there.
        raise DataError(str(exc)) from None


def _on_dense(func, out_dtype, x, *args):
    out = func(dense_chunk(x), *args)
    return out.astype(out_dtype, copy=False) if out_dtype is not None else out


def prepare_rows(X, n_features: int, allow_nan: bool = False):
    """``X`` for a per-sample output: an in-memory array or a dask array (rows chunked);
    ``allow_nan``: NaN is a missing value (``missing="marginalize"``).

    Returns ``(array, is_dask)``; a sparse matrix in memory becomes a dask array of
    sparse row-chunks (each made dense in its own task).
    """
    arr, from_memory = _as_dask(X, "X")
    if arr.ndim != 2:
        raise DataError(not_two_d("X", arr.shape))
    if arr.shape[1] != n_features:
        raise DataError(f"X has {arr.shape[1]} features, but the model was fitted with "
                        f"{n_features} features")
    dtype = _check_dtype(arr.dtype, "X")
    if from_memory and not scipy.sparse.issparse(arr):
        arr = np.asarray(arr, dtype=dtype)
        finite = np.isfinite(arr)
        if not (np.all(finite) or allow_nan and np.all(finite | np.isnan(arr))):
            raise DataError("X contains infinite values" if allow_nan else
                            "X contains non-finite values (NaN or inf)")
        return arr, False
    if from_memory:
        arr = in_memory_chunks(arr, dtype)
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if arr.numblocks[1] > 1:
        arr = arr.rechunk({1: -1})
    return arr, True


def per_sample(X, n_features: int, func, *args, dtype, n_columns: int | None = None,
               allow_nan: bool = False):
    """``func(x, *args)`` for every row-chunk: lazy for a dask input, eager for in-memory
    input (sparse input chunk by chunk).

    ``n_columns=None`` means ``func`` returns one value per row, ``"same"`` as many
    columns as ``X``. A floating ``dtype``
    means "the data's": float32 data give float32 results, as in scikit-learn.
    """
    arr, is_dask = prepare_rows(X, n_features, allow_nan)
    out_dtype = arr.dtype if np.dtype(dtype).kind == "f" else np.dtype(dtype)
    if not is_dask:
        return _on_dense(func, out_dtype, arr, *args)
    func = functools.partial(_on_dense, func, out_dtype)
    if n_columns == "same":
        out = arr.map_blocks(func, *args, dtype=out_dtype, meta=np.empty((0, 0), out_dtype))
    elif n_columns is None:
        out = arr.map_blocks(func, *args, dtype=out_dtype, drop_axis=1,
                             meta=np.empty(0, out_dtype))
    else:
        out = arr.map_blocks(func, *args, dtype=out_dtype,
                             chunks=(arr.chunks[0], (n_columns,)),
                             meta=np.empty((0, 0), out_dtype))
    return out if is_lazy(X) else out.compute()


# When the M-step runs: after every pass over the data, or after every block of chunks.
UPDATES = ("batch", "incremental")
DEFAULT_BLOCKS = 16


def blocks_of(update: str, n_blocks: int) -> int:
    """The engine's ``n_blocks`` for an ``update`` setting (1: batch EM)."""
    return int(n_blocks) if update == "incremental" else 1


def batch_rows(estimator, X, sample_weight, n_features: int | None):
    """A ``partial_fit`` batch as row-chunks, its feature count checked against the
    fitted model's (``n_features``; ``None`` before the first batch)."""
    data = as_chunked(X, sample_weight, chunk_rows=estimator.chunk_rows)
    if n_features is not None and data.n_features != n_features:
        raise DataError(f"X has {data.n_features} features, but {type(estimator).__name__} "
                        f"was fitted with {n_features} features")
    return data


def with_fixed(estimator, family):
    """``family``, or, when the estimator was given the statistics of rows fitted before
    (``_fixed_stats``, ``(shift, Stats)``: what ``daskem run`` does for a warm start that
    reads only new rows), a family whose every M-step also counts those rows."""
    fixed = getattr(estimator, "_fixed_stats", None)
    if not fixed:
        return family
    return WithFixed(family, *fixed)


def restart_records(states) -> list[dict]:
    """``restarts_``: per restart, whether it ran over the data and, if not, why."""
    return [{"restart": i, "ran": not s.dropped, "n_iter": s.n_iter,
             "objective": s.objectives[-1] if s.objectives else None,
             "dropped": s.dropped or None} for i, s in enumerate(states)]


def default_sample_size(n_components: int) -> int:
    """Rows of the first pass's sample when ``sample_size`` is not given.

    Measured on the anisotropic blobs of scripts/bench_passes.py (120,000 rows, d = 10,
    K = 8, ``n_init=3``): with 10,000 rows the restart chosen on the sample ended in a
    worse optimum in 2 of 5 seeds (mean log-likelihood -20.03 against -19.44), with 20,000
    in 1 of 6, with 30,000 in none of 6 (k-means likewise: 1 of 6 at 20,000, none at
    30,000).
    """
    return max(30_000, 100 * n_components)


def start_fit(X, sample_weight, *, n_components: int, what: str, chunk_rows, sample_size,
              rng: np.random.Generator, split_every: int,
              missing: str = "error") -> tuple[ChunkedData, Summary]:
    """Check the data, make the row-chunks and run the summary pass every fit starts with
    (``missing="marginalize"``: NaN is a missing value, not an error)."""
    data = as_chunked(X, sample_weight, chunk_rows=chunk_rows)
    if data.n_samples < n_components:
        raise DataError(f"n_samples={data.n_samples} should be >= {what}={n_components}")
    if data.n_samples < 2:
        raise DataError("n_samples=1: one sample has no variation to fit (daskem refuses data "
                        "in which no feature varies)")
    if sample_size is None:
        sample_size = default_sample_size(n_components)
    with span("summary"):
        summary = summarise(data, int(rng.integers(2**62)), sample_size,
                            split_every=split_every, marginalize=missing == "marginalize")
    return data, summary


def standardized(estimator, mean: np.ndarray, scale: np.ndarray, n_samples: int):
    """``estimator`` behind a ``StandardScaler`` that holds ``mean`` and ``scale``: a model
    fitted on standardised features, taking rows as the data source holds them."""
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler()
    scaler.mean_, scaler.scale_, scaler.var_ = mean, scale, scale ** 2
    scaler.n_features_in_ = len(mean)
    scaler.n_samples_seen_ = n_samples
    return Pipeline([("standardize", scaler), ("model", estimator)])
