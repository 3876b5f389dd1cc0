"""The ``daskem`` command. It parses arguments and delegates to :mod:`daskem.runner`.

Exit codes: 0 success, 2 bad config, 3 bad data, 4 failed run, 5 lost the scheduler.
Every failure prints one line, ``daskem: error: ...``, saying what is wrong.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from daskem import runner, steps
from daskem.config import ConfigError, load_config
from daskem.errors import DataError, FitError, ParameterError, StorageError
from daskem.io.sessions import close_sessions
from daskem.lease import LeaseHeld, LeaseLost
from daskem.model import read_model, read_selection
from daskem.stopping import JobStopped, Stopper
from daskem.store import RunStore, RunStoreError, format_passes, no_run_store

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Fit k-means and Gaussian mixtures on Dask clusters, from Zarr and "
                       "xarray feature stores.")

ConfigArg = Annotated[Path, typer.Argument(help="YAML config file (see configs/)",
                                                   metavar="CONFIG")]
SetOpt = Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE",
                                           help="override a key: --set "
                                           "model.n_components=12 (repeatable)")]


ADVICE = {runner.EXIT_CONFIG: "fix the config and rerun",
          runner.EXIT_DATA: "fix the data source (or its data.* settings) and rerun",
          runner.EXIT_RUN: "see the message",
          runner.EXIT_CLUSTER: "check the cluster and rerun: the run resumes"}


def _fail(code: int, message: str, remedy: str | None = None) -> None:
    first = " ".join(str(message).split())
    print(f"daskem: error: {first} ({remedy or ADVICE[code]})", file=sys.stderr, flush=True)
    raise typer.Exit(code)


def _guard(fn, *, job: dict | None = None, stopper: Stopper | None = None):
    """Run ``fn`` and turn daskem's errors into one line and an exit code.

    ``job``: filled in by ``fn`` once its config is loaded; its ``"store"``, the run store,
    is read after a failure to say truthfully what a rerun does; ``stopper``: the job's
    signal handlers (a stop signal explains any failure that follows it, such as workers
    that the same signal ended).
    """
    def rerun(first: str = "") -> str:
        store = (job or {}).get("store")
        note = runner.resume_note(store, job.get("options")) if store else "rerun"
        return f"{first}; {note}" if first else note

    try:
        return fn()
    except BrokenPipeError:
        # The reader of our output went away (`daskem inspect ... | head`): stop quietly.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return runner.EXIT_OK
    except typer.Exit:
        raise
    except (JobStopped, KeyboardInterrupt) as exc:
        signum = exc.signum if isinstance(exc, JobStopped) else signal.SIGINT
        _stopped(signum, rerun())
    except BaseException as exc:  # noqa: BLE001 - the last line of defence of a batch job
        if stopper is not None and stopper.received is not None:
            _stopped(stopper.received, rerun())
        if not isinstance(exc, Exception):
            raise
        _report(exc, rerun)
    finally:
        close_sessions()


def _stopped(signum: int, note: str) -> None:
    name = signal.Signals(signum).name
    print(f"daskem: error: stopped by {name}; the newest checkpoint is complete ({note})",
          file=sys.stderr, flush=True)
    raise typer.Exit(128 + int(signum))


def _report(exc: Exception, rerun) -> None:
    remedy = getattr(exc, "remedy", None)
    if isinstance(exc, (ConfigError, RunStoreError, ParameterError, LeaseHeld)):
        _fail(runner.EXIT_CONFIG, str(exc), remedy)
    if isinstance(exc, DataError):
        _fail(runner.EXIT_DATA, str(exc), remedy)
    if isinstance(exc, ConnectionError):
        _fail(runner.EXIT_CLUSTER, str(exc), remedy)
    if isinstance(exc, StorageError):
        _fail(runner.EXIT_RUN, str(exc), rerun(remedy or ""))
    if isinstance(exc, LeaseLost):
        _fail(runner.EXIT_RUN, str(exc), remedy or "the other job owns the store now")
    if isinstance(exc, FitError):
        _fail(runner.EXIT_RUN, str(exc), remedy or "the fit cannot go on with these settings")
    if _lost_scheduler(exc):
        _fail(runner.EXIT_CLUSTER, f"lost the Dask scheduler: {exc}")
    _fail(runner.EXIT_RUN, f"{type(exc).__name__}: {exc}", rerun("see the message"))


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as one line, ``daskem: warning: <message> (<category>)``, not as the
    Python source line that raised it (``--debug`` keeps Python's format)."""
    text = " ".join(str(message).split())
    print(f"daskem: warning: {text} ({category.__name__})", file=file or sys.stderr,
          flush=True)


