"""One job, as ``daskem run`` performs it: the steps, each a plain function, and their wiring.

    load config ─► (store complete? stop) ─► connect cluster ─► open source ─► open store
      ─► fit with a checkpoint after every pass ─► write model and history ─► write outputs

Exit codes (``daskem`` returns them; :data:`EXIT_CODES` names them):
0 success, 2 bad config, 3 bad data, 4 failed run, 5 lost the scheduler (retry resumes).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field, replace
from typing import TextIO

import numpy as np
from distributed.diagnostics.plugin import WorkerPlugin

from daskem.config import ClusterConfig, ConfigError, FromRun, RunConfig
from daskem.engine.em import EMState
from daskem.errors import DataError
from daskem.io.outputs import write_outputs
from daskem.io.source import Source, open_source
from daskem.kernels.covariance import covariance
from daskem.kernels.mstep import GaussianParams
from daskem.lease import Lease
from daskem.stopping import Stopper
from daskem.store import (
    RunStore,
    RunStoreError,
    describe_changes,
    format_passes,
    model_checksum,
    no_run_store,
    stats_arrays,
    stats_from,
)

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RUN = 4
EXIT_CLUSTER = 5
EXIT_CODES = {EXIT_OK: "success", EXIT_CONFIG: "bad config", EXIT_DATA: "bad data",
              EXIT_RUN: "failed run", EXIT_CLUSTER: "lost the scheduler (rerun to resume)"}


# ------------------------------------------------------------------------ progress


@dataclass
class Reporter:
    """Progress for people (one line per iteration) and for schedulers (JSON lines)."""

    quiet: bool = False
    json_stream: TextIO | None = None
    debug: bool = False  # keep distributed's own logs (workers' task errors among them)
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    started: float = field(default_factory=time.monotonic)
    _previous: float | None = None

    def info(self, message: str, **fields) -> None:
        if not self.quiet:
            print(message, file=self.stream, flush=True)
        self.event("info", message=message, **fields)

    def event(self, kind: str, **fields) -> None:
        if self.json_stream is not None:
            record = {"event": kind, "time": round(time.time(), 3), **fields}
            # Strict JSON: NaN and infinities (no change yet, say) become null.
            self.json_stream.write(json.dumps(_finite(record), default=float,
                                              allow_nan=False) + "\n")
            self.json_stream.flush()

    def iteration(self, n_pass: int, states: list[EMState], kind: str, max_iter: int,
                  passes: dict | None = None) -> None:
        """One line per pass: the iteration reached, the best restart's objective, the
        largest change among the restarts that ran in this pass, and the full reads of the
        data so far (``passes``: by phase)."""
        iteration = max(s.n_iter for s in states)
        moved = [abs(s.objectives[-1] - s.objectives[-2]) for s in states
                 if s.n_iter == iteration and len(s.objectives) > 1]
        change = max(moved) if moved else float("nan")
        elapsed = time.monotonic() - self.started
        running = sum(s.running and s.n_iter < max_iter for s in states)
        if kind == "select":  # the candidates' objectives are not comparable
            objective, shown = None, ""
        else:
            objective = states[_best_index(states, kind)].objectives[-1]
            shown = f"best {'lower bound' if kind == 'gmm' else 'inertia'} {objective:.10g}  "
        reads = int(sum(passes.values())) if passes else None
        if not self.quiet:
            shown_reads = f"  reads {reads:3d}" if reads is not None else ""
            print(f"iter {iteration:4d}/{max_iter}  {shown}change {change:.3e}  running "
                  f"{running}/{len(states)}{shown_reads}  {elapsed:7.1f} s", file=self.stream,
                  flush=True)
        self.event("iteration", iteration=iteration, objective=objective, change=change,
                   running=running, passes=reads, passes_by_phase=dict(passes or {}),
                   elapsed=round(elapsed, 3))


def _finite(value):
    """``value`` with every NaN or infinite float (nested in dicts and lists) made None."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def _best_index(states: list[EMState], kind: str) -> int:
    values = [s.objectives[-1] if s.objectives else np.nan for s in states]
    return int(np.nanargmax(values) if kind == "gmm" else np.nanargmin(values))


