"""Job configuration: YAML files validated before any work starts.

Configs are data, never code: they are read with ``yaml.safe_load`` (a ``!!python/...``
tag is refused), every section rejects unknown keys, and every error names its key path
(``model.covariance_type: expected one of full, tied, diag, spherical, fixed; got 'ful'``).
YAML keys equal the Python field names.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from daskem.errors import ConfigError
from daskem.kernels.covariance import NAMES as COVARIANCE_TYPES

# The covariance types the registry knows (full, tied, diag, spherical, fixed).
CovarianceName = Literal[COVARIANCE_TYPES]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Where the samples are and how to read them."""

    path: str = Field(description="Zarr store, .npy file, or any fsspec URL")
    format: Literal["auto", "zarr", "xarray", "npy"] = "auto"
    variable: str | None = Field(
        None, description="zarr: the array inside a group; xarray: a variable with a "
        "feature dimension (alternative to 'features')")
    features: list[str] | None = Field(
        None, description="xarray: the data variables that are the features")
    feature_dim: str | None = Field(None, description="xarray: the feature dimension of "
                                    "'variable'")
    sample_dims: list[str] | None = Field(
        None, description="xarray: the dimensions stacked into samples, in order")
    missing: Literal["error", "drop", "marginalize"] = Field(
        "error", description="NaN in the data: fail naming the row, drop the rows that have "
        "one (counted), or marginalize: a NaN is a missing value, treated as latent by EM "
        "(gmm) or left out of the distances (kmeans); rows with nothing observed are left "
        "out (counted)")
    chunk_rows: int | None = Field(None, ge=1, description="rows per chunk; null keeps "
                                   "the source's chunking")
    standardize: bool = Field(False, description="scale each feature to mean 0 and "
                              "variance 1 (one extra pass); the model lives in that space")
    missing_chunks: Literal["error", "fill"] = Field(
        "error", description="Zarr chunks that are not stored: fail naming the first (and "
        "the count), or read them as the array's fill value (zarr leaves chunks equal to the "
        "fill value unwritten)")
    storage_options: dict[str, Any] = Field(default_factory=dict)


class FromRun(_Section):
    """Warm start: begin from the fitted model of an earlier run store."""

    from_run: str = Field(description="run store whose model starts this fit; its feature "
                          "count and names must equal the data's")
    rows: Literal["all", "new"] = Field(
        "all", description="all: fit every row, starting from that model; new: read only "
        "the rows added to data.path since that run and hold the earlier rows' statistics "
        "fixed (outputs cover the new rows)")


class ModelConfig(_Section):
    """The estimator and its parameters. A parameter left out (or null) takes the
    estimator's own default (``daskem.GaussianMixture`` or ``daskem.KMeans``, which
    document each one); only ``random_state`` has a default of the job's: 0, so that a
    rerun fits the same model."""

    kind: Literal["gmm", "kmeans"] = "gmm"
    n_components: int | None = Field(None, ge=1, description="components (gmm) or clusters "
                                     "(kmeans)")
    covariance_type: CovarianceName | None = None
    assignment: Literal["soft", "hard"] | None = None
    fixed_variance: float | None = Field(None, gt=0)
    init: Literal["kmeans", "k-means||", "k-means++", "random", "random_from_data"] | FromRun \
        | None = Field(None, description="how the fit starts; or {from_run: PATH} to start "
                       "from an earlier run's model")
    n_init: int | None = Field(None, ge=1)
    max_iter: int | None = Field(None, ge=1)
    tol: float | None = Field(None, ge=0)
    reg_covar: float | None = Field(None, ge=0)
    random_state: int | None = 0
    sample_size: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _init_fits_kind(self) -> ModelConfig:
        gmm_inits = {"kmeans", "k-means||", "k-means++", "random", "random_from_data"}
        kmeans_inits = {"k-means||", "k-means++", "random"}
        allowed = gmm_inits if self.kind == "gmm" else kmeans_inits
        if self.kind == "kmeans":
            for key in ("covariance_type", "assignment", "fixed_variance", "reg_covar"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} applies to kind gmm only; remove it for kmeans")
        if isinstance(self.init, FromRun):
            if self.n_init not in (None, 1):
                raise ValueError("a warm start (init.from_run) is one start; set n_init: 1")
            return self
        if self.init is not None and self.init not in allowed:
            raise ValueError(f"init {self.init!r} is not available for kind {self.kind!r}; "
                             f"expected one of {', '.join(sorted(allowed))}")
        return self


