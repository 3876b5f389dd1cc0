"""The run store: a Zarr group holding everything about one job.

    run.zarr/
      (attributes)             config used, its hash, package versions, status, data fingerprint
      latest/                  pointer to the newest complete checkpoint, with its checksum
                               (a group whose attributes daskem replaces atomically)
      checkpoints/iter_000042/ one group per iteration: every restart's parameters (arrays)
                               and state (attributes: iterations, objectives, re-seedings);
                               the newest ``run.keep_checkpoints`` are kept
      model/, history/,        the fitted model, its objective per iteration and seconds per
      selection/               pass, every candidate of a selection: written and read by
                               :mod:`daskem.model`, which owns their format
      outputs/                 per-sample outputs (labels, responsibilities, log-likelihood)

Checkpoints are written only from the client (chunk tasks may run twice). A checkpoint is
visible once its group is complete: the pointer is replaced after the group is written
(write to a temporary file, then rename, on a local filesystem; a single-object write on
object stores), and carries a checksum of the parameters. A checkpoint whose arrays do not
match its checksum is skipped, with a warning, for the newest older one that does.
Older checkpoints are removed only after the pointer has moved past them.
The store holds numeric Zarr arrays and JSON attributes only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import metadata

import numpy as np

from daskem.engine.em import EMState
from daskem.errors import DaskemWarning, RunStoreError, storage_errors
from daskem.model import (
    events_attrs,
    events_from,
    params_arrays,
    params_from,
    stats_arrays,
    stats_from,
    stored_params,
)

# The pointer is a Zarr group of its own whose metadata document daskem writes atomically;
# its attributes name the newest complete checkpoint.
POINTER = "latest/zarr.json"
FORMAT_VERSION = 1


def no_run_store(path: str) -> RunStoreError:
    """The error for a path that holds no run store (inspect, predict, report)."""
    error = RunStoreError(f"no run store at {path}")
    error.remedy = "give the path or URL of a run store that daskem run made"
    return error


class CheckpointWarning(DaskemWarning):
    """A damaged checkpoint was skipped for an older one."""


# Fingerprint entries that must not change while a run is resumed.
FINGERPRINT_KEYS = ("shape", "dtype", "chunk_rows", "features", "chunks", "init_model",
                    "rows")


def package_versions() -> dict:
    out = {}
    for name in ("daskem", "dask", "distributed", "numpy", "scipy", "zarr", "xarray"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _checksum(arrays: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for arr in arrays:
        arr = np.ascontiguousarray(arr)
        digest.update(str(arr.shape).encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def model_checksum(arrays: dict[str, np.ndarray]) -> str:
    """Checksum of a model's arrays, names and values (as ``read_model`` returns them)."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        digest.update(name.encode())
        digest.update(_checksum([arrays[name]]).encode())
    return digest.hexdigest()


def _state_arrays(state: EMState) -> dict[str, np.ndarray]:
    """A state's arrays: its parameters, then (incremental EM) its blocks' statistics."""
    out = params_arrays(state.params)
    out.update(stats_arrays("block", state.blocks))
    out.update(stats_arrays("last", (state.last,) if state.last else ()))
    return out


def _state_keys(group) -> list[str]:
    """The names of a stored state's arrays, in the order :func:`_state_arrays` gives."""
    names = list(group)
    return stored_params(names) + [name for name in ("block", "last") if name in names]


def _state_attrs(state: EMState) -> dict:
    attrs = {
        "n_iter": state.n_iter,
        "converged": state.converged,
        "objectives": [float(v) for v in state.objectives],
        "events": events_attrs(state.events),
        "dropped": state.dropped,
    }
    ctype = getattr(state.params, "covariance_type", None)
    if ctype is not None:
        attrs["covariance_type"] = ctype
    return attrs


def _state_from(arrays: dict[str, np.ndarray], attrs: dict) -> EMState:
    last = stats_from("last", arrays)
    return EMState(params=params_from(arrays, attrs.get("covariance_type")),
                   n_iter=int(attrs["n_iter"]), converged=bool(attrs["converged"]),
                   objectives=tuple(attrs["objectives"]),
                   events=events_from(attrs.get("events", [])),
                   dropped=str(attrs.get("dropped", "")), blocks=stats_from("block", arrays),
                   last=last[0] if last else ())


def format_passes(passes: dict, resumed: bool = False) -> str:
    """``read the data 9 times (summary 1, em 7, outputs 1)``."""
    counts = {k: v for k, v in passes.items() if isinstance(v, int) and not isinstance(v, bool)}
    detail = ", ".join(f"{k} {v}" for k, v in counts.items() if v)
    return (f"read the data {sum(counts.values())} times{' since resuming' if resumed else ''}"
            f" ({detail or 'none'})")