# ------------------------------------------------------------------------ steps


def _common_settings(config: RunConfig) -> dict:
    m = config.model
    return dict(max_iter=m.max_iter, n_init=m.n_init, random_state=m.random_state,
                sample_size=m.sample_size, split_every=config.fit.split_every,
                chunk_rows=config.data.chunk_rows, update=config.fit.update,
                n_blocks=config.fit.n_blocks)


def build_estimator(config: RunConfig, **warm):
    """The estimator a config describes (``warm``: the initial parameters of a warm start,
    see :func:`warm_start`)."""
    from daskem.estimators import GaussianMixture, KMeans  # (scikit-learn: only when fitting)

    m = config.model
    init = m.init if isinstance(m.init, str) else None
    if m.kind == "kmeans":
        return KMeans(warm.get("n_components", m.n_components),
                      init=warm.get("init", init or "k-means++"),
                      tol=1e-4 if m.tol is None else m.tol, **_common_settings(config))
    gmm = dict(n_components=m.n_components, covariance_type=m.covariance_type,
               tol=1e-3 if m.tol is None else m.tol, reg_covar=m.reg_covar,
               init_params=init or "kmeans", assignment=m.assignment,
               fixed_variance=m.fixed_variance)
    gmm.update(warm)
    return GaussianMixture(**gmm, **_common_settings(config))


@dataclass(frozen=True)
class WarmModel:
    """The model of the run store a warm start begins from, read once per job."""

    path: str
    estimator: object  # the fitted KMeans or GaussianMixture
    attrs: dict  # the model's attributes (features, params, standardisation, ...)
    checksum: str  # of its arrays: a resumed warm start must begin from the same model


def read_warm_model(config: RunConfig) -> WarmModel | None:
    """The model ``model.init.from_run`` names, checked to be of the right kind and space
    (``None`` without a warm start)."""
    init = config.model.init
    if not isinstance(init, FromRun):
        return None
    store = RunStore(init.from_run)
    if not store.exists():
        raise ConfigError(f"model.init.from_run: no run store at {init.from_run}")
    try:
        kind, arrays, attrs = store.read_model()
    except RunStoreError as exc:
        raise ConfigError(f"model.init.from_run: {exc}") from None
    if kind != config.model.kind:
        raise ConfigError(f"model.init.from_run: {init.from_run} holds a {kind} model; this "
                          f"config fits {config.model.kind}")
    saved = bool(attrs.get("standardize"))
    if saved != config.data.standardize:
        raise ConfigError(
            f"model.init.from_run: the model in {init.from_run} was fitted on "
            f"{'standardized' if saved else 'unstandardized'} features; set "
            f"data.standardize: {'true' if saved else 'false'}")
    objectives = tuple(store.read_history().get("objective", []))
    return WarmModel(init.from_run, estimator_from_model(kind, arrays, attrs, objectives),
                     attrs, model_checksum(arrays))


