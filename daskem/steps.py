"""The steps of a fit job, each a plain function; :func:`daskem.runner.run_job` and
``pipelines/fit.py`` call them in this order::

    prepare ─► (Lease, connect) ─► take_store ─► open_data ─► open_store ─► fit
      ─► save_model ─► write_job_outputs ─► done_message

The config maps to an estimator here (:func:`estimator_settings`): a model parameter the
config leaves out takes the estimator's default.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace

import numpy as np

from daskem.cluster import check_workers
from daskem.config import FromRun, RunConfig, stored_config
from daskem.errors import ConfigError, DataError, RunStoreError
from daskem.io.outputs import write_outputs
from daskem.io.source import Source, open_source
from daskem.kernels.covariance import covariance
from daskem.lease import Lease
from daskem.model import (
    ModelRecord,
    kind_named,
    read_model,
    write_model,
    write_selection,
)
from daskem.progress import Reporter
from daskem.stopping import Stopper
from daskem.store import RunStore, describe_changes, format_passes, model_checksum

# ------------------------------------------------------------------------ the estimator


def estimator_settings(config: RunConfig) -> dict:
    """The estimator parameters the config sets (the others keep the estimator's
    defaults), under the estimator's names."""
    m, kind = config.model, kind_named(config.model.kind)
    values = {k: v for k, v in m.model_dump(exclude={"kind"}).items() if v is not None
              and not isinstance(getattr(m, k), FromRun)}
    values.update({k: v for k, v in config.fit.model_dump(exclude={"persist"}).items()
                   if v is not None})
    if config.data.chunk_rows is not None:
        values["chunk_rows"] = config.data.chunk_rows
    if config.data.missing == "marginalize":
        values["missing"] = "marginalize"
    return {kind.param_names.get(k, k): v for k, v in values.items()}


def build_estimator(config: RunConfig, **warm):
    """The estimator a config describes (``warm``: the initial parameters of a warm start,
    see :func:`warm_start`)."""
    return kind_named(config.model.kind).estimator_class()(
        **{**estimator_settings(config), **warm})


def n_components(config: RunConfig) -> int:
    """The most components any model of this job has."""
    if config.select is not None:
        return max(config.select.n_components)
    params = build_estimator(config).get_params()
    return int(params.get("n_clusters", params.get("n_components")))


def fit_selection(config: RunConfig, rows, store: RunStore, reporter: Reporter):
    """Fit the config's grid of candidates in shared passes; report and return the choice."""
    from daskem.estimators.selection import grid, select_mixture

    sel = config.select
    settings = estimator_settings(config)
    for key in ("n_components", "covariance_type"):  # select's grid sets them
        settings.pop(key, None)
    cells = grid(sel.n_components, sel.covariance_types)
    reporter.info(f"selecting among {len(cells)} candidates ({len(sel.n_components)} sizes x "
                  f"{len(sel.covariance_types)} covariance types, "
                  f"{settings.get('n_init', 1)} restart(s) each) by {sel.criterion.upper()}")
    reporter.started = time.monotonic()
    passes: dict = {}
    max_iter, n_init = build_estimator(config).max_iter, settings.get("n_init", 1)
    reporter.event("job", store=config.run.store, kind="select", max_iter=max_iter,
                   estimator=f"model selection by {sel.criterion.upper()}",
                   objective="mean log-likelihood (on its own scale per candidate)",
                   candidates=[f"K={k} {ctype}" + (f" #{r}" if n_init > 1 else "")
                               for k, ctype in cells for r in range(n_init)])
    selection = select_mixture(
        rows, sel.n_components, sel.covariance_types, criterion=sel.criterion,
        checkpoint=store, passes=passes,
        callback=lambda n, states: reporter.iteration(n, states, "select", max_iter,
                                                      passes=passes), **settings)
    for line in selection.format().splitlines():
        reporter.info(line)
    best = selection.best
    reporter.info(f"chosen by {sel.criterion.upper()}: {best.n_components} components, "
                  f"{best.covariance_type} covariances", selection=selection.table())
    return selection