def _quiet_client_logs(debug: bool) -> None:
    """distributed's client logs tracebacks when the scheduler goes away; daskem reports
    that itself in one line. ``--debug`` keeps them."""
    import logging

    import distributed  # noqa: F401 - its import sets the levels this then overrides

    if not debug:
        import warnings

        warnings.showwarning = _show_warning
        for name in ("distributed.client", "distributed.batched", "distributed.core"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def _lost_scheduler(exc: BaseException) -> bool:
    from distributed.comm.core import CommClosedError

    return isinstance(exc, (CommClosedError, TimeoutError)) or "scheduler" in str(exc).lower()


QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")]
LogJsonOpt = Annotated[Path | None, typer.Option(
    help="append JSON-lines progress records to this file ('-' for stdout)")]
ForceOpt = Annotated[bool, typer.Option(help="resume even if the data source changed shape "
                                        "or chunking since the run started")]
DebugOpt = Annotated[bool, typer.Option(help="show distributed's own client logs")]
StorageOpt = Annotated[list[str], typer.Option(
    "--storage-option", metavar="KEY=VALUE",
    help="an fsspec storage option for the run store (and --out), the value read as YAML; "
    "a dotted key nests: --storage-option client_kwargs.endpoint_url=http://host:9000 "
    "(repeatable)")]


def storage_options(items: list[str]) -> dict:
    """``--storage-option KEY=VALUE`` items as fsspec storage options."""
    import yaml

    options: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--storage-option {item!r}: expected KEY=VALUE")
        *parents, last = key.split(".")
        node = options
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = yaml.safe_load(value) if value else ""
    return options


def _job(config: Path, set_: list[str], quiet: bool, log_json: Path | None, force: bool,
         debug: bool, *, select: bool) -> None:
    def job():
        _quiet_client_logs(debug)
        cfg = load_config(config, set_)
        loaded["store"], loaded["options"] = cfg.run.store, cfg.run.storage_options
        if select and cfg.select is None:
            raise ConfigError(f"{config}: no select section (select: {{n_components: [...], "
                              "covariance_types: [...]}}); see configs/select.yaml")
        stream = None
        if log_json is not None:
            stream = sys.stdout if str(log_json) == "-" else open(log_json, "a")  # noqa: SIM115
        try:
            reporter = runner.Reporter(quiet=quiet or str(log_json) == "-",
                                       json_stream=stream, debug=debug)
            with stopper.installed():
                return runner.run_job(cfg, reporter, force=force, stopper=stopper)
        finally:
            if stream is not None and stream is not sys.stdout:
                stream.close()

    stopper, loaded = Stopper(), {}
    raise typer.Exit(_guard(job, job=loaded, stopper=stopper))


@app.command()
def run(config: ConfigArg, set_: SetOpt = [], quiet: QuietOpt = False,  # noqa: B006
        log_json: LogJsonOpt = None, force: ForceOpt = False, debug: DebugOpt = False) -> None:
    """Fit the model a config describes; resumes an interrupted run, skips a finished one.

    A config with a select section fits its grid of candidates (as daskem select does).
    """
    _job(config, set_, quiet, log_json, force, debug, select=False)


@app.command()
def select(config: ConfigArg, set_: SetOpt = [], quiet: QuietOpt = False,  # noqa: B006
           log_json: LogJsonOpt = None, force: ForceOpt = False,
           debug: DebugOpt = False) -> None:
    """Fit every candidate of the config's select section in shared passes; keep the best
    by BIC or AIC, and every candidate's parameters, in the run store."""
    _job(config, set_, quiet, log_json, force, debug, select=True)


@app.command()
def validate(config: ConfigArg, set_: SetOpt = []) -> None:  # noqa: B006
    """Check a config and its data source without fitting."""
    def job():
        cfg = load_config(config, set_)
        print(f"config {config}: valid")
        source = steps.probe_data(cfg)
        print(f"data: {source.description}")
        if cfg.select is not None:
            sel = cfg.select
            print(f"select: {len(sel.n_components) * len(sel.covariance_types)} candidates, "
                  f"n_components {sel.n_components} x covariance types "
                  f"{sel.covariance_types}, chosen by {sel.criterion.upper()}")
        else:
            params = steps.build_estimator(cfg).get_params()
            print(f"model: {cfg.model.kind}, "
                  f"{params.get('n_clusters', params.get('n_components'))} components"
                  + (f", {params['covariance_type']} covariances"
                     if "covariance_type" in params else ""))
        print(f"run store: {cfg.run.store}")
        return runner.EXIT_OK

    raise typer.Exit(_guard(job))


@app.command()
def inspect(
    run_store: Annotated[str, typer.Argument(help="path or URL of a run store",
                                             metavar="RUN_STORE")],
    as_json: Annotated[bool, typer.Option("--json", help="machine-readable output")] = False,
    storage_option: StorageOpt = [],  # noqa: B006
) -> None:
    """What a run store holds: status, iterations, objective history, parameters, config."""
    def job():
        store = RunStore(run_store, storage_options(storage_option))
        if not store.exists():
            raise no_run_store(run_store)
        attrs = store.attrs
        pointer = store.read_pointer()
        info = {
            "path": run_store,
            "status": attrs.get("status"),
            "created": attrs.get("created"),
            "config_hash": attrs.get("config_hash"),
            "checkpoints": len(store.checkpoint_names()),
            "latest_checkpoint": pointer.group if pointer else None,
            "passes": attrs.get("passes"),
            "pass_seconds": store.pass_seconds(),
            "versions": attrs.get("versions"),
            "config": attrs.get("config"),
        }
        try:
            record = read_model(store)
            model = record.attrs
            info["model"] = {"kind": record.kind.name, "n_iter": model["n_iter"],
                             "converged": model["converged"],
                             "objective_name": record.kind.objective,
                             "objective": record.objective,
                             "features": model["features"],
                             "rows_end": model.get("rows_end"),
                             "n_missing_values": model.get("n_missing_values", 0),
                             "n_empty_rows": model.get("n_empty_rows", 0),
                             "arrays": {k: list(v.shape) for k, v in record.arrays.items()}}
            if "weights" in record.arrays:
                info["model"]["weights"] = [round(float(w), 6)
                                            for w in record.arrays["weights"]]
            info["history"] = {k: v.tolist() for k, v in record.history.items()}
        except RunStoreError:
            info["model"] = None
        selection = read_selection(store)
        info["selection"] = None if selection is None else {
            "criterion": selection["criterion"], "chosen": selection["chosen"],
            "table": selection["table"]}
        if as_json:
            print(json.dumps(info, indent=2, default=str))
            return runner.EXIT_OK
        print(f"run store {run_store}: {info['status']} (created {info['created']})")
        print(f"checkpoints: {info['checkpoints']}, latest {info['latest_checkpoint']}")
        if info["passes"]:
            passes = dict(info["passes"])
            print(f"passes: {format_passes(passes, bool(passes.pop('resumed', False)))}")
        seconds = info["pass_seconds"]
        if seconds:
            rest = sorted(seconds[1:])
            each = f"; then {rest[len(rest) // 2]:.2f} s per iteration (median)" if rest else ""
            print(f"timing: {sum(seconds):.1f} s to the last checkpoint ({seconds[0]:.1f} s to "
                  f"the first: start-up, summary and initialisation{each})")
        model = info["model"]
        if model:
            print(f"model: {model['kind']}, {model['n_iter']} iterations, converged "
                  f"{model['converged']}, {model['objective_name']} {model['objective']:.10g}")
            if model["n_missing_values"]:
                print(f"  missing values: {model['n_missing_values']:,} marginalized; "
                      f"{model['n_empty_rows']:,} row(s) with nothing observed left out")
            for name, shape in model["arrays"].items():
                note = ("  (its last M-step's statistics, packed: a warm start with rows: "
                        f"new holds them fixed; rows 0 to {model['rows_end']:,})"
                        if name == "stats" and model["rows_end"] else "")
                values = f" {model['weights']}" if name == "weights" and "weights" in model \
                    else ""
                print(f"  {name}: {tuple(shape)}{values}{note}")
            objective = info["history"].get("objective", [])
            if objective:
                shown = ", ".join(f"{v:.6g}" for v in objective[-5:])
                print(f"history: {len(objective)} iterations, last: {shown}")
        if info["selection"]:
            sel = info["selection"]
            from daskem.estimators.selection import format_table

            print(f"selection by {sel['criterion'].upper()} among {len(sel['table'])} "
                  "candidates (* chosen):")
            print(format_table(sel["table"]))
        if info["config"] is None:
            print("saved by daskem.save: no job config")
        else:
            print(f"data: {info['config'].get('data', {}).get('path')}")
        return runner.EXIT_OK

    raise typer.Exit(_guard(job))


@app.command()
def predict(
    run_store: Annotated[str, typer.Argument(help="a run store holding a fitted model",
                                             metavar="RUN_STORE")],
    data: Annotated[Path | None, typer.Option(help="config whose data section to label "
                                              "(default: the run's own data)")] = None,
    out: Annotated[str | None, typer.Option(help="Zarr store for the outputs (default: "
                                            "group 'predictions' of the run store)")] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q")] = False,
    storage_option: StorageOpt = [],  # noqa: B006
) -> None:
    """Label and score a data source with a fitted model, lazily, writing Zarr."""
    def job():
        cfg = load_config(data) if data is not None else None
        return runner.predict_job(run_store, runner.Reporter(quiet=quiet), data_config=cfg,
                                  out=out, storage_options=storage_options(storage_option))

    raise typer.Exit(_guard(job))


@app.command()
def report(
    run_store: Annotated[str, typer.Argument(help="a run store holding a fitted model",
                                             metavar="RUN_STORE")],
    out: Annotated[str | None, typer.Option(help="directory or URL for report.html and its "
                                            "PNGs (default: <run store>-report beside it)")
                   ] = None,
    sample_rows: Annotated[int, typer.Option(min=100, help="rows of the data to plot")] = 4000,
    storage_option: StorageOpt = [],  # noqa: B006
) -> None:
    """Write a self-contained HTML report of a run: objective per iteration, weights, the
    clusters in 2-D with covariance ellipses, feature means, and BIC/AIC for selections."""
    def job():
        from daskem.report import write_report

        page = write_report(run_store, None if out is None else str(out),
                            sample_rows=sample_rows,
                            storage_options=storage_options(storage_option))
        print(f"wrote {page} (and its figures as PNG files beside it)")
        return runner.EXIT_OK

    raise typer.Exit(_guard(job))


def main() -> None:  # pragma: no cover - the console script
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