def warm_start(config: RunConfig, source: Source, warm: WarmModel | None) -> dict:
    """Estimator settings that start from the earlier run's model (empty if none).

    Refuses a model whose feature count or names differ from the data's, or whose size or
    covariance type differ from ones the config sets explicitly (unset, they are taken
    from the model).
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
    explicit = config.model.model_fields_set
    k = int(attrs["params"].get("n_clusters", attrs["params"].get("n_components")))
    if "n_components" in explicit and config.model.n_components != k:
        raise ConfigError(f"model.n_components: {config.model.n_components} differs from the "
                          f"{k} components of the model in {path}")
    if config.model.kind == "kmeans":
        return {"n_components": k, "init": estimator.cluster_centers_}
    ctype = attrs["params"]["covariance_type"]
    if "covariance_type" in explicit and config.model.covariance_type != ctype:
        raise ConfigError(f"model.covariance_type: {config.model.covariance_type!r} differs "
                          f"from the model in {path} ({ctype!r})")
    warm = {"n_components": k, "covariance_type": ctype, "weights_init": estimator.weights_,
            "means_init": estimator.means_}
    if not covariance(ctype).updated:
        warm["fixed_variance"] = float(estimator.covariances_[0])
    else:
        warm["precisions_init"] = estimator.precisions_
    return warm


class SchedulerLost(ConnectionError):
    """The client lost its scheduler in the middle of the job (rerunning resumes)."""


@contextlib.contextmanager
def _watch_scheduler(client):
    """Turn any failure that comes with a dead client connection into SchedulerLost."""
    try:
        yield
    except Exception as exc:
        if client.status not in ("running", "newly-created"):
            raise SchedulerLost(f"lost the Dask scheduler ({type(exc).__name__}: "
                                f"{exc})") from exc
        raise


def _not_a_task_error(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    # A failed task, and the tasks cancelled when the job then stops.
    return not (message.startswith("Compute Failed") or "ended with CancelledError" in message)


class QuietTaskErrors(WorkerPlugin):
    """Keeps the embedded cluster's workers from logging a failed task with its traceback
    ("Compute Failed ...") and the tasks cancelled after it: the error reaches the client,
    and ``daskem`` reports it in one line. A worker plugin, so that a worker restarted by
    its nanny gets it too."""

    name = "daskem-quiet-task-errors"

    def setup(self, worker) -> None:
        for name in ("distributed.worker", "distributed.worker.state_machine"):
            logging.getLogger(name).addFilter(_not_a_task_error)


@contextlib.contextmanager
def connect(cluster: ClusterConfig | None, reporter: Reporter):
    """A ``distributed.Client``: to the configured cluster, or to an embedded one."""
    from distributed import Client, LocalCluster

    cluster = cluster or ClusterConfig()
    if cluster.address or cluster.scheduler_file:
        target = cluster.address or f"scheduler file {cluster.scheduler_file}"
        security = None
        if cluster.security is not None:
            from distributed.security import Security

            sec = cluster.security
            security = Security(tls_ca_file=sec.tls_ca_file, tls_client_cert=sec.tls_client_cert,
                                tls_client_key=sec.tls_client_key,
                                require_encryption=sec.require_encryption)
        try:
            client = (Client(cluster.address, timeout="30s", security=security)
                      if cluster.address else
                      Client(scheduler_file=cluster.scheduler_file, timeout="30s",
                             security=security))
        except Exception as exc:  # noqa: BLE001 - any failure to connect is reported alike
            raise ConnectionError(f"cannot reach the Dask scheduler at {target}: "
                                  f"{type(exc).__name__}: {exc}") from None
        with client, _watch_scheduler(client):
            reporter.info(f"joined the Dask cluster at {client.scheduler.address}; "
                          f"dashboard: {client.dashboard_link}",
                          dashboard=client.dashboard_link)
            yield client
        return
    n_workers = cluster.n_workers or os.cpu_count() or 1
    # One BLAS thread per worker thread, so that workers do not oversubscribe the cores.
    blas = str(cluster.threads_per_worker)
    env = {name: blas for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
    with LocalCluster(n_workers=n_workers, threads_per_worker=cluster.threads_per_worker,
                      processes=True, host=cluster.host,
                      dashboard_address=cluster.dashboard_address,
                      memory_limit=cluster.memory_limit or "auto", env=env) as local, \
            Client(local) as client, _watch_scheduler(client):
        if not reporter.debug:
            client.register_plugin(QuietTaskErrors())
        reporter.info(f"started a local Dask cluster: {n_workers} worker process(es) x "
                      f"{cluster.threads_per_worker} thread(s); dashboard: "
                      f"{client.dashboard_link if cluster.dashboard_address else 'off'}",
                      dashboard=client.dashboard_link if cluster.dashboard_address else None)
        yield client


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
    if config.data.missing != "error":
        raise ConfigError(f"{where}: needs data.missing: error (rows dropped for missing "
                          "values would shift which rows are new)")
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
                   first_row=start, fingerprint={**source.fingerprint, "rows": [start, n]},
                   description=f"{source.description}; rows {start:,} to {n:,}, added "
                   f"since {warm.path}")


def check_size(config: RunConfig, n_rows: int) -> None:
    largest = config.largest_model
    if largest > n_rows:
        key = "select.n_components" if config.select else "model.n_components"
        raise ConfigError(f"{key}: {largest} is larger than the {n_rows:,} samples of "
                          f"data.path {config.data.path}")


def open_data(config: RunConfig, store: RunStore | None = None,
              warm: WarmModel | None = None) -> Source:
    """The config's source; a resumed run reuses the stored standardisation, and a warm
    start the standardisation of the run it starts from (its model lives in that space)."""
    saved = None
    if store is not None and store.exists():
        saved = store.attrs.get("standardize")
    if not saved and warm is not None:
        saved = warm.attrs.get("standardize")
    standardize = (np.asarray(saved["mean"]), np.asarray(saved["scale"])) if saved else None
    source = open_source(config.data, standardize=standardize, persist=config.fit.persist)
    check_size(config, int(source.X.shape[0]))
    return new_rows(config, source, warm)


def fingerprint(source: Source, warm: WarmModel | None = None) -> dict:
    """What the run store records of the data (and of the model a warm start begins
    from), to recognise a change before resuming."""
    record = dict(source.fingerprint)
    if warm is not None:  # a resumed warm start must begin from the same model
        record["init_model"] = warm.checksum
    return record


def open_store(config: RunConfig, source: Source, warm: WarmModel | None = None, *,
               force: bool = False, fresh: bool = False, store: RunStore | None = None
               ) -> RunStore:
    """The run store, checked against this config and data (``fresh``: made anew, for a
    complete run fitted again with ``--force``)."""
    store = store or RunStore(config.run.store)
    config_hash = config.result_hash()
    record = fingerprint(source, warm)
    if store.exists() and not fresh:
        store.check_compatible(config_hash, record, force=force)
    else:
        store.create(config.model_dump(mode="json"), config_hash, record)
        if source.standardize is not None:
            mean, scale = source.standardize
            store.set_status("running", standardize={"mean": mean.tolist(),
                                                     "scale": scale.tolist()})
    return store


def model_record(estimator, source: Source) -> tuple[str, dict, dict, dict]:
    """(kind, arrays, attributes, history) of a fitted estimator, for the run store."""
    if hasattr(estimator, "cluster_centers_"):  # k-means
        arrays = {"cluster_centers": estimator.cluster_centers_}
        attrs = {"inertia": estimator.inertia_}
        history = {"objective": np.asarray(estimator.inertia_history_)}
        kind = "kmeans"
    else:
        arrays = {"weights": estimator.weights_, "means": estimator.means_,
                  "covariances": estimator.covariances_,
                  "precisions_cholesky": estimator.precisions_cholesky_}
        attrs = {"lower_bound": estimator.lower_bound_}
        history = {"objective": np.asarray(estimator.lower_bounds_)}
        kind = "gmm"
    params = {k: v for k, v in estimator.get_params().items()
              if isinstance(v, (int, float, str, bool, type(None)))}
    attrs.update({
        "params": params,
        "n_features": int(estimator.n_features_in_),
        "features": source.features,
        "n_iter": int(estimator.n_iter_),
        "converged": bool(estimator.converged_),
        "reseeds": [[it, e.component, e.row, e.reason] for it, e in estimator.reseeds_],
        "restarts": getattr(estimator, "restarts_", []),
    })
    if source.standardize is not None:
        attrs["standardize"] = {"mean": source.standardize[0].tolist(),
                                "scale": source.standardize[1].tolist()}
    # The statistics of the last M-step: a later warm start with ``rows: new`` holds them
    # fixed. ``rows_end``: the source rows they cover (0 to rows_end).
    fit_stats = getattr(estimator, "_fit_stats", ())
    arrays.update(stats_arrays("stats", (fit_stats,) if fit_stats else ()))
    attrs["rows_end"] = source.first_row + source.n_rows
    return kind, arrays, attrs, history


def load_estimator(store: RunStore):
    """The fitted estimator kept in a run store's ``model/`` group, and its attributes."""
    kind, arrays, attrs = store.read_model()
    objectives = tuple(store.read_history().get("objective", []))
    return estimator_from_model(kind, arrays, attrs, objectives), attrs