class FitConfig(_Section):
    """How the fit runs on the cluster (left out: the estimator's default)."""

    split_every: int | None = Field(None, ge=2, description="fan-in of the tree reduction")
    persist: bool = Field(False, description="keep the data in cluster memory across "
                          "iterations instead of reading the source every iteration")
    update: Literal["batch", "incremental"] | None = Field(
        None, description="when the M-step runs: after every pass (batch EM) or after "
        "every block of chunks (incremental EM: fewer passes when convergence is slow)")
    n_blocks: int | None = Field(None, ge=2, description="incremental: blocks of chunks per "
                                 "pass")


class SecurityConfig(_Section):
    """TLS for joining a secured cluster, passed to ``distributed.security.Security``."""

    tls_ca_file: str | None = Field(None, description="CA certificate (PEM file)")
    tls_client_cert: str | None = Field(None, description="this client's certificate")
    tls_client_key: str | None = Field(None, description="this client's private key")
    require_encryption: bool = True


class ClusterConfig(_Section):
    """Join an existing Dask cluster, or size the embedded LocalCluster."""

    address: str | None = Field(None, description="scheduler address, e.g. tcp://host:8786")
    scheduler_file: str | None = None
    n_workers: int | None = Field(None, ge=1, description="embedded: default one per core")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str | None = Field(None, description="embedded: per worker, e.g. '4GiB'")
    host: str = Field("127.0.0.1", description="embedded: interface to listen on")
    dashboard_address: str | None = Field("127.0.0.1:8787", description="embedded: "
                                          "dashboard host:port, null for none")
    security: SecurityConfig | None = Field(None, description="TLS when joining a cluster")

    @model_validator(mode="after")
    def _one_target(self) -> ClusterConfig:
        if self.address and self.scheduler_file:
            raise ValueError("give either address or scheduler_file, not both")
        if self.security and not (self.address or self.scheduler_file):
            raise ValueError("security applies when joining a cluster (address or "
                             "scheduler_file)")
        if self.address and self.address.startswith("tls://") and self.security is None:
            raise ValueError(f"the scheduler {self.address} uses TLS; give cluster.security "
                             "(tls_ca_file, tls_client_cert, tls_client_key)")
        return self


class OutputConfig(_Section):
    path: str | None = Field(None, description="Zarr store for per-sample outputs; "
                             "default: the group 'outputs' of the run store")
    labels: bool = True
    responsibilities: bool = Field(True, description="gmm only")
    log_likelihood: bool = Field(True, description="gmm only")
    imputed: bool = Field(False, description="gmm only: the features with every NaN "
                          "replaced by its conditional expectation under the model "
                          "(observed values unchanged)")
    storage_options: dict[str, Any] | None = Field(
        None, description="passed to fsspec for output.path; default: run.storage_options")


class SelectConfig(_Section):
    """Model selection: fit every size x covariance type in shared passes, pick the best.

    Replaces ``model.n_components`` and ``model.covariance_type``; the rest of ``model``
    (init, n_init, tol, max_iter, ...) applies to every candidate.
    """

    n_components: list[int] = Field(min_length=1, description="candidate numbers of "
                                    "components, e.g. [2, 3, 4, 5, 6, 7, 8, 9]")
    covariance_types: list[CovarianceName] = Field(
        default_factory=lambda: ["full"], min_length=1, description="candidate covariance "
        "types")
    criterion: Literal["bic", "aic"] = Field("bic", description="lower is better")

    @model_validator(mode="after")
    def _distinct(self) -> SelectConfig:
        if any(k < 1 for k in self.n_components):
            raise ValueError("n_components must be integers >= 1")
        if len(set(self.n_components)) != len(self.n_components) or \
                len(set(self.covariance_types)) != len(self.covariance_types):
            raise ValueError("n_components and covariance_types must not repeat a value")
        return self


class RunSection(_Section):
    store: str = Field(description="the run store (Zarr): checkpoints, model, history")
    keep_checkpoints: int = Field(3, ge=1, description="the newest checkpoints kept; older "
                                  "ones are removed once a newer one is complete")
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="passed to fsspec for run.store (and for "
        "model.init.from_run), e.g. {key: ..., secret: ..., client_kwargs: {endpoint_url: "
        "...}}")


