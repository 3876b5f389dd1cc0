"""What both estimators share: parameters, argument checks, per-sample outputs."""

from __future__ import annotations

import inspect
import numbers

import numpy as np

from daskem.engine.data import ChunkedData, _as_dask, _check_dtype, as_chunked, summarise
from daskem.engine.em import WithFixed
from daskem.engine.reduce import span
from daskem.errors import DataError, NotFittedError, ParameterError
from daskem.kernels.summary import Summary


class ParamsMixin:
    """scikit-learn's ``get_params`` / ``set_params`` protocol, so ``clone`` works."""

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [p.name for p in sig.parameters.values()
                if p.name != "self" and p.kind != p.VAR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for key, value in params.items():
            if key not in valid:
                raise ParameterError(
                    f"invalid parameter {key!r} for {type(self).__name__}; valid: {valid}")
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in
                    inspect.signature(type(self).__init__).parameters.values()}
        changed = []
        for name, value in self.get_params().items():
            default = defaults.get(name)
            same = value is default or (not isinstance(value, np.ndarray)
                                        and not isinstance(default, np.ndarray)
                                        and value == default)
            if not same:
                changed.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(changed)})"

    def _set_passes(self, passes: dict) -> None:
        """``passes_``: the full reads of the data the fit made, by phase (summary,
        seeding, initialisation, em, score); ``n_passes_``: their total."""
        self.passes_ = dict(passes)
        self.n_passes_ = int(sum(passes.values()))

    def _check_fitted(self, attribute: str) -> None:
        if not hasattr(self, attribute):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet; call 'fit' first")


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


def prepare_rows(X, n_features: int):
    """``X`` for a per-sample output: an in-memory array or a dask array (rows chunked).

    Returns ``(array, is_dask)``.
    """
    arr, from_memory = _as_dask(X, "X")
    if arr.ndim != 2:
        raise DataError(f"X must be 2-D (n_samples, n_features); got {arr.ndim}-D "
                        f"with shape {arr.shape}")
    if arr.shape[1] != n_features:
        raise DataError(f"X has {arr.shape[1]} features, but the model was fitted with "
                        f"{n_features} features")
    dtype = _check_dtype(arr.dtype, "X")
    if from_memory:
        arr = np.asarray(arr, dtype=dtype)
        if not np.all(np.isfinite(arr)):
            raise DataError("X contains non-finite values (NaN or inf)")
        return arr, False
    if arr.dtype != dtype:
        arr = arr.astype(dtype)
    if arr.numblocks[1] > 1:
        arr = arr.rechunk({1: -1})
    return arr, True


def per_sample(X, n_features: int, func, *args, dtype, n_columns: int | None = None):
    """``func(x, *args)`` for every row-chunk: lazy for a dask input, eager for NumPy.

    ``n_columns=None`` means ``func`` returns one value per row.
    """
    arr, is_dask = prepare_rows(X, n_features)
    if not is_dask:
        return func(arr, *args)
    if n_columns is None:
        return arr.map_blocks(func, *args, dtype=dtype, drop_axis=1)
    return arr.map_blocks(func, *args, dtype=dtype, chunks=(arr.chunks[0], (n_columns,)))



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
              rng: np.random.Generator, split_every: int) -> tuple[ChunkedData, Summary]:
    """Check the data, make the row-chunks and run the summary pass every fit starts with."""
    data = as_chunked(X, sample_weight, chunk_rows=chunk_rows)
    if data.n_samples < n_components:
        raise DataError(f"n_samples={data.n_samples} should be >= {what}={n_components}")
    if sample_size is None:
        sample_size = default_sample_size(n_components)
    with span("summary"):
        summary = summarise(data, int(rng.integers(2**62)), sample_size,
                            split_every=split_every)
    return data, summary
