"""The run store's lease: one job at a time writes a run store.

A cron job fired twice, or a job restarted while the first is still running, must not have
two jobs writing the same checkpoints. The job that owns a run store keeps a small document
in it, ``lease/zarr.json``, naming the owner (host, process id, a random token, when it
started, when it last renewed the lease, its command line). The document is a Zarr v3 group
document so that zarr sees a group named ``lease`` and reports no stray object in the run
store; the owner record is its attributes.

Taking the lease is an exclusive create, so of two jobs starting together exactly one wins:

* local filesystem: the document is written to a temporary file and hard-linked into place
  (``link`` fails when the name exists, and readers never see a half-written lease, which
  they would judge garbled and take over); where hard links are not supported,
  ``O_CREAT | O_EXCL`` and then the contents;
* other fsspec filesystems: ``open(path, "xb")`` (a conditional write on S3, GCS and Azure);
  a filesystem without exclusive create falls back to check, write, wait, read back.

A lease is *stale*, and the next job takes it over, when it has not been renewed for
``stale_after`` seconds (default :data:`STALE_AFTER`), or at once when it names a process on
this machine that no longer exists (a job killed with SIGKILL leaves its lease behind; the
next run need not wait). A document that cannot be read as a lease (not JSON, fields
missing) and stays so for a moment is stale as well. Staleness by time compares the
owner's clock with the reader's: hosts whose clocks differ by a good part of
``stale_after`` can misjudge each other.

Taking over a stale lease is itself a race between jobs that judged it stale together.
A taker checks that the document is still the one it judged stale (the owner may have
renewed it), overwrites it in one step (rename over it locally, one object write on
object stores), waits a moment for the other takers' writes to land and reads it back:
the job whose token stayed holds the lease, the others are refused. The document is never
removed on the way, so a job starting meanwhile finds a lease and does not create one.

While it runs, the owner renews the lease from a daemon thread (every
``heartbeat_every`` seconds) and, before writing, calls :meth:`Lease.check`; a job that
finds another job's token in the document has lost the lease and must stop. The token in
the document is the truth: should two jobs ever both believe they hold the lease (a
renewal racing a takeover), the one whose token is not in the document finds out at its
next check or renewal.
"""

from __future__ import annotations

import functools
import json
import math
import os
import socket
import sys
import threading
import time
import uuid

from daskem.errors import DaskemError, ParameterError

# The lease is a Zarr group of its own, inside the run store, whose metadata document
# daskem creates exclusively and replaces atomically; its attributes name the owner.
LEASE = "lease/zarr.json"

# Seconds without a renewal after which a lease is stale and the next job takes it over.
# The owner renews every STALE_AFTER / 6 seconds by default, so a lease goes stale only
# when its job died (or hung, or lost its connection to the store) a minute ago; and a
# second job started by mistake waits no longer than that to be allowed in.
STALE_AFTER = 60.0

FORMAT_VERSION = 1
_COMMAND_CHARS = 200
# Seconds a taker (and a create without "xb") waits for concurrent writes to land before it
# reads back whose document stayed; also how long a garbled document must stay unchanged
# (it may be mid-write) to count as stale.
_SETTLE = 0.5
_ATTEMPTS = 8  # acquire's rounds of create / judge / take over before it gives up


class LeaseHeld(DaskemError, ValueError):
    """Another live job owns the run store."""

    def __init__(self, message: str, owner: dict) -> None:
        super().__init__(message)
        self.owner = owner


class LeaseLost(DaskemError, RuntimeError):
    """Another job took over this job's lease while this job held it."""

    def __init__(self, message: str, owner: dict | None = None) -> None:
        super().__init__(message)
        self.owner = owner


@functools.lru_cache(maxsize=1)
def _machine() -> dict:
    """This boot of this machine and this pid namespace (Linux), beyond the host name.

    Containers sharing a host name (``--uts=host``) or two machines both called
    ``localhost`` would otherwise judge each other's process ids, find them missing, and
    take over live leases. Unknown values (other systems) are not compared.
    """
    out: dict = {"boot_id": None, "pid_ns": None}
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            out["boot_id"] = fh.read().strip() or None
    except OSError:
        pass
    try:
        out["pid_ns"] = os.readlink("/proc/self/ns/pid")
    except (OSError, AttributeError):
        pass
    return out