# ------------------------------------------------------------------------ warm starts


@dataclass(frozen=True)
class WarmModel:
    """The model of the run store a warm start begins from, read once per job."""

    path: str
    record: ModelRecord
    estimator: object  # the fitted KMeans or GaussianMixture
    checksum: str  # of its arrays: a resumed warm start must begin from the same model

    @property
    def attrs(self) -> dict:
        return self.record.attrs


def read_warm_model(config: RunConfig) -> WarmModel | None:
    """The model ``model.init.from_run`` names, checked to be of the right kind and space
    (``None`` without a warm start)."""
    init = config.model.init
    if not isinstance(init, FromRun):
        return None
    store = RunStore(init.from_run, config.run.storage_options)
    if not store.exists():
        raise ConfigError(f"model.init.from_run: no run store at {init.from_run}")
    try:
        record = read_model(store)
    except RunStoreError as exc:
        raise ConfigError(f"model.init.from_run: {exc}") from None
    if record.kind.name != config.model.kind:
        raise ConfigError(f"model.init.from_run: {init.from_run} holds a {record.kind.name} "
                          f"model; this config fits {config.model.kind}")
    saved = record.standardize is not None
    if saved != config.data.standardize:
        raise ConfigError(
            f"model.init.from_run: the model in {init.from_run} was fitted on "
            f"{'standardized' if saved else 'unstandardized'} features; set "
            f"data.standardize: {'true' if saved else 'false'}")
    return WarmModel(init.from_run, record, record.estimator(), model_checksum(record.arrays))


def warm_start(config: RunConfig, source: Source, warm: WarmModel | None) -> dict:
    """Estimator settings that start from the earlier run's model (empty if none).

    Refuses a model whose feature count or names differ from the data's, or whose size or
    covariance type differ from ones the config sets (unset, they are taken from the model).
    """
    if warm is None:
        return {}
    path, estimator, attrs = warm.path, warm.estimator, warm.attrs
    n_features = int(source.X.shape[1])
    if attrs["n_features"] != n_features:
        raise DataError(f"model.init.from_run: the model in {path} was fitted on "
                        f"{attrs['n_features']} features; data.path {config.data.path} has "
                        f"{n_features}")
    if list(attrs["features"]) != list(source.features):
        raise DataError(f"model.init.from_run: the model in {path} was fitted on features "
                        f"{attrs['features']}; data.path {config.data.path} has "
                        f"{source.features}")
    k, m = warm.record.n_components, config.model
    if m.n_components is not None and m.n_components != k:
        raise ConfigError(f"model.n_components: {m.n_components} differs from the {k} "
                          f"components of the model in {path}")
    if m.kind == "kmeans":
        return {"n_clusters": k, "init": estimator.cluster_centers_}
    ctype = estimator.covariance_type
    if m.covariance_type is not None and m.covariance_type != ctype:
        raise ConfigError(f"model.covariance_type: {m.covariance_type!r} differs from the "
                          f"model in {path} ({ctype!r})")
    out = {"n_components": k, "covariance_type": ctype, "weights_init": estimator.weights_,
           "means_init": estimator.means_}
    if not covariance(ctype).updated:
        out["fixed_variance"] = float(estimator.covariances_[0])
    else:
        out["precisions_init"] = estimator.precisions_
    return out