def estimator_from_model(kind: str, arrays: dict, attrs: dict, objectives: tuple):
    """A fitted estimator from a model as :meth:`RunStore.read_model` returns it and its
    objective per iteration (``history/objective``)."""
    from daskem.estimators import GaussianMixture, KMeans

    params = attrs["params"]
    last = stats_from("stats", arrays)
    last = last[0] if last else ()
    if kind == "kmeans":
        est = KMeans(**params)
        state = EMState(arrays["cluster_centers"], attrs["n_iter"], attrs["converged"],
                        objectives, last=last)
        est._set_state(state, attrs["inertia"], attrs["n_features"])
    else:
        est = GaussianMixture(**params)
        gp = GaussianParams(params["covariance_type"], arrays["weights"], arrays["means"],
                            arrays["covariances"], arrays["precisions_cholesky"])
        est._set_state(EMState(gp, attrs["n_iter"], attrs["converged"], objectives,
                               last=last), attrs["n_features"])
    return est


def output_names(config: RunConfig) -> list[str]:
    out = config.output
    names = ["labels"] if out.labels else []
    if config.model.kind == "gmm":
        names += ["responsibilities"] if out.responsibilities else []
        names += ["log_likelihood"] if out.log_likelihood else []
    return names


def fit_selection(config: RunConfig, rows, store: RunStore, reporter: Reporter):
    """Fit the config's grid of candidates in shared passes; report and return the choice."""
    from daskem.estimators.selection import grid, select_mixture

    sel, m = config.select, config.model
    cells = grid(sel.n_components, sel.covariance_types)
    reporter.info(f"selecting among {len(cells)} candidates ({len(sel.n_components)} sizes x "
                  f"{len(sel.covariance_types)} covariance types, {m.n_init} restart(s) "
                  f"each) by {sel.criterion.upper()}")
    reporter.started = time.monotonic()
    settings = _common_settings(config)
    passes: dict = {}
    selection = select_mixture(
        rows, sel.n_components, sel.covariance_types, criterion=sel.criterion,
        tol=1e-3 if m.tol is None else m.tol, reg_covar=m.reg_covar,
        init_params=m.init or "kmeans", assignment=m.assignment,
        fixed_variance=m.fixed_variance, checkpoint=store,
        callback=lambda n, states: reporter.iteration(n, states, "select", m.max_iter,
                                                      passes=passes),
        passes=passes, **settings)
    for line in selection.format().splitlines():
        reporter.info(line)
    best = selection.best
    reporter.info(f"chosen by {sel.criterion.upper()}: {best.n_components} components, "
                  f"{best.covariance_type} covariances", selection=selection.table())
    return selection