class RunConfig(_Section):
    """A whole job."""

    data: DataConfig
    model: ModelConfig = ModelConfig()
    fit: FitConfig = FitConfig()
    cluster: ClusterConfig | None = None
    output: OutputConfig = OutputConfig()
    select: SelectConfig | None = Field(None, description="fit a grid of mixtures and "
                                        "choose one (daskem select)")
    run: RunSection

    @model_validator(mode="after")
    def _select_fits_model(self) -> RunConfig:
        if self.select is not None:
            if self.model.kind != "gmm":
                raise ValueError("select chooses among Gaussian mixtures; set model.kind: gmm")
            if isinstance(self.model.init, FromRun):
                raise ValueError("select starts every candidate afresh; model.init.from_run "
                                 "does not apply")
        return self

    def absolute(self) -> RunConfig:
        """This config with every local path made absolute (URLs are kept as they are).

        Paths are resolved on the client, against the directory the command runs in,
        before any task is built: workers of a joined cluster start in directories of
        their own, where a relative path names another place or nothing.
        """
        def section(obj, **paths):
            update = {k: absolute_path(v) for k, v in paths.items() if v is not None}
            return obj.model_copy(update=update) if update else obj

        update = {"data": section(self.data, path=self.data.path),
                  "run": section(self.run, store=self.run.store),
                  "output": section(self.output, path=self.output.path)}
        if isinstance(self.model.init, FromRun):
            update["model"] = self.model.model_copy(
                update={"init": section(self.model.init, from_run=self.model.init.from_run)})
        if self.cluster is not None:
            security = self.cluster.security
            if security is not None:
                security = section(security, tls_ca_file=security.tls_ca_file,
                                   tls_client_cert=security.tls_client_cert,
                                   tls_client_key=security.tls_client_key)
            update["cluster"] = section(self.cluster, scheduler_file=self.cluster.scheduler_file)
            if security is not None:
                update["cluster"] = update["cluster"].model_copy(update={"security": security})
        return self.model_copy(update=update)

    def result_hash(self) -> str:
        """Hash of the sections that decide the fitted parameters (data, model, fit, select).

        The cluster and the outputs can change between an interrupted run and its resume.
        """
        dumped = self.model_dump(mode="json")
        # How the source is reached (credentials, endpoint) is not what is fitted: new
        # credentials must not make a run store "another config's".
        dumped["data"].pop("storage_options")
        payload = {k: dumped[k] for k in ("data", "model", "fit")}
        if self.select is not None:
            payload["select"] = dumped["select"]
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# Storage-option keys whose values are secrets: the run store keeps the config without them.
_SECRET = re.compile(r"secret|token|password|passwd|credential|key", re.IGNORECASE)
REDACTED = "<redacted>"


def redacted(value, secret: bool = False):
    """``value`` with every entry under a secret-looking key replaced by ``<redacted>``."""
    if isinstance(value, dict):
        return {k: redacted(v, secret or bool(_SECRET.search(str(k))))
                for k, v in value.items()}
    if isinstance(value, list):
        return [redacted(v, secret) for v in value]
    return REDACTED if secret and value is not None else value


def stored_config(config: RunConfig) -> dict:
    """The config as a run store keeps it: JSON, the storage options' secrets redacted."""
    dumped = config.model_dump(mode="json")
    for section in ("data", "run", "output"):
        options = dumped[section].get("storage_options")
        if options:
            dumped[section]["storage_options"] = redacted(options)
    return dumped


def has_redacted(options) -> bool:
    """Whether storage options (as a run store keeps them) lost a secret to redaction."""
    if isinstance(options, dict):
        return any(has_redacted(v) for v in options.values())
    if isinstance(options, list):
        return any(has_redacted(v) for v in options)
    return options == REDACTED


def absolute_path(path: str) -> str:
    """``path`` made absolute against the current directory (``~`` expanded); a URL with a
    protocol (``s3://...``, ``memory://...``, ``file:///...``) is returned unchanged."""
    from fsspec.core import split_protocol

    if split_protocol(path)[0] is not None:
        return path
    return os.path.abspath(os.path.expanduser(path))