def _same_machine(owner: dict) -> bool:
    if owner.get("host") != socket.gethostname():
        return False
    for key, mine in _machine().items():
        theirs = owner.get(key)
        if mine is not None and theirs is not None and theirs != mine:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    if pid <= 0:  # 0 and -1 address groups of processes, not one: cannot tell
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, as another user's process
        return True
    return True


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _parse(raw: bytes) -> dict:
    """The owner record in a lease document; a record marked ``garbled`` if unreadable."""
    try:
        attrs = json.loads(raw)["attributes"]
        if not (isinstance(attrs["token"], str) and isinstance(attrs["host"], str)
                and isinstance(attrs["pid"], int) and not isinstance(attrs["pid"], bool)
                and _is_number(attrs["heartbeat"])):
            raise TypeError("owner fields of the wrong type")
        return dict(attrs)
    except (ValueError, KeyError, TypeError, IndexError) as exc:
        return {"garbled": True, "error": f"{type(exc).__name__}: {exc}", "host": None,
                "pid": None, "token": None, "started": None, "heartbeat": None,
                "command": None}


def _when(stamp) -> str:
    if not _is_number(stamp):
        return "?"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def _write_synced(path: str, data: bytes) -> None:
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: str) -> None:
    """Make a new name in the directory durable; best effort (not every system can)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class Lease:
    """The lease on the run store at ``store_path`` (a local path or an fsspec URL).

    ``with Lease(path):`` takes the lease (or raises :class:`LeaseHeld`), renews it from a
    daemon thread every ``heartbeat_every`` seconds (default ``stale_after / 6``) and gives
    it back on exit. :meth:`acquire` alone takes it without renewing it. Call
    :meth:`check` before each write to the run store.
    """

    def __init__(self, store_path: str, storage_options: dict | None = None, *,
                 stale_after: float = STALE_AFTER,
                 heartbeat_every: float | None = None) -> None:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        if not (_is_number(stale_after) and stale_after > 0):
            raise ParameterError(f"stale_after must be a positive number of seconds, "
                                 f"got {stale_after!r}")
        if heartbeat_every is None:
            heartbeat_every = stale_after / 6
        if not (_is_number(heartbeat_every) and 0 < heartbeat_every < stale_after):
            raise ParameterError(f"heartbeat_every must be positive and below stale_after "
                                 f"({stale_after}), got {heartbeat_every!r}")
        self.path = str(store_path)
        self.storage_options = storage_options or {}
        self.stale_after = float(stale_after)
        self.heartbeat_every = float(heartbeat_every)
        self._fs, root = fsspec.core.url_to_fs(self.path, **self.storage_options)
        self._target = f"{root.rstrip('/')}/{LEASE}"
        self._local = isinstance(self._fs, LocalFileSystem)
        self._no_xb = False  # set once the filesystem refused mode "xb"
        self.token = uuid.uuid4().hex
        self._record: dict | None = None
        self._held = False
        self._lost: dict | None = None  # the record found instead of ours; {} if gone
        self._taken_over: dict | None = None
        self._renewed = 0.0  # time.monotonic() of the last renewal seen to succeed
        self._lock = threading.Lock()  # a renewal, a check and a release never interleave
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.heartbeat_error: BaseException | None = None  # the last failed renewal's error

    # ---------------------------------------------------------------- public

    @property
    def taken_over(self) -> dict | None:
        """The stale owner record this job took over when it acquired the lease, if any."""
        return self._taken_over

    @property
    def lost(self) -> dict | None:
        """What replaced our lease, once a check or renewal found it gone (``{}``: no lease
        at all); ``None`` while the lease is ours."""
        return self._lost

    def read_owner(self) -> dict | None:
        """The stored owner record, ``None`` if there is no lease.

        An unreadable document gives a record with ``garbled: True`` (and ``host``,
        ``pid`` ... ``None``): such a lease counts as stale.
        """
        raw = self._read()
        return None if raw is None else _parse(raw)

    def acquire(self) -> None:
        """Take the lease, taking over a stale one; raise :class:`LeaseHeld` if a live job
        holds it."""
        if self._held:
            return
        self._taken_over = None
        self._record = self._new_record()
        owner: dict = {}
        for _ in range(_ATTEMPTS):
            if self._create():
                return self._now_held()
            raw = self._read()
            if raw is None:  # released since the create failed: again
                continue
            owner = _parse(raw)
            if owner.get("garbled"):
                # A document may be visible before it is complete (memory filesystem,
                # O_EXCL fallback): garbled means stale only if it stays the same.
                time.sleep(_SETTLE)
                if self._read() != raw:
                    continue
            elif not self._is_stale(owner):
                raise self._held_error(owner)
            if self._take_over(raw):
                self._taken_over = owner
                return self._now_held()
        raise self._held_error(owner)

    def release(self) -> None:
        """Remove the lease document, only if it still carries this job's token."""
        self._stop.set()
        with self._lock:
            if not self._held:
                return
            self._held = False
            if self._lost is not None:
                return  # another job's lease now: leave it alone
            if self._local:
                self._release_local()
            else:
                raw = self._read()
                if raw is not None and _parse(raw).get("token") == self.token:
                    try:
                        self._fs.rm_file(self._target)
                    except FileNotFoundError:
                        pass

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless the stored lease still carries our token."""
        with self._lock:
            if self._lost is None and not self._held:
                self._lost = {}
            if self._lost is None:
                try:
                    raw = self._read()
                except OSError:
                    # The store is unreachable for a moment. Nobody can have judged the
                    # lease stale before stale_after has passed since our last renewal.
                    if time.monotonic() - self._renewed < self.stale_after:
                        return
                    raise
                owner = {} if raw is None else _parse(raw)
                if owner.get("token") != self.token:
                    self._lost = owner
            if self._lost is not None:
                raise self._lost_error(self._lost)

    def __enter__(self) -> Lease:
        self.acquire()
        self._stop.clear()
        self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                        name=f"daskem-lease-{self.token[:8]}")
        self._thread.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        try:
            self.release()
        except Exception:
            if exc_type is None:
                raise
            # The job's own error matters more; the lease goes stale by itself.

    # ---------------------------------------------------------------- records

    def _new_record(self) -> dict:
        now = time.time()
        return {"daskem_lease": FORMAT_VERSION, "host": socket.gethostname(),
                "pid": os.getpid(), "token": self.token, "started": now, "heartbeat": now,
                "command": " ".join(sys.argv)[:_COMMAND_CHARS], **_machine()}

    def _document(self) -> bytes:
        return json.dumps({"zarr_format": 3, "node_type": "group",
                           "attributes": self._record}, indent=2).encode()

    def _is_stale(self, owner: dict) -> bool:
        if owner.get("garbled"):
            return True
        if time.time() - owner["heartbeat"] > self.stale_after:
            return True
        return _same_machine(owner) and not _pid_alive(owner["pid"])

    def _held_error(self, owner: dict) -> LeaseHeld:
        age = time.time() - owner["heartbeat"] if _is_number(owner.get("heartbeat")) else math.nan
        return LeaseHeld(
            f"run.store {self.path} is in use by another daskem job (host "
            f"{owner.get('host') or '?'}, pid {owner.get('pid') or '?'}, started "
            f"{_when(owner.get('started'))}, lease renewed {age:.0f} s ago); a lease not "
            f"renewed for {self.stale_after:.0f} s is taken over", owner)

    def _lost_error(self, owner: dict) -> LeaseLost:
        if not owner:
            what = "this job's lease was removed (by another job or by hand)"
        elif owner.get("garbled"):
            what = "this job's lease was overwritten with an unreadable document"
        else:
            what = (f"another job took over this job's lease (host {owner.get('host')}, "
                    f"pid {owner.get('pid')})")
        return LeaseLost(f"run.store {self.path}: {what}; stopping without writing more",
                         owner)

    def _now_held(self) -> None:
        self._held = True
        self._lost = None
        self.heartbeat_error = None
        self._renewed = time.monotonic()
        if self._local:
            self._sweep()

    # ---------------------------------------------------------------- storage

    def _read(self) -> bytes | None:
        try:
            if self._local:
                with open(self._target, "rb") as fh:
                    return fh.read()
            return self._fs.cat_file(self._target)
        except FileNotFoundError:
            return None

    def _create(self) -> bool:
        """Exclusive create of our document: ``True`` if it is now ours."""
        return self._create_local() if self._local else self._create_remote()

    def _create_local(self) -> bool:
        folder = os.path.dirname(self._target)
        os.makedirs(folder, exist_ok=True)
        tmp = f"{self._target}.new-{self.token}"
        try:
            _write_synced(tmp, self._document())
        except FileNotFoundError:  # a release removed the empty folder meanwhile: again
            return False
        try:
            os.link(tmp, self._target)  # fails if the name exists: one winner
        except (FileExistsError, FileNotFoundError):
            return False
        except OSError:  # no hard links here (some network and FAT filesystems)
            return self._create_excl(self._document())
        finally:
            _unlink(tmp)
        _fsync_dir(folder)
        return True

    def _create_excl(self, data: bytes) -> bool:
        try:
            fd = os.open(self._target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        return True

    def _create_remote(self) -> bool:
        data = self._document()
        if not self._no_xb:
            try:
                fh = self._fs.open(self._target, "xb")
            except FileExistsError:
                return False
            except Exception:  # noqa: BLE001 - no exclusive create on this filesystem
                self._no_xb = True
            else:
                try:
                    with fh:
                        fh.write(data)
                except FileExistsError:  # s3fs and others find out on the final write
                    return False
                return True
        # Without exclusive create: write if absent, let concurrent writes land, and keep
        # the lease only if ours is the document that stayed.
        self._fs.invalidate_cache(self._target)
        if self._fs.exists(self._target):
            return False
        self._fs.pipe_file(self._target, data)
        time.sleep(_SETTLE)
        raw = self._read()
        return raw is not None and _parse(raw).get("token") == self.token

    def _take_over(self, raw: bytes) -> bool:
        """Replace the stale document ``raw`` by ours; ``True`` if ours is the one that
        stayed, ``False`` to look again.

        The stale document is overwritten in one step, never removed first: a lease that
        vanished even for a moment would let a job that just started create its own, and
        a taker that judged the stale document a little late could then remove that fresh
        lease instead. Jobs taking over together each overwrite it; the last write stays,
        and each reads back after :data:`_SETTLE` seconds whose it is.
        """
        if self._read() != raw:  # renewed, replaced or released since it was judged
            return False
        if self._local:
            tmp = f"{self._target}.new-{self.token}"
            try:
                _write_synced(tmp, self._document())
            except FileNotFoundError:  # released, folder and all
                return False
            os.replace(tmp, self._target)
            _fsync_dir(os.path.dirname(self._target))
        else:
            self._fs.pipe_file(self._target, self._document())
        time.sleep(_SETTLE)
        got = self._read()
        return got is not None and _parse(got).get("token") == self.token

    def _release_local(self) -> None:
        raw = self._read()
        if raw is None or _parse(raw).get("token") != self.token:
            return  # taken over meanwhile: not ours to remove
        aside = f"{self._target}.release-{self.token}"
        try:
            os.rename(self._target, aside)
        except FileNotFoundError:
            return
        with open(aside, "rb") as fh:
            moved = fh.read()
        if _parse(moved).get("token") != self.token:  # taken over since the read
            try:
                os.link(aside, self._target)
            except FileExistsError:
                pass
        _unlink(aside)
        for kind in ("new", "beat"):  # left by a renewal that failed half-way
            _unlink(f"{self._target}.{kind}-{self.token}")
        try:
            # An empty lease/ folder is an object zarr does not recognise (and warns).
            os.rmdir(os.path.dirname(self._target))
        except OSError:
            pass

    def _sweep(self) -> None:
        """Remove temporary files that crashed jobs left next to the lease (zarr warns
        about them), once they are older than a stale lease."""
        folder, name = os.path.split(self._target)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            return
        for entry in entries:
            if not entry.name.startswith(f"{name}.") or self.token in entry.name:
                continue
            try:
                if time.time() - entry.stat().st_mtime > self.stale_after:
                    os.unlink(entry.path)
            except OSError:
                pass

    # ---------------------------------------------------------------- heartbeat

    def _heartbeat(self) -> None:
        """Renew the lease until stopped or lost. Never raises: an error is recorded in
        ``heartbeat_error`` and the renewal retried at the next beat."""
        while not self._stop.wait(self.heartbeat_every):
            try:
                with self._lock:
                    if self._stop.is_set() or not self._held or self._lost is not None:
                        return
                    self._renew()
                self.heartbeat_error = None
            except Exception as exc:  # noqa: BLE001 - the thread must outlive a bad beat
                self.heartbeat_error = exc
            if self._lost is not None:
                return

    def _renew(self) -> None:
        raw = self._read()
        owner = {} if raw is None else _parse(raw)
        if owner.get("token") != self.token:
            self._lost = owner
            return
        self._record = {**self._record, "heartbeat": time.time()}
        data = self._document()
        if self._local:
            tmp = f"{self._target}.beat-{self.token}"
            _write_synced(tmp, data)
            os.replace(tmp, self._target)  # readers see the old or the new, never half
        else:
            self._fs.pipe_file(self._target, data)  # one object write
        self._renewed = time.monotonic()