def new_rows(config: RunConfig, source: Source, warm: WarmModel | None) -> Source:
    """``source`` cut to the rows added since the warm start's run, when
    ``model.init.rows`` is ``new`` (otherwise ``source`` itself)."""
    if warm is None or config.model.init.rows != "new":
        return source
    where = f"model.init.rows: new ({warm.path})"
    if "rows_end" not in warm.attrs or not warm.estimator._fit_stats:
        raise ConfigError(f"{where}: that model was written without its statistics (by an "
                          "earlier daskem); fit it again, or use rows: all")
    if source.layout is not None:
        raise ConfigError(f"{where}: reading only new rows works on Zarr arrays and .npy "
                          f"files; data.path {config.data.path} is read as an xarray dataset")
    if config.data.missing == "drop":
        raise ConfigError(f"{where}: needs data.missing: error or marginalize (rows dropped "
                          "for missing values would shift which rows are new)")
    start, n = int(warm.attrs["rows_end"]), source.n_rows
    if start > n:
        raise DataError(f"{where}: data.path {config.data.path} has {n:,} rows, fewer than "
                        f"the {start:,} that model was fitted on (rows were removed, not "
                        "added); use rows: all")
    if start == n:
        raise DataError(f"{where}: no rows were added to data.path {config.data.path} since "
                        f"that run (it was fitted on all {n:,}); nothing to fit")
    check_size(config, n - start)
    return replace(source, full=source.full[start:], X=source.X[start:], rows=None,
                   unscaled=None if source.unscaled is None else source.unscaled[start:],
                   first_row=start, fingerprint={**source.fingerprint, "rows": [start, n]},
                   description=f"{source.description}; rows {start:,} to {n:,}, added "
                   f"since {warm.path}")


# ------------------------------------------------------------------------ data and store


def check_size(config: RunConfig, n_rows: int) -> None:
    largest = n_components(config)
    if largest > n_rows:
        key = "select.n_components" if config.select else "model.n_components"
        raise ConfigError(f"{key}: {largest} is larger than the {n_rows:,} samples of "
                          f"data.path {config.data.path}")


def probe_data(config: RunConfig, warm: WarmModel | None = None) -> Source:
    """Open the source's metadata only (no pass), to fail fast before a cluster starts.

    A warm start that cannot work fails here too (``warm``: its model, if already read).
    """
    source = open_source(config.data.model_copy(update={"missing": "error",
                                                        "standardize": False}))
    check_size(config, int(source.full.shape[0]))
    warm = warm if warm is not None else read_warm_model(config)
    warm_start(config, source, warm)
    return new_rows(config, source, warm)


def open_data(config: RunConfig, store: RunStore | None = None,
              warm: WarmModel | None = None) -> Source:
    """The config's source; a resumed run reuses the stored standardisation, and a warm
    start the standardisation of the run it starts from (its model lives in that space)."""
    from daskem.model import standardization_from

    saved = None
    if store is not None and store.exists():
        saved = standardization_from(store.attrs.get("standardize"))
    if saved is None and warm is not None:
        saved = warm.record.standardize
    source = open_source(config.data, standardize=saved, persist=config.fit.persist)
    check_size(config, int(source.X.shape[0]))
    return new_rows(config, source, warm)


def fingerprint(source: Source, warm: WarmModel | None = None) -> dict:
    """What the run store records of the data (and of the model a warm start begins
    from), to recognise a change before resuming."""
    record = dict(source.fingerprint)
    if warm is not None:  # a resumed warm start must begin from the same model
        record["init_model"] = warm.checksum
    return record


@dataclass
class Plan:
    """What :func:`prepare` found: the job's config, run store and warm start, and whether
    the store is to be made anew (``fresh``: a complete run fitted again with --force)."""

    config: RunConfig
    store: RunStore
    warm: WarmModel | None
    fresh: bool = False