def _error_path(error: dict) -> str:
    # A union's members appear in the location ("literal[...]", "FromRun"): drop them.
    parts = [str(p) for p in error["loc"]
             if not (str(p).startswith("literal[") or str(p) in _UNION_MEMBERS)]
    return ".".join(parts) or "(top level)"


_UNION_MEMBERS = {"FromRun", "SecurityConfig", "ClusterConfig", "SelectConfig"}


def _section_at(parts: list[str]):
    """The config section (a model class) at a key path, or None past the sections."""
    model = RunConfig
    for part in parts:
        field = model.model_fields.get(part)
        if field is None:
            return None
        candidates = [field.annotation, *typing.get_args(field.annotation)]
        model = next((c for c in candidates if isinstance(c, type)
                      and issubclass(c, BaseModel)), None)
        if model is None:
            return None
    return model


def _unknown_key(path: str) -> str:
    """``path: unknown key``, with the nearest key of its section when one is close."""
    *section, key = path.split(".")
    model = _section_at(section)
    close = difflib.get_close_matches(key, list(model.model_fields), n=1) if model else []
    hint = f" (did you mean {'.'.join([*section, close[0]])}?)" if close else ""
    return f"{path}: unknown key{hint}"


def _format_error(error: dict) -> str:
    path = _error_path(error)
    kind = error["type"]
    if kind == "extra_forbidden":
        return _unknown_key(path)
    if kind == "missing":
        return f"{path}: required key is missing"
    if kind == "literal_error":
        expected = error.get("ctx", {}).get("expected", "")
        also = ", or {from_run: PATH}" if path == "model.init" else ""
        return (f"{path}: expected one of {expected.replace(' or ', ', ')}{also}; "
                f"got {error['input']!r}")
    message = error["msg"].removeprefix("Value error, ")
    return f"{path}: {message}; got {error.get('input')!r}" if "input" in error and not \
        isinstance(error.get("input"), dict) else f"{path}: {message}"


def parse_config(raw: Any, source: str = "config",
                 assignments: dict[str, str] | None = None) -> RunConfig:
    """Validate a mapping (from YAML) into a :class:`RunConfig`; an error in a key set by
    ``--set`` (``assignments``: key path → the assignment) names that ``--set``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections (data, model, run, ...)")
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as exc:
        lines, seen = [], set()
        for error in exc.errors():  # one message per key (a union fails once per member)
            if error["type"] == "literal_error" and isinstance(error["input"], dict):
                continue  # a mapping given where a name or a mapping may go: the other
                # member of the union says what is wrong with the mapping
            path = _error_path(error)
            if path not in seen:
                seen.add(path)
                given = (assignments or {}).get(path)
                lines.append(f"--set {given!r}: " + _format_error(error) if given else
                             f"{source}: " + _format_error(error))
        raise ConfigError("; ".join(lines)) from None


def _set_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment!r}: expected key.path=value")
    key, _, value = assignment.partition("=")
    parts = key.strip().split(".")
    # The key must exist in the schema: say so here, naming --set, not the config file.
    for depth in range(1, len(parts) + 1):
        section = _section_at(parts[:depth - 1])
        if section is None:
            break
        if parts[depth - 1] not in section.model_fields:
            raise ConfigError(f"--set {assignment!r}: {_unknown_key('.'.join(parts[:depth]))}")
    target = raw
    for part in parts[:-1]:
        node = target.get(part)
        if node is None:
            node = target[part] = {}
        if not isinstance(node, dict):
            raise ConfigError(f"--set {assignment!r}: {part} is not a section")
        target = node
    try:
        target[parts[-1]] = yaml.safe_load(value)
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {assignment!r}: value is not valid YAML ({exc})") from None


def load_config(path: str | Path, overrides: list[str] | tuple = ()) -> RunConfig:
    """Read, override (``key.path=value``, values parsed as YAML) and validate a config."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        # A !!python/... tag ends up here: configs are data, never code.
        raise ConfigError(f"{path}: not valid YAML, or uses a tag that is not allowed "
                          f"({str(exc).splitlines()[0]})") from None
    if raw is None:
        raw = {}
    for assignment in overrides:
        if not isinstance(raw, dict):
            break
        _set_override(raw, assignment)
    assignments = {a.partition("=")[0].strip(): a for a in overrides}
    # Relative paths inside are relative to the current directory, where the user typed
    # the command; they are made absolute here, before any worker sees them.
    return parse_config(raw, str(path), assignments).absolute()

