"""How a fitted model is written to a run store and read back: the one model record.

Every model kind is described once, in :data:`KINDS`: its estimator class, its objective
(name, attribute, direction) and its parameter arrays, named as the estimator's fitted
attributes without the trailing underscore. Checkpoints, the ``model/`` group and the
candidates of a selection all use these names::

    gmm     weights, means, covariances, precisions_cholesky   (lower bound, maximised)
    kmeans  cluster_centers                                    (inertia, minimised)

``model/`` holds the arrays and, as attributes, the kind, the estimator's parameters, the
fit's numbers (iterations, convergence, re-seedings, restarts, passes), the feature names,
the standardisation the model lives in (see :func:`standardization_attrs`) and, as the
array ``stats``, the statistics of its last M-step. ``history/`` holds the objective per
iteration and the seconds per pass. A record read back gives an estimator equal to the one
written in every fitted attribute except the per-sample ``labels_`` (the job writes those
to ``outputs/``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from daskem.engine.em import EMState
from daskem.errors import RunStoreError
from daskem.kernels.covariance import covariance
from daskem.kernels.mstep import GaussianParams, KMeansParams, Reseed
from daskem.kernels.stats import pack_stats, unpack_stats


class ModelRecordError(RunStoreError):
    """A run store holds no model, or one this daskem cannot read."""


@dataclass(frozen=True)
class ModelKind:
    """One model kind: what its estimator is, what it optimises, what its arrays are."""

    name: str  # as in the config's model.kind
    estimator_name: str  # the class in daskem.estimators
    objective: str  # for people: "lower bound", "inertia"
    objective_attr: str  # the fitted attribute: lower_bound_ -> "lower_bound"
    history_attr: str  # the objective per iteration: lower_bounds_, inertia_history_
    maximize: bool
    arrays: tuple[str, ...]  # parameter arrays (fitted attributes without the "_")
    outputs: tuple[str, ...]  # per-sample outputs a job can write
    # Config keys (model.*) whose estimator parameter has another name.
    param_names: dict = field(default_factory=dict)

    def estimator_class(self):
        import daskem.estimators  # scikit-learn: only when an estimator is made

        return getattr(daskem.estimators, self.estimator_name)

    def best(self, values) -> int:
        """Index of the best objective among ``values`` (NaN: not a candidate)."""
        values = np.asarray(values, dtype=np.float64)
        return int(np.nanargmax(values) if self.maximize else np.nanargmin(values))


GMM = ModelKind("gmm", "GaussianMixture", "lower bound", "lower_bound", "lower_bounds_",
                maximize=True, arrays=("weights", "means", "covariances",
                                       "precisions_cholesky"),
                outputs=("labels", "responsibilities", "log_likelihood", "imputed"),
                param_names={"init": "init_params"})
KMEANS = ModelKind("kmeans", "KMeans", "inertia", "inertia", "inertia_history_",
                   maximize=False, arrays=("cluster_centers",), outputs=("labels",),
                   param_names={"n_components": "n_clusters"})
KINDS = {kind.name: kind for kind in (GMM, KMEANS)}
# Array names of run stores written before the names were unified.
_OLD_NAMES = {"centers": "cluster_centers"}


def kind_named(name: str) -> ModelKind:
    try:
        return KINDS[name]
    except KeyError:
        raise ModelRecordError(f"unknown model kind {name!r} (daskem knows "
                               f"{', '.join(KINDS)})") from None


def kind_of(estimator) -> ModelKind:
    """The kind of a daskem estimator (or of an EM state's parameters)."""
    if isinstance(estimator, GaussianParams):
        return GMM
    if isinstance(estimator, KMeansParams):
        return KMEANS
    for kind in KINDS.values():
        if isinstance(estimator, kind.estimator_class()):
            return kind
    raise ModelRecordError(f"{type(estimator).__name__} is not a daskem estimator")


# ------------------------------------------------------------------ parameters


def params_arrays(params: GaussianParams | KMeansParams) -> dict[str, np.ndarray]:
    """An EM state's parameters as named arrays."""
    return {name: np.asarray(getattr(params, name)) for name in kind_of(params).arrays}


def params_from(arrays: dict[str, np.ndarray], covariance_type: str | None
                ) -> GaussianParams | KMeansParams:
    """Inverse of :func:`params_arrays` (``covariance_type``: ``None`` for k-means)."""
    arrays = {_OLD_NAMES.get(name, name): value for name, value in arrays.items()}
    if covariance_type is None:
        return KMeansParams(*(arrays[name] for name in KMEANS.arrays))
    return GaussianParams(covariance_type, *(arrays[name] for name in GMM.arrays))


def stored_params(names) -> list[str]:
    """The parameter arrays among the stored ``names``, in the order of their kind."""
    names = set(names)
    if names & {"cluster_centers", *_OLD_NAMES}:
        return [n for n in ("cluster_centers", *_OLD_NAMES) if n in names][:1]
    return [n for n in GMM.arrays if n in names]


# Dimension names of the stored arrays (so that xarray opens every group), by array name
# and number of dimensions: covariances of a tied mixture have no component dimension, of a
# spherical or fixed one no feature dimension.
_DIMS = {"weights": {1: ("component",)},
         "means": {2: ("component", "feature")},
         "cluster_centers": {2: ("cluster", "feature")},
         "covariances": {3: ("component", "feature", "feature_j"), 2: None, 1: ("component",)},
         "objective": {1: ("iteration",)},
         "seconds": {1: ("pass",)}}
_DIMS["precisions_cholesky"] = _DIMS["covariances"]


def dimension_names(name: str, shape: tuple, covariance_type: str | None = None
                    ) -> tuple[str, ...]:
    """The dimension names an array of the run store is written with."""
    if name in ("covariances", "precisions_cholesky") and len(shape) == 2:
        shared = covariance_type is not None and covariance(covariance_type).shared
        return ("feature", "feature_j") if shared else ("component", "feature")
    known = _DIMS.get(name, {}).get(len(shape))
    return known if known else tuple(f"{name}_{i}" for i in range(len(shape)))


def write_arrays(group, arrays: dict[str, np.ndarray], covariance_type: str | None = None
                 ) -> None:
    """Arrays into a Zarr group, each with its dimension names."""
    for name, value in arrays.items():
        value = np.asarray(value)
        group.create_array(name, data=value,
                           dimension_names=dimension_names(name, value.shape, covariance_type))


def stats_arrays(prefix: str, items) -> dict[str, np.ndarray]:
    """``(shift, Stats)`` pairs as one array named ``prefix`` (none if there are none)."""
    return {prefix: pack_stats(list(items))} if items else {}


def stats_from(prefix: str, arrays: dict[str, np.ndarray]) -> tuple:
    """Inverse of :func:`stats_arrays` (``()`` if there are none)."""
    return unpack_stats(arrays[prefix]) if prefix in arrays else ()


def events_attrs(events) -> list:
    """``(iteration, Reseed)`` pairs as JSON lists."""
    return [[int(it), int(e.component), int(e.row), str(e.reason)] for it, e in events]


def events_from(items) -> tuple:
    return tuple((int(it), Reseed(int(c), int(r), str(reason))) for it, c, r, reason in items)


# ------------------------------------------------------------------ standardisation


def standardization_attrs(pair: tuple[np.ndarray, np.ndarray] | None) -> dict | None:
    """The per-feature ``(mean, scale)`` a model was fitted after, as JSON attributes."""
    if pair is None:
        return None
    mean, scale = pair
    return {"mean": np.asarray(mean).tolist(), "scale": np.asarray(scale).tolist()}


def standardization_from(attrs: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Inverse of :func:`standardization_attrs`."""
    if not attrs:
        return None
    return np.asarray(attrs["mean"], dtype=np.float64), np.asarray(attrs["scale"],
                                                                   dtype=np.float64)


# ------------------------------------------------------------------ the record


def _plain(value):
    """Parameters and records as JSON: NumPy scalars made plain numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value.item() if isinstance(value, np.generic) else value


@dataclass
class ModelRecord:
    """A fitted model as the run store keeps it."""

    kind: ModelKind
    arrays: dict[str, np.ndarray]
    attrs: dict
    history: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def objective(self) -> float:
        return float(self.attrs[self.kind.objective_attr])

    @property
    def standardize(self) -> tuple[np.ndarray, np.ndarray] | None:
        return standardization_from(self.attrs.get("standardize"))

    @property
    def n_components(self) -> int:
        params = self.attrs["params"]
        return int(params.get("n_clusters", params.get("n_components")))

    @classmethod
    def of(cls, estimator, *, features: list[str] | None = None,
           standardize: tuple[np.ndarray, np.ndarray] | None = None,
           rows_end: int | None = None) -> ModelRecord:
        """The record of a fitted estimator (``features``: the data's feature names;
        ``standardize``: the scaling it was fitted after; ``rows_end``: the source rows
        0 to ``rows_end`` its statistics cover)."""
        kind = kind_of(estimator)
        estimator._check_fitted(f"{kind.arrays[0]}_")
        arrays = {name: np.asarray(getattr(estimator, f"{name}_")) for name in kind.arrays}
        # The statistics of the last M-step: a later warm start with ``rows: new`` holds
        # them fixed.
        fit_stats = getattr(estimator, "_fit_stats", ())
        arrays.update(stats_arrays("stats", (fit_stats,) if fit_stats else ()))
        params = {k: v for k, v in estimator.get_params().items()
                  if isinstance(v, (int, float, str, bool, type(None)))}
        names = getattr(estimator, "feature_names_in_", None)
        attrs = {
            "kind": kind.name,
            kind.objective_attr: float(getattr(estimator, f"{kind.objective_attr}_")),
            "params": _plain(params),
            "n_features": int(estimator.n_features_in_),
            "features": list(features) if features is not None else (
                [str(n) for n in names] if names is not None else
                [f"feature_{i}" for i in range(estimator.n_features_in_)]),
            "feature_names_in": None if names is None else [str(n) for n in names],
            "n_iter": int(estimator.n_iter_),
            "converged": bool(estimator.converged_),
            "reseeds": events_attrs(estimator.reseeds_),
            "restarts": _plain(getattr(estimator, "restarts_", [])),
            "passes": _plain(getattr(estimator, "passes_", {})),
            "dtype": str(arrays[kind.arrays[0]].dtype),
            "n_empty_rows": int(getattr(estimator, "n_empty_rows_", 0)),
            "n_missing_values": int(getattr(estimator, "n_missing_values_", 0)),
        }
        if standardize is not None:
            attrs["standardize"] = standardization_attrs(standardize)
        if rows_end is not None:
            attrs["rows_end"] = int(rows_end)
        history = {"objective": np.asarray(getattr(estimator, kind.history_attr),
                                           dtype=np.float64)}
        return cls(kind, arrays, attrs, history)

    def estimator(self):
        """The fitted estimator this record describes."""
        kind, attrs = self.kind, self.attrs
        arrays = {_OLD_NAMES.get(name, name): value for name, value in self.arrays.items()}
        est = kind.estimator_class()(**attrs["params"])
        ctype = attrs["params"].get("covariance_type") if kind is GMM else None
        params = params_from({n: arrays[n] for n in kind.arrays}, ctype)
        last = stats_from("stats", arrays)
        objectives = tuple(float(v) for v in self.history.get("objective", ()))
        state = EMState(params, int(attrs["n_iter"]), bool(attrs["converged"]), objectives,
                        events=events_from(attrs.get("reseeds", [])),
                        last=last[0] if last else ())
        dtype = np.dtype(attrs.get("dtype", arrays[kind.arrays[0]].dtype))
        if kind is KMEANS:
            est._set_state(state, float(attrs["inertia"]), int(attrs["n_features"]), dtype)
        else:
            est._set_state(state, int(attrs["n_features"]), dtype)
            # The stored value, not the history's last (they differ for a model fitted
            # with ``rows: new`` and for records of earlier daskem without a history).
            est.lower_bound_ = float(attrs["lower_bound"])
        est.restarts_ = list(attrs.get("restarts", []))
        # (records of earlier daskem: no missing values then)
        est.n_empty_rows_ = int(attrs.get("n_empty_rows", 0))
        est.n_missing_values_ = int(attrs.get("n_missing_values", 0))
        est._set_passes(attrs.get("passes", {}))
        if attrs.get("feature_names_in") is not None:
            est.feature_names_in_ = np.asarray(attrs["feature_names_in"], dtype=object)
        return est


# ------------------------------------------------------------------ in a run store


def write_model(store, record: ModelRecord) -> None:
    """Replace the run store's ``model/`` and ``history/`` groups with ``record``."""
    with store.writing("the model"):
        root = store.group()
        for name in ("model", "history"):
            if name in root:
                del root[name]
        model = root.create_group("model")
        write_arrays(model, record.arrays, record.attrs["params"].get("covariance_type"))
        model.attrs.update({**record.attrs, "kind": record.kind.name})
        hist = root.create_group("history")
        write_arrays(hist, {k: np.asarray(v, dtype=np.float64)
                            for k, v in record.history.items()})



def read_history(store) -> dict[str, np.ndarray]:
    """``history/``: the objective per iteration, the seconds per pass (empty if none)."""
    try:
        hist = store.group("r")["history"]
    except KeyError:
        return {}
    return {name: np.asarray(arr[...]) for name, arr in hist.arrays()}


def read_model(store) -> ModelRecord:
    """The model a run store holds (an error naming the store's status if none)."""
    try:
        model = store.group("r")["model"]
    except KeyError:
        raise ModelRecordError(f"{store.path} holds no fitted model yet (status "
                               f"{store.attrs.get('status')!r})") from None
    attrs = dict(model.attrs)
    kind = kind_named(attrs.get("kind", ""))
    stored = {_OLD_NAMES.get(name, name): np.asarray(arr[...]) for name, arr in model.arrays()}
    order = [n for n in kind.arrays if n in stored] + sorted(set(stored) - set(kind.arrays))
    return ModelRecord(kind, {n: stored[n] for n in order}, attrs, read_history(store))


def load_estimator(store):
    """The fitted estimator a run store holds, and its model attributes."""
    record = read_model(store)
    return record.estimator(), record.attrs


# ------------------------------------------------------------------ public: save and load


def save(estimator, path: str, *, storage_options: dict | None = None,
         overwrite: bool = False) -> None:
    """Write a fitted daskem estimator to ``path`` (a local path or fsspec URL) as a run
    store holding its model: the format ``daskem run`` writes, so :func:`load`,
    ``daskem inspect``, ``daskem predict`` and ``daskem report`` read either.

    ``overwrite``: replace what is at ``path``; otherwise an existing store is refused.
    """
    from daskem.store import RunStore

    record = ModelRecord.of(estimator)
    store = RunStore(str(path), storage_options)
    if store.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    store.create(None, None, {})
    write_model(store, record)
    store.set_status("complete", saved_by="daskem.save")


def load(path: str, *, storage_options: dict | None = None):
    """The fitted estimator of a run store (``daskem run``'s, or :func:`save`'s).

    A model fitted on standardised features (``data.standardize: true``) lives in that
    space: it comes back as a scikit-learn ``Pipeline`` of a ``StandardScaler`` holding the
    stored mean and scale and the estimator (``pipeline[-1]``), so that ``predict`` takes
    rows as the data source holds them.
    """
    from daskem.store import RunStore, no_run_store

    store = RunStore(str(path), storage_options)
    if not store.exists():
        raise no_run_store(str(path))
    record = read_model(store)
    estimator = record.estimator()
    if record.standardize is None:
        return estimator
    from daskem.estimators.base import standardized

    mean, scale = record.standardize
    return standardized(estimator, mean, scale, int(record.attrs.get("rows_end") or 0))


# ------------------------------------------------------------------ selection


def write_selection(store, selection) -> None:
    """Every candidate of a model selection: its parameters, numbers and objectives."""
    with store.writing("the selection"):
        root = store.group()
        if "selection" in root:
            del root["selection"]
        group = root.create_group("selection")
        table = [_plain(row) for row in selection.table()]
        for i, (cand, row) in enumerate(zip(selection.candidates, table, strict=True)):
            sub = group.create_group(f"candidate_{i:03d}")
            record = ModelRecord.of(cand.estimator)
            write_arrays(sub, {name: record.arrays[name] for name in record.kind.arrays},
                         cand.estimator.covariance_type)
            sub.attrs.update({**row, "objectives": record.history["objective"].tolist()})
        group.attrs.update({"criterion": selection.criterion, "chosen": selection.best_index,
                            "table": table})
        # The table's numeric columns as arrays over the candidates (xarray opens them).
        for column in ("n_components", "log_likelihood", "n_parameters", "bic", "aic",
                       "n_iter", "converged", "chosen"):
            group.create_array(column, data=np.asarray([row[column] for row in table]),
                               dimension_names=("candidate",))


def read_selection(store) -> dict | None:
    """``{"criterion", "chosen", "table", "candidates": [(arrays, attrs), ...]}`` of a
    selection run, or ``None`` for a run that fitted one model."""
    try:
        group = store.group("r")["selection"]
    except KeyError:
        return None
    attrs = dict(group.attrs)
    names = sorted(name for name, _ in group.groups())
    attrs["candidates"] = [({k: np.asarray(a[...]) for k, a in group[n].arrays()},
                            dict(group[n].attrs)) for n in names]
    return attrs