# ------------------------------------------------------------------------ the job


def run_job(config: RunConfig, reporter: Reporter, *, force: bool = False,
            stopper: Stopper | None = None) -> int:
    """Fit (or resume), checkpoint every pass, write the model and the outputs.

    Nothing is written before the job holds the run store's lease; the outputs are checked
    before the store is marked complete. ``stopper``: signal handlers the caller installed
    (SIGTERM and SIGINT then wait for a write to the store to finish).
    """
    config = config.absolute()
    stopper = stopper or Stopper()
    store = RunStore(config.run.store)
    warm = read_warm_model(config)
    probed = probe_data(config, warm)  # metadata and the chunk listing: no pass
    if store.exists():
        store.check_config(config.result_hash())  # before a cluster starts
    fresh = False
    if store.exists() and store.attrs.get("config_hash") == config.result_hash() and \
            store.attrs.get("status") == "complete":
        record = fingerprint(probed, warm)
        changed = store.fingerprint_changes(record)
        if not changed:
            reporter.info(f"{config.run.store} is complete for this config; nothing to do "
                          f"(daskem inspect {config.run.store} shows it)")
            return EXIT_OK
        if not force:
            raise RunStoreError(
                f"the data source changed since {config.run.store} was completed "
                f"({describe_changes(changed, store.attrs.get('fingerprint', {}), record)}); "
                "rerun with --force to fit it again from the start (its model and outputs "
                "are replaced), or use a new run.store")
        fresh = True
    with Lease(config.run.store) as lease, connect(config.cluster, reporter) as client:
        if lease.taken_over:
            old = lease.taken_over
            reporter.info(f"took over the stale lease of {config.run.store} (host "
                          f"{old.get('host')}, pid {old.get('pid')})")
        store.guard = lambda: _owned_write(lease, stopper)
        check_workers(client, config, lease)
        source = open_data(config, None if fresh else store, warm)
        reporter.info(f"data: {source.description}")
        for note in source.notes:
            reporter.info(f"data: {note}")
        store = open_store(config, source, warm, force=force, fresh=fresh, store=store)
        resumed = store.read_pointer()
        if resumed is not None:
            reporter.info(f"resuming from checkpoint {resumed.group} "
                          f"(iteration {resumed.step})", checkpoint=resumed.group)
        # A row reader lets each task read its own block of the store (fewer tasks).
        rows = source.rows if source.rows is not None else source.X
        if config.select is not None:
            selection = fit_selection(config, rows, store, reporter)
            estimator = selection.best_estimator_
        else:
            selection = None
            estimator = build_estimator(config, **warm_start(config, source, warm))
            if warm is not None:
                reporter.info(f"warm start from the model in {warm.path}")
            if source.first_row:  # only the new rows are read; the others are held fixed
                estimator._fixed_stats = warm.estimator._fit_stats
                reporter.info(f"holding fixed the statistics of the {source.first_row:,} "
                              f"rows fitted in {warm.path}")
            kind = config.model.kind
            reporter.info("fitting " + " ".join(repr(estimator).split()))  # one line
            reporter.started = time.monotonic()
            estimator.fit(rows, checkpoint=store, callback=lambda n, states: reporter.iteration(
                n, states, kind, config.model.max_iter, passes=estimator.passes_))
        kind, arrays, attrs, history = model_record(estimator, source)
        passes = {**source.passes,
                  **(selection.passes_ if selection is not None else estimator.passes_)}
        history["seconds"] = np.asarray(store.pass_seconds())
        store.write_model(kind, arrays, attrs, history)
        if selection is not None:
            store.write_selection(selection)
        store.set_status("fitted")
        which = output_names(config)
        target = config.output.path or config.run.store
        group = "outputs" if config.output.path is None else ""
        lease.check()
        written = write_outputs(estimator, source, which, target, group)
        if written:
            passes["outputs"] = 1
        store.set_status("complete", outputs={"path": target, "group": group,
                                              "arrays": written,
                                              "first_row": source.first_row},
                         passes={**passes, "resumed": resumed is not None})
    objective = attrs.get("lower_bound", attrs.get("inertia"))
    only_new = ""
    if source.first_row:
        only_new = (f" (rows {source.first_row:,} to {attrs['rows_end']:,} only, the rows "
                    "added since the warm start's run; its rows were held fixed)")
    reporter.info(
        f"done: {kind}, {attrs['n_iter']} iterations, converged {attrs['converged']}, "
        f"{'lower bound' if kind == 'gmm' else 'inertia'} {objective:.10g}; "
        f"{format_passes(passes, resumed is not None)}{only_new}; model and "
        f"history in {config.run.store}; outputs {', '.join(written) or 'none'} in "
        f"{target}{'/' + group if group else ''}",
        n_iter=attrs["n_iter"], converged=attrs["converged"], objective=objective,
        passes=int(sum(passes.values())), passes_by_phase=passes)
    return EXIT_OK


