"""The Dask cluster a job runs on: joined or embedded, watched, and checked to see the
client's files."""

from __future__ import annotations

import contextlib
import logging
import os

from distributed.diagnostics.plugin import WorkerPlugin

from daskem.config import ClusterConfig, RunConfig
from daskem.dashboard import install
from daskem.errors import ConfigError
from daskem.io.sessions import close_sessions
from daskem.lease import Lease
from daskem.progress import Reporter


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
            page = install(client, reporter)
            reporter.info(f"joined the Dask cluster at {client.scheduler.address}; "
                          f"dashboard: {client.dashboard_link}"
                          + (f"; daskem page: {page}" if page else ""),
                          dashboard=client.dashboard_link, daskem_page=page)
            try:
                yield client
            finally:
                close_sessions()  # this process's; the workers are shared with others
        return
    n_workers = cluster.n_workers or os.cpu_count() or 1
    # One BLAS thread per worker thread, so that workers do not oversubscribe the cores.
    blas = str(cluster.threads_per_worker)
    env = {name: blas for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                   "MKL_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")}
    with LocalCluster(n_workers=n_workers, threads_per_worker=cluster.threads_per_worker,
                      processes=True, host=cluster.host,
                      dashboard_address=cluster.dashboard_address,
                      # Without a dashboard the scheduler still serves its HTTP routes
                      # (health, metrics), by default on port 8787: any free port instead.
                      scheduler_kwargs=({} if cluster.dashboard_address else
                                        {"dashboard_address": f"{cluster.host}:0"}),
                      memory_limit=cluster.memory_limit or "auto", env=env) as local, \
            Client(local) as client, _watch_scheduler(client):
        if not reporter.debug:
            client.register_plugin(QuietTaskErrors())
        page = install(client, reporter) if cluster.dashboard_address else None
        reporter.info(f"started a local Dask cluster: {n_workers} worker process(es) x "
                      f"{cluster.threads_per_worker} thread(s); dashboard: "
                      f"{client.dashboard_link if cluster.dashboard_address else 'off'}"
                      + (f"; daskem page: {page}" if page else ""),
                      dashboard=client.dashboard_link if cluster.dashboard_address else None,
                      daskem_page=page)
        try:
            yield client
        finally:
            _close_sessions_everywhere(client)


def _close_sessions_everywhere(client) -> None:
    """Close the object-store sessions of the embedded cluster's workers and of this
    process before the workers stop (left open, each prints "Unclosed client session")."""
    try:
        client.run(close_sessions)
    except Exception:  # noqa: BLE001 - a lost worker has nothing left to close
        pass
    close_sessions()


def _seen_by_worker(checks: dict) -> dict:
    """On a worker: for each named location, ``None`` if it sees it as the client does,
    else what is wrong. ``checks``: name -> (path, storage options, lease token or None)."""
    import fsspec

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
    checks = {"run.store": (config.run.store, dict(config.run.storage_options), lease.token)}
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