def prepare(config: RunConfig, reporter: Reporter, *, force: bool = False) -> Plan | None:
    """Everything checked before a lease is taken or a cluster starts: the config, the
    data's metadata, the warm start, the run store's config. ``None``: the run store is
    already complete for this config and data (nothing to do)."""
    config = config.absolute()
    store = RunStore(config.run.store, config.run.storage_options,
                     keep_checkpoints=config.run.keep_checkpoints)
    warm = read_warm_model(config)
    probed = probe_data(config, warm)  # metadata and the chunk listing: no pass
    if not store.exists():
        return Plan(config, store, warm)
    store.check_config(config.result_hash())
    if store.attrs.get("status") != "complete":
        return Plan(config, store, warm)
    record = fingerprint(probed, warm)
    changed = store.fingerprint_changes(record)
    if not changed:
        reporter.info(f"{config.run.store} is complete for this config; nothing to do "
                      f"(daskem inspect {config.run.store} shows it)")
        return None
    if not force:
        raise RunStoreError(
            f"the data source changed since {config.run.store} was completed "
            f"({describe_changes(changed, store.attrs.get('fingerprint', {}), record)}); "
            "rerun with --force to fit it again from the start (its model and outputs "
            "are replaced), or use a new run.store")
    return Plan(config, store, warm, fresh=True)


def take_store(plan: Plan, lease: Lease, client, reporter: Reporter,
               stopper: Stopper | None = None) -> None:
    """Once the lease is held and the cluster is up: every write to the store checks the
    lease (and holds a stop signal until it is complete); the workers must see the
    client's files."""
    if lease.taken_over:
        old = lease.taken_over
        reporter.info(f"took over the stale lease of {plan.config.run.store} (host "
                      f"{old.get('host')}, pid {old.get('pid')})")
    stopper = stopper or Stopper()
    plan.store.guard = lambda: _owned_write(lease, stopper)
    check_workers(client, plan.config, lease)


@contextlib.contextmanager
def _owned_write(lease: Lease, stopper: Stopper):
    """Around every write to the run store: the job must still own it, and a stop signal
    waits until the write is complete."""
    lease.check()
    with stopper.critical():
        yield


def open_store(plan: Plan, source: Source, reporter: Reporter, *, force: bool = False
               ) -> RunStore:
    """The run store, checked against this config and data (made anew if it does not
    exist, or ``plan.fresh``); says where a resumed run goes on from."""
    config, store = plan.config, plan.store
    config_hash = config.result_hash()
    record = fingerprint(source, plan.warm)
    if store.exists() and not plan.fresh:
        store.check_compatible(config_hash, record, force=force)
    else:
        store.create(stored_config(config), config_hash, record)
        if source.standardize is not None:
            from daskem.model import standardization_attrs

            store.set_status("running", standardize=standardization_attrs(source.standardize))
    resumed = store.read_pointer()
    if resumed is not None:
        reporter.info(f"resuming from checkpoint {resumed.group} (iteration {resumed.step})",
                      checkpoint=resumed.group)
    return store


def report_data(source: Source, reporter: Reporter) -> None:
    reporter.info(f"data: {source.description}")
    for note in source.notes:
        reporter.info(f"data: {note}")


# ------------------------------------------------------------------------ fit and write


def fit(plan: Plan, source: Source, reporter: Reporter):
    """Fit the model (or the selection's candidates), checkpointing every pass into the
    run store: ``(estimator, selection or None)``."""
    config, store, warm = plan.config, plan.store, plan.warm
    # A row reader lets each task read its own block of the store (fewer tasks).
    rows = source.rows if source.rows is not None else source.X
    if config.select is not None:
        selection = fit_selection(config, rows, store, reporter)
        report_missing(selection.best_estimator_, source, reporter)
        return selection.best_estimator_, selection
    estimator = build_estimator(config, **warm_start(config, source, warm))
    if warm is not None:
        reporter.info(f"warm start from the model in {warm.path}")
    if source.first_row:  # only the new rows are read; the others are held fixed
        estimator._fixed_stats = warm.estimator._fit_stats
        reporter.info(f"holding fixed the statistics of the {source.first_row:,} rows "
                      f"fitted in {warm.path}")
    kind = config.model.kind
    described = " ".join(repr(estimator).split())  # one line
    reporter.info(f"fitting {described}")
    reporter.event("job", store=config.run.store, kind=kind, estimator=described,
                   objective=kind_named(kind).objective, max_iter=estimator.max_iter)
    reporter.started = time.monotonic()
    estimator.fit(rows, checkpoint=store, callback=lambda n, states: reporter.iteration(
        n, states, kind, estimator.max_iter, passes=estimator.passes_))
    report_missing(estimator, source, reporter)
    return estimator, None