def describe_changes(changed: list[str], old: dict, new: dict) -> str:
    """``shape: [100, 4] -> [120, 4]; chunks: stored chunks differ`` for a message."""
    parts = []
    for key in changed:
        if key == "chunks":
            parts.append("chunks: the stored chunks differ (added, removed or rewritten)")
        elif key == "init_model":
            parts.append("init_model: its parameters differ")
        else:
            parts.append(f"{key}: {old.get(key)} -> {new.get(key)}")
    return "; ".join(parts)


@dataclass
class Pointer:
    group: str
    checksum: str
    step: int


class RunStore:
    """A run store at a local path or fsspec URL; also a checkpointer for ``fit``."""

    def __init__(self, path: str, storage_options: dict | None = None, *,
                 keep_checkpoints: int | None = None) -> None:
        """``keep_checkpoints``: how many of the newest checkpoints to keep (older ones are
        removed once the pointer has moved past them); ``None`` keeps all."""
        import fsspec
        import zarr

        self.path = str(path)
        self.storage_options = storage_options or {}
        self._fs, self._root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        self._zarr = zarr
        self._last_save = time.monotonic()
        self._seconds: list[float] | None = None  # pass timings, kept here once known
        self._forget()
        if keep_checkpoints is not None and keep_checkpoints < 1:
            raise ValueError(f"keep_checkpoints={keep_checkpoints}: keep at least 1")
        self.keep_checkpoints = keep_checkpoints
        # Entered around every write: the job sets it to check that it still owns the store
        # and to hold a stop signal until the write is complete.
        self.guard: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext

    def _forget(self) -> None:
        """Drop what this object knows of the store's checkpoints (made or emptied anew)."""
        self._checkpoints_group = None
        self._names: list[str] | None = None  # checkpoint names, once listed
        self._finished: set[str] = set()  # checkpoints known to be complete

    @contextlib.contextmanager
    def writing(self, what: str) -> Iterator[None]:
        """Around every write (``what``: for an error message)."""
        with self.guard(), storage_errors(what, self.path):
            yield

    # ---------------------------------------------------------------- the group

    def exists(self) -> bool:
        return self._fs.exists(f"{self._root}/zarr.json") or self._fs.exists(
            f"{self._root}/.zgroup")

    def group(self, mode: str = "a"):
        """The store's root Zarr group, read without its consolidated metadata (which is
        written when the store is complete, and may be stale once a job resumes it)."""
        return self._zarr.open_group(self.path, mode=mode, use_consolidated=False,
                                     storage_options=self.storage_options or None)

    @property
    def attrs(self) -> dict:
        return dict(self.group("r").attrs)

    def create(self, config_json: dict | None, config_hash: str | None,
               fingerprint: dict) -> None:
        """Make the store's root group; anything already in it except the lease (taken
        before the store is made) is removed. (``daskem.save`` makes one without a config.)"""
        with self.writing("the run store"):
            group = self.group()
            for name in list(group):
                if name != "lease":
                    del group[name]
            self._forget()
            group.attrs.put({
                "daskem_run_store": FORMAT_VERSION,
                "status": "running",
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "config": config_json,
                "config_hash": config_hash,
                "fingerprint": fingerprint,
                "versions": package_versions(),
            })

    def reset(self) -> None:
        """Remove checkpoints, model, history, selection and outputs (a fit from scratch);
        the root attributes and the lease stay."""
        with self.writing("the run store"):
            group = self.group()
            for name in list(group):
                if name != "lease":
                    del group[name]
        self._forget()
        self._seconds = None

    def fingerprint_changes(self, fingerprint: dict) -> list[str]:
        """The fingerprint entries in which ``fingerprint`` differs from the stored one."""
        old = self.attrs.get("fingerprint", {})
        # A chunk digest is compared where both sides have one (sources that cannot be
        # listed have none, and neither do run stores made before it was recorded).
        return [k for k in FINGERPRINT_KEYS if old.get(k) != fingerprint.get(k)
                and not (k == "chunks" and (old.get(k) is None or fingerprint.get(k) is None))]

    def check_config(self, config_hash: str) -> None:
        """Refuse a store that is not a run store, or was made by another config (checked
        before a job starts a cluster)."""
        attrs = self.attrs
        if attrs.get("daskem_run_store") is None:
            raise RunStoreError(f"{self.path} exists but is not a daskem run store; "
                                "start the run elsewhere with --set run.store=PATH")
        if attrs.get("config_hash") != config_hash:
            error = RunStoreError(f"{self.path} was made by a different config (its data, "
                                  "model or fit section differs)")
            error.remedy = ("start a new run with --set run.store=PATH (another path), or "
                            "delete the store to start over")
            raise error

    def check_compatible(self, config_hash: str, fingerprint: dict, *, force: bool = False) -> None:
        """Refuse a store made by another config, or over data that changed shape."""
        self.check_config(config_hash)
        attrs = self.attrs
        old = attrs.get("fingerprint", {})
        changed = self.fingerprint_changes(fingerprint)
        if changed and self.read_pointer() is None:
            # Nothing to resume from (a run that failed before its first checkpoint, for
            # example on a damaged chunk since repaired): the fit starts over on the data
            # as they are now.
            self.set_status("running", fingerprint=fingerprint)
            return
        if changed and not force:
            what = ("the model it starts from (model.init.from_run)" if changed == ["init_model"]
                    else "the data source")
            raise RunStoreError(
                f"{what} changed since {self.path} was started "
                f"({describe_changes(changed, old, fingerprint)}); rerun with --force to "
                "resume anyway, or start a new run store")

    def set_status(self, status: str, **extra) -> None:
        """Set the store's status. Any change drops the consolidated metadata; ``complete``
        consolidates the whole store's metadata anew (xarray opens each group in one read)."""
        with self.writing("the run store's status"):
            root = self.group()
            root.attrs.update({"status": status, **extra})
            if status == "complete":
                self._consolidate(root)

    def consolidate(self) -> None:
        """Consolidate the store's metadata anew (after writing to a complete store)."""
        with self.writing("the run store's metadata"):
            self._consolidate(self.group())

    def _consolidate(self, root) -> None:
        with warnings.catch_warnings():  # "not part of the Zarr 3 specification"
            warnings.filterwarnings("ignore", "Consolidated metadata")
            self._zarr.consolidate_metadata(root.store, path=root.path)

    # ---------------------------------------------------------------- pointer

    def _pointer_path(self) -> str:
        return f"{self._root}/{POINTER}"

    def _write_pointer(self, pointer: Pointer) -> None:
        document = {"zarr_format": 3, "node_type": "group", "attributes": {
            "group": pointer.group, "checksum": pointer.checksum, "step": pointer.step}}
        data = json.dumps(document).encode()
        target = self._pointer_path()
        if "file" in self._fs.protocol or self._fs.protocol == "local":
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{os.getpid()}"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, target)  # atomic on POSIX: readers see old or new, never half
            finally:
                if os.path.exists(tmp):  # a failed write (disk full) leaves no stray file
                    os.remove(tmp)
        else:
            self._fs.pipe_file(target, data)  # one object write: atomic on object stores

    def read_pointer(self) -> Pointer | None:
        try:
            raw = json.loads(self._fs.cat_file(self._pointer_path()))["attributes"]
            return Pointer(str(raw["group"]), str(raw["checksum"]), int(raw["step"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            warnings.warn(f"{self.path}: unreadable checkpoint pointer {POINTER}; looking "
                          "for checkpoints", CheckpointWarning, stacklevel=2)
            return None

    # ---------------------------------------------------------------- checkpoints

    def save(self, states: list[EMState]) -> None:
        """Write the states as a new checkpoint group, then point to it."""
        step = max(s.n_iter for s in states)
        with self.writing(f"checkpoint iter_{step:06d}"):
            self._save(states)

    def _save(self, states: list[EMState]) -> None:
        step = max(s.n_iter for s in states)
        name = f"iter_{step:06d}"
        values, layout = [], []
        for state in states:
            arrays = _state_arrays(state)
            values.extend(arrays.values())
            layout.append({"state": _state_attrs(state), "arrays": [
                [key, list(np.shape(v)), str(np.asarray(v).dtype)] for key, v in arrays.items()]})
        packed = np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in values])
        now = time.monotonic()
        if self._seconds is None:  # saving without a load first: read them once
            self._seconds = self._stored_seconds()
        self._seconds.append(now - self._last_save)
        self._last_save = now
        checksum = _checksum(values)
        # One array (one chunk) and its metadata: few requests on an object store. Its
        # metadata is written before its chunk; a checkpoint torn between the two fails
        # its checksum and is skipped.
        self._checkpoints().create_array(
            name, data=packed, chunks=(max(len(packed), 1),), dimension_names=("packed",),
            overwrite=True,  # a leftover of a run killed while writing it
            attributes={"step": step, "n_models": len(states), "seconds": list(self._seconds),
                        "checksum": checksum, "states": layout})
        self._write_pointer(Pointer(f"checkpoints/{name}", checksum, step))
        self._prune(name)

    def _checkpoints(self):
        """The ``checkpoints`` group (opened once per store object)."""
        if self._checkpoints_group is None:
            self._checkpoints_group = self.group().require_group("checkpoints")
        return self._checkpoints_group

    def _prune(self, newest: str) -> None:
        """Remove the checkpoints older than the newest ``keep_checkpoints`` complete ones,
        once the pointer names ``newest``: a damaged newest checkpoint still has older ones
        to fall back on, and a job killed while pruning leaves only complete ones."""
        if self.keep_checkpoints is None:
            return
        if self._names is None:  # listed once; then kept up to date here
            self._names = self.checkpoint_names()
        self._names = sorted(set(self._names) | {newest})
        self._finished.add(newest)
        names = [n for n in self._names if n <= newest]
        kept = 0
        for i in range(len(names) - 1, -1, -1):
            kept += self._complete(names[i])
            if kept == self.keep_checkpoints:
                for old in names[:i]:
                    self._fs.rm(f"{self._root}/checkpoints/{old}", recursive=True)
                self._names = [n for n in self._names if n not in names[:i]]
                return

    def _complete(self, name: str) -> bool:
        """Whether checkpoint ``name`` was finished (its checksum is in its metadata)."""
        if name not in self._finished:
            try:
                if "checksum" in self.group("r")[f"checkpoints/{name}"].attrs:
                    self._finished.add(name)
            except Exception:  # noqa: BLE001 - a torn checkpoint can fail in many ways
                return False
        return name in self._finished

    def pass_seconds(self) -> list[float]:
        """Seconds between consecutive checkpoints (the first: start to initialised)."""
        return list(self._seconds) if self._seconds is not None else self._stored_seconds()

    def _stored_seconds(self) -> list[float]:
        pointer = self.read_pointer()
        if pointer is None:
            return []
        try:
            return list(self.group("r")[pointer.group].attrs.get("seconds", []))
        except KeyError:
            return []

    def _read_checkpoint(self, name: str, checksum: str | None) -> list[EMState] | None:
        node = self.group("r")[name]
        attrs = dict(node.attrs)
        states, arrays = [], []
        if "states" in attrs:  # one packed array
            packed, offset = np.asarray(node[...]), 0
            for entry in attrs["states"]:
                values = {}
                for key, shape, dtype in entry["arrays"]:
                    size = int(np.prod(shape, dtype=np.int64))
                    values[key] = packed[offset:offset + size].reshape(shape).astype(dtype)
                    offset += size
                arrays.extend(values.values())
                states.append(_state_from(values, entry["state"]))
        else:  # a group per restart (run stores of an earlier daskem)
            for i in range(int(attrs["n_models"])):
                sub = node[f"model_{i}"]
                keys = _state_keys(sub)
                values = {key: np.asarray(sub[key][...]) for key in keys}
                arrays.extend(values[key] for key in keys)
                states.append(_state_from(values, dict(sub.attrs)))
        # Without its checksum a checkpoint was not finished.
        expected = checksum or attrs.get("checksum")
        if expected is None or _checksum(arrays) != expected:
            return None
        return states

    def checkpoint_names(self) -> list[str]:
        # Listed as folders, not as zarr groups: a job killed while making a group leaves
        # a folder without its zarr.json (or with a partial file), which zarr warns about.
        try:
            entries = self._fs.ls(f"{self._root}/checkpoints", detail=False)
        except FileNotFoundError:
            return []
        names = (str(e).rstrip("/").rsplit("/", 1)[-1] for e in entries)
        return sorted(name for name in names if name.startswith("iter_"))

    def load(self) -> list[EMState] | None:
        """The newest complete, undamaged checkpoint's states (``None`` if there is none)."""
        self._last_save = time.monotonic()
        if not self.exists():  # a fit given a store that is not made yet starts afresh
            self._seconds = []
            return None
        pointer = self.read_pointer()
        candidates = []
        if pointer is not None:
            candidates.append((pointer.group, pointer.checksum))
        names = self._names = self.checkpoint_names()
        newest = pointer.step if pointer is not None else None
        for name in reversed(names):
            step = int(name.split("_")[1])
            if newest is None or step < newest:
                candidates.append((f"checkpoints/{name}", None))
        for i, (name, checksum) in enumerate(candidates):
            try:
                states = self._read_checkpoint(name, checksum)
            except Exception:  # noqa: BLE001 - a torn group can fail in many ways
                states = None
            if states is not None:
                if i:
                    warnings.warn(f"{self.path}: checkpoint {candidates[0][0]} is damaged; "
                                  f"resuming from {name}", CheckpointWarning, stacklevel=2)
                self._seconds = list(self.group("r")[name].attrs.get("seconds", []))
                return states
        self._seconds = []
        return None