@contextlib.contextmanager
def _owned_write(lease: Lease, stopper: Stopper):
    """Around every write to the run store: the job must still own it, and a stop signal
    waits until the write is complete."""
    lease.check()
    with stopper.critical():
        yield


def resume_note(store_path: str) -> str:
    """What rerunning a failed or stopped job does, read from its run store as it is."""
    try:
        store = RunStore(store_path)
        pointer = store.read_pointer() if store.exists() else None
        status = store.attrs.get("status") if pointer is not None else None
    except Exception:  # noqa: BLE001 - the note must not fail where the job did
        pointer = status = None
    if pointer is None:
        return "rerunning starts the fit from the beginning"
    if status == "fitted":
        return "rerunning keeps the fitted model and writes the outputs again"
    return (f"rerunning resumes from checkpoint {pointer.group.rsplit('/', 1)[-1]} "
            f"(iteration {pointer.step})")


def _seen_by_worker(checks: dict) -> dict:
    """On a worker: for each named location, ``None`` if it sees it as the client does,
    else what is wrong. ``checks``: name -> (path, storage options, lease token or None)."""
    import fsspec

    from daskem.lease import Lease

    seen = {}
    for name, (path, options, token) in checks.items():
        try:
            if token is not None:
                owner = Lease(path, options).read_owner()
                seen[name] = (None if owner and owner.get("token") == token else
                              "does not hold this job's lease there (another filesystem?)")
            else:
                fs, root = fsspec.core.url_to_fs(path, **options)
                seen[name] = None if fs.exists(root) else "does not exist there"
        except Exception as exc:  # noqa: BLE001 - reported to the client as text
            seen[name] = f"cannot be read there ({type(exc).__name__}: {exc})"
    return seen