def report_missing(estimator, source: Source, reporter: Reporter) -> None:
    """With ``missing: marginalize``: how many values were missing, and how many rows had
    nothing observed (left out of the fit)."""
    n_missing = getattr(estimator, "n_missing_values_", 0)
    if not n_missing:
        return
    n_values = source.n_rows * len(source.features)
    empty = estimator.n_empty_rows_
    reporter.info(f"missing values: {n_missing:,} of {n_values:,} ({n_missing / n_values:.1%})"
                  f", marginalized; {empty:,} row(s) with nothing observed left out of the "
                  "fit (fill values in the outputs)", n_missing_values=n_missing,
                  n_empty_rows=empty)


def save_model(plan: Plan, estimator, selection, source: Source) -> ModelRecord:
    """Write the fitted model, its history and the selection's candidates to the run
    store, and mark it ``fitted``."""
    store = plan.store
    record = ModelRecord.of(estimator, features=source.features,
                            standardize=source.standardize,
                            rows_end=source.first_row + source.n_rows)
    if selection is not None:
        record.attrs["passes"] = dict(selection.passes_)
    record.history["seconds"] = np.asarray(store.pass_seconds())
    write_model(store, record)
    if selection is not None:
        write_selection(store, selection)
    store.set_status("fitted")
    return record


def output_names(config: RunConfig) -> list[str]:
    """The per-sample outputs the config asks for that its model kind has."""
    return [name for name in kind_named(config.model.kind).outputs
            if getattr(config.output, name)]


def output_target(config: RunConfig) -> tuple[str, str, dict]:
    """Where the outputs go: (store, group, storage options)."""
    if config.output.path is None:
        return config.run.store, "outputs", dict(config.run.storage_options)
    options = config.output.storage_options
    return config.output.path, "", dict(config.run.storage_options if options is None
                                        else options)


def write_job_outputs(plan: Plan, lease: Lease, estimator, record: ModelRecord,
                      source: Source, resumed: bool) -> dict:
    """Write the per-sample outputs, then mark the run store ``complete`` with where they
    are and the passes over the data (by phase): returns that record."""
    config, store = plan.config, plan.store
    target, group, options = output_target(config)
    lease.check()
    written = write_outputs(estimator, source, output_names(config), target, group, options)
    passes = {**source.passes, **record.attrs["passes"]}
    if written:
        passes["outputs"] = 1
    outputs = {"path": target, "group": group, "arrays": written,
               "first_row": source.first_row}
    store.set_status("complete", outputs=outputs, passes={**passes, "resumed": resumed})
    return {"outputs": outputs, "passes": passes, "resumed": resumed}


def done_message(plan: Plan, record: ModelRecord, source: Source, done: dict) -> str:
    """The job's last line: what was fitted, how many reads of the data, where it went."""
    attrs, outputs = record.attrs, done["outputs"]
    only_new = ""
    if source.first_row:
        only_new = (f" (rows {source.first_row:,} to {attrs['rows_end']:,} only, the rows "
                    "added since the warm start's run; its rows were held fixed)")
    where = outputs["path"] + (f"/{outputs['group']}" if outputs["group"] else "")
    return (f"done: {record.kind.name}, {attrs['n_iter']} iterations, converged "
            f"{attrs['converged']}, {record.kind.objective} {record.objective:.10g}; "
            f"{format_passes(done['passes'], done['resumed'])}{only_new}; model and history "
            f"in {plan.config.run.store}; outputs {', '.join(outputs['arrays']) or 'none'} "
            f"in {where}")

