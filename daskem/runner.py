"""The jobs, as ``daskem run`` and ``daskem predict`` perform them, wired from the steps in
:mod:`daskem.steps`::

    prepare ─► (store complete? stop) ─► take the lease, connect the cluster ─► open data
      ─► open store ─► fit with a checkpoint after every pass ─► model and history
      ─► outputs ─► complete

Exit codes (``daskem`` returns them; :data:`EXIT_CODES` names them):
0 success, 2 bad config, 3 bad data, 4 failed run, 5 lost the scheduler (retry resumes).
"""

from __future__ import annotations

import contextlib

from daskem import steps
from daskem.cluster import SchedulerLost, connect
from daskem.config import ClusterConfig, RunConfig
from daskem.errors import ConfigError, DataError
from daskem.io.outputs import write_outputs
from daskem.io.source import open_source
from daskem.lease import Lease
from daskem.model import load_estimator, standardization_from
from daskem.progress import Reporter
from daskem.stopping import Stopper
from daskem.store import RunStore, no_run_store

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_DATA = 3
EXIT_RUN = 4
EXIT_CLUSTER = 5
EXIT_CODES = {EXIT_OK: "success", EXIT_CONFIG: "bad config", EXIT_DATA: "bad data",
              EXIT_RUN: "failed run", EXIT_CLUSTER: "lost the scheduler (rerun to resume)"}

__all__ = ["EXIT_CODES", "Reporter", "SchedulerLost", "connect", "predict_job",
           "resume_note", "run_job"]


def run_job(config: RunConfig, reporter: Reporter, *, force: bool = False,
            stopper: Stopper | None = None) -> int:
    """Fit (or resume), checkpoint every pass, write the model and the outputs.

    Nothing is written before the job holds the run store's lease; the outputs are checked
    before the store is marked complete. ``stopper``: signal handlers the caller installed
    (SIGTERM and SIGINT then wait for a write to the store to finish).
    """
    plan = steps.prepare(config, reporter, force=force)
    if plan is None:  # complete for this config and data
        return EXIT_OK
    with Lease(plan.config.run.store, plan.config.run.storage_options) as lease, \
            connect(plan.config.cluster, reporter) as client, _failure_reported(reporter):
        steps.take_store(plan, lease, client, reporter, stopper)
        source = steps.open_data(plan.config, None if plan.fresh else plan.store, plan.warm)
        steps.report_data(source, reporter)
        store = steps.open_store(plan, source, reporter, force=force)
        resumed = store.read_pointer() is not None
        estimator, selection = steps.fit(plan, source, reporter)
        record = steps.save_model(plan, estimator, selection, source)
        done = steps.write_job_outputs(plan, lease, estimator, record, source, resumed)
    reporter.info(steps.done_message(plan, record, source, done),
                  n_iter=record.attrs["n_iter"], converged=record.attrs["converged"],
                  objective=record.objective, passes=int(sum(done["passes"].values())),
                  passes_by_phase=done["passes"])
    return EXIT_OK


@contextlib.contextmanager
def _failure_reported(reporter: Reporter):
    """A failure reaches the progress consumers (the dashboard page) before the cluster
    goes away."""
    try:
        yield
    except BaseException as exc:
        reporter.event("failed", message=f"failed: {type(exc).__name__}: {exc}")
        raise


def resume_note(store_path: str, storage_options: dict | None = None) -> str:
    """What rerunning a failed or stopped job does, read from its run store as it is."""
    try:
        store = RunStore(store_path, storage_options)
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


def predict_job(store_path: str, reporter: Reporter, *, data_config: RunConfig | None = None,
                out: str | None = None, cluster: ClusterConfig | None = None,
                storage_options: dict | None = None) -> int:
    """Label and score a data source with a fitted run store's model; write Zarr outputs
    (into the run store's ``predictions`` group, or to ``out``). ``storage_options``: for
    the run store and ``out``."""
    from daskem.config import has_redacted, parse_config

    options = dict(storage_options or {})
    store = RunStore(store_path, options)
    if not store.exists():
        raise no_run_store(store_path)
    estimator, attrs = load_estimator(store)
    stored = store.attrs.get("config")
    if data_config is None and stored is None:
        raise ConfigError(f"{store_path} holds a model saved by daskem.save, without a data "
                          "config; give one with --data CONFIG")
    if data_config is None and has_redacted(stored["data"].get("storage_options")):
        raise ConfigError(f"{store_path}: the stored config's data.storage_options hold "
                          "secrets, which the run store does not keep; give the data source "
                          "with --data CONFIG")
    config = data_config or parse_config(stored, f"{store_path} (stored config)")
    config = config.absolute()
    standardize = standardization_from(attrs.get("standardize"))
    # Predictions written into the run store need it to themselves.
    owned = Lease(store_path, options) if out is None else contextlib.nullcontext()
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
        written = write_outputs(estimator, source, steps.output_names(config), target, group,
                                options)
        if out is None:  # xarray and zarr readers see the new group
            store.consolidate()
    reporter.info(f"wrote {', '.join(written)} for {source.n_rows:,} rows to "
                  f"{target}{'/' + group if group else ''}")
    return EXIT_OK