def check_workers(client, config: RunConfig, lease: Lease) -> None:
    """Check that every worker sees the data source and the run store as this client does
    (one small task per worker, no data read). Workers of a joined cluster may run on other
    machines, in other directories or without the client's mounts; writing outputs there
    would put them out of the client's sight."""
    checks = {"run.store": (config.run.store, {}, lease.token)}
    if not config.data.path.endswith(".npy"):  # a .npy source is read by the client
        checks["data.path"] = (config.data.path, dict(config.data.storage_options), None)
    seen = client.run(_seen_by_worker, checks)
    for name, (path, _, _) in checks.items():
        wrong = {worker: result[name] for worker, result in seen.items() if result[name]}
        if wrong:
            worker, what = next(iter(wrong.items()))
            raise ConfigError(
                f"{name}: {path} is not the same for the workers: {len(wrong)} of "
                f"{len(seen)} worker(s) (first {worker}) see it differently: it {what}; "
                "every worker must see the client's files (a shared filesystem mounted at the "
                "same path, or an object-store URL)")


def predict_job(store_path: str, reporter: Reporter, *, data_config: RunConfig | None = None,
                out: str | None = None, cluster: ClusterConfig | None = None) -> int:
    """Label and score a data source with a fitted run store's model; write Zarr outputs."""
    from daskem.config import parse_config

    store = RunStore(store_path)
    if not store.exists():
        raise no_run_store(store_path)
    estimator, attrs = load_estimator(store)
    config = data_config or parse_config(store.attrs["config"], f"{store_path} (stored config)")
    config = config.absolute()
    saved = attrs.get("standardize")
    standardize = (np.asarray(saved["mean"]), np.asarray(saved["scale"])) if saved else None
    # Predictions written into the run store need it to themselves.
    owned = Lease(store_path) if out is None else contextlib.nullcontext()
    with owned, connect(cluster or config.cluster, reporter):
        source = open_source(config.data.model_copy(update={"missing": "error"}),
                             standardize=standardize)
        if source.full.shape[1] != attrs["n_features"]:
            raise DataError(f"data.path: {config.data.path} has {source.full.shape[1]} "
                            f"features; the model was fitted on {attrs['n_features']}")
        if source.features != attrs["features"] and all(
                not f.startswith("feature_") for f in source.features):
            raise DataError(f"data.features: {source.features} differ from the model's "
                            f"{attrs['features']}")
        target = out or store_path
        group = "predictions" if out is None else ""
        written = write_outputs(estimator, source, output_names(config), target, group)
    reporter.info(f"wrote {', '.join(written)} for {source.n_rows:,} rows to "
                  f"{target}{'/' + group if group else ''}")
    return EXIT_OK
