"""The run store's lease: one job at a time, real files and real processes."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
import warnings

import pytest

from daskem.lease import LEASE, STALE_AFTER, Lease, LeaseHeld, LeaseLost

N_RACERS = 8
ROUNDS = 10


def write_lease(store, **attrs) -> None:
    """A lease document written by hand (another job, another host), atomically."""
    record = {"host": "other-host", "pid": 4242, "token": uuid.uuid4().hex,
              "started": time.time() - 3600, "heartbeat": time.time(), "command": "daskem run"}
    record.update(attrs)
    write_raw(store, json.dumps({"zarr_format": 3, "node_type": "group",
                                 "attributes": record}).encode())


def write_raw(store, data: bytes) -> None:
    target = os.path.join(store, LEASE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(f"{target}.by-hand", "wb") as fh:
        fh.write(data)
    os.replace(f"{target}.by-hand", target)


def stored(store) -> dict:
    with open(os.path.join(store, LEASE), "rb") as fh:
        return json.load(fh)["attributes"]


@pytest.fixture
def quick_settle(monkeypatch):
    """A shorter settle time for tests of one process: nobody else is writing. (The race
    and the killed-owner tests keep the real one.)"""
    import daskem.lease

    monkeypatch.setattr(daskem.lease, "_SETTLE", 0.05)


def wait_for(condition, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ---------------------------------------------------------------- one process


def test_second_job_is_refused_until_release(tmp_path):
    store = str(tmp_path / "run.zarr")  # not made yet: the lease comes first
    first = Lease(store)
    first.acquire()
    owner = stored(store)
    assert owner["token"] == first.token and owner["pid"] == os.getpid()
    assert owner["host"] == socket.gethostname() and len(owner["command"]) <= 200

    second = Lease(store)  # same host, same (live) pid, other token: held, not stale
    with pytest.raises(LeaseHeld) as info:
        second.acquire()
    message = str(info.value)
    assert f"host {socket.gethostname()}, pid {os.getpid()}" in message
    assert message.startswith(f"run.store {store} is in use by another daskem job")
    assert "taken over" in message and "\n" not in message
    assert info.value.owner["token"] == first.token
    assert isinstance(info.value, ValueError)

    first.release()
    assert not os.path.exists(os.path.join(store, LEASE))
    second.acquire()
    assert second.taken_over is None and stored(store)["token"] == second.token
    first.release()  # not its lease any more: leaves it alone
    assert stored(store)["token"] == second.token
    second.release()
    assert not os.path.exists(os.path.join(store, "lease"))


def test_another_hosts_lease_is_taken_over_only_when_stale(tmp_path, quick_settle):
    store = str(tmp_path / "run.zarr")
    write_lease(store, heartbeat=time.time() - 5)  # renewed 5 s ago: live
    with pytest.raises(LeaseHeld, match=r"host other-host, pid 4242, .*renewed 5 s ago"):
        Lease(store).acquire()
    with pytest.raises(LeaseHeld):  # a shorter stale_after is what makes it stale
        Lease(store, stale_after=10).acquire()

    write_lease(store, heartbeat=time.time() - STALE_AFTER - 5)
    lease = Lease(store)
    lease.acquire()
    assert lease.taken_over["host"] == "other-host" and lease.taken_over["pid"] == 4242
    assert stored(store)["token"] == lease.token
    assert not [n for n in os.listdir(os.path.join(store, "lease")) if n != "zarr.json"]
    lease.release()

    write_lease(store, heartbeat=time.time() - 5)
    Lease(store, stale_after=4, heartbeat_every=1).acquire()


def test_garbled_lease_is_taken_over(tmp_path, quick_settle):
    store = str(tmp_path / "run.zarr")
    write_raw(store, b"{not json")
    lease = Lease(store)
    owner = lease.read_owner()
    assert owner["garbled"] and owner["token"] is None
    lease.acquire()
    assert lease.taken_over["garbled"]
    assert stored(store)["token"] == lease.token

    other = str(tmp_path / "other.zarr")  # JSON, but not a lease (no owner fields)
    write_raw(other, b'{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    taker = Lease(other)
    taker.acquire()
    assert taker.taken_over["garbled"]


def test_garbled_lease_being_written_is_not_taken_over(tmp_path):
    # Where a lease can be seen before it is complete (an O_EXCL create, the memory
    # filesystem), garbled means stale only if it stays garbled for the settle time.
    import threading

    store = str(tmp_path / "run.zarr")
    target = os.path.join(store, LEASE)
    os.makedirs(os.path.dirname(target))
    record = {"host": "slow-writer", "pid": 5, "token": "t" * 32, "started": time.time(),
              "heartbeat": time.time(), "command": "daskem run"}
    data = json.dumps({"zarr_format": 3, "node_type": "group", "attributes": record})
    fh = open(target, "w")  # created, still empty: its writer writes through this handle

    def finish():
        fh.write(data)
        fh.close()

    writer = threading.Timer(0.1, finish)
    writer.start()
    try:
        with pytest.raises(LeaseHeld, match="host slow-writer, pid 5"):
            Lease(store).acquire()
    finally:
        writer.join()
        fh.close()
    assert stored(store)["host"] == "slow-writer"


def test_lease_renewed_after_it_was_judged_stale_is_left_alone(tmp_path):
    # A taker read a stale lease; before it wrote, the owner renewed it (or another taker
    # replaced it). The taker must not overwrite what is now a live lease.
    store = str(tmp_path / "run.zarr")
    write_lease(store, heartbeat=time.time() - 600)
    with open(os.path.join(store, LEASE), "rb") as fh:
        judged = fh.read()
    write_lease(store, host="winner-host", pid=77)
    with open(os.path.join(store, LEASE), "rb") as fh:
        fresh = fh.read()
    assert Lease(store)._take_over(judged) is False
    with open(os.path.join(store, LEASE), "rb") as fh:
        assert fh.read() == fresh
    with pytest.raises(LeaseHeld, match="host winner-host, pid 77"):
        Lease(store).acquire()
    assert os.listdir(os.path.join(store, "lease")) == ["zarr.json"]


def test_heartbeat_renews_and_exit_removes(tmp_path):
    store = str(tmp_path / "run.zarr")
    with Lease(store, heartbeat_every=0.1) as lease:
        first = stored(store)["heartbeat"]
        assert wait_for(lambda: stored(store)["heartbeat"] > first, timeout=2)
        later = stored(store)
        assert later["token"] == lease.token and later["started"] == pytest.approx(first)
        lease.check()
        assert lease.heartbeat_error is None
    assert not os.path.exists(os.path.join(store, LEASE))
    assert not os.path.exists(os.path.join(store, "lease"))


def test_exit_does_not_wait_for_the_next_beat(tmp_path):
    store = str(tmp_path / "run.zarr")
    with Lease(store, heartbeat_every=30) as lease:
        thread = lease._thread
    start = time.monotonic()
    with Lease(store, heartbeat_every=30):
        pass
    assert time.monotonic() - start < 1.0
    assert not thread.is_alive()


def test_check_raises_after_another_job_took_the_lease(tmp_path):
    store = str(tmp_path / "run.zarr")
    with Lease(store, heartbeat_every=30) as lease:
        lease.check()
        write_lease(store, host="thief", pid=99)
        with pytest.raises(LeaseLost) as info:
            lease.check()
        assert str(info.value) == (f"run.store {store}: another job took over this job's "
                                   "lease (host thief, pid 99); stopping without writing more")
        assert isinstance(info.value, RuntimeError)
    assert stored(store)["host"] == "thief"  # not ours: exit left it in place

    os.remove(os.path.join(store, LEASE))
    lease = Lease(store)
    lease.acquire()
    write_lease(store, host="thief", pid=99)
    lease.release()  # without a check first: it still must not remove the thief's lease
    assert stored(store)["host"] == "thief"

    os.remove(os.path.join(store, LEASE))
    with Lease(store, heartbeat_every=30) as lease:
        os.remove(os.path.join(store, LEASE))
        with pytest.raises(LeaseLost, match="lease was removed"):
            lease.check()


def test_heartbeat_thread_notices_the_loss(tmp_path):
    store = str(tmp_path / "run.zarr")
    with Lease(store, heartbeat_every=0.05) as lease:
        ours = open(os.path.join(store, LEASE), "rb").read()
        write_lease(store, host="thief", pid=99)
        assert wait_for(lambda: lease.lost is not None, timeout=2)
        assert lease.lost["host"] == "thief"
        assert wait_for(lambda: not lease._thread.is_alive(), timeout=2)
        write_raw(store, ours)  # the document says ours again, the loss stays recorded
        with pytest.raises(LeaseLost, match="host thief, pid 99"):
            lease.check()
        write_lease(store, host="thief", pid=99)
        time.sleep(0.2)  # the stopped thread no longer rewrites the document
        assert stored(store)["host"] == "thief"


def test_heartbeat_survives_a_failed_write(tmp_path, monkeypatch):
    import daskem.lease

    store = str(tmp_path / "run.zarr")
    calls = []

    def disk_full(path, data):  # writes half of the file, then fails
        calls.append(path)
        with open(path, "wb") as fh:
            fh.write(data[: len(data) // 2])
        raise OSError(28, "No space left on device")

    with Lease(store, heartbeat_every=0.05) as lease:
        first = stored(store)["heartbeat"]
        monkeypatch.setattr(daskem.lease, "_write_synced", disk_full)
        assert wait_for(lambda: len(calls) >= 2, timeout=2)
        assert "No space left" in str(lease.heartbeat_error)
        assert lease._thread.is_alive()
        lease.check()  # the document is still ours, only older
        monkeypatch.undo()
        assert wait_for(lambda: stored(store)["heartbeat"] > first, timeout=2)
        assert wait_for(lambda: lease.heartbeat_error is None, timeout=2)
        monkeypatch.setattr(daskem.lease, "_write_synced", disk_full)
        assert wait_for(lambda: lease.heartbeat_error is not None, timeout=2)
    assert not os.path.exists(os.path.join(store, "lease"))  # half-written temp file too


def test_zarr_sees_the_lease_as_a_group(tmp_path):
    import zarr

    store = str(tmp_path / "run.zarr")
    with Lease(store, heartbeat_every=0.05):  # before the run store exists
        group = zarr.open_group(store, mode="a")
        group.attrs["status"] = "running"
        group.create_group("checkpoints")
        time.sleep(0.15)  # a few renewals
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            names = sorted(name for name, _ in zarr.open_group(store, mode="r").members())
        assert names == ["checkpoints", "lease"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        names = sorted(name for name, _ in zarr.open_group(store, mode="r").members())
        assert names == ["checkpoints"]  # released: no empty lease/ folder left behind
        assert zarr.open_group(store, mode="r").attrs["status"] == "running"


def test_fsspec_memory_filesystem():
    store = f"memory://daskem-lease-{uuid.uuid4().hex}/run.zarr"
    first, second = Lease(store), Lease(store)
    first.acquire()
    assert not first._no_xb  # memory supports exclusive create ("xb")
    assert first.read_owner()["token"] == first.token
    with pytest.raises(LeaseHeld, match=f"pid {os.getpid()}"):
        second.acquire()
    assert not second._no_xb  # refused by the exclusive create itself
    first.release()
    assert first.read_owner() is None
    with second:
        second.check()
    assert second.read_owner() is None


def test_filesystem_without_exclusive_create(monkeypatch, quick_settle):
    store = f"memory://daskem-lease-{uuid.uuid4().hex}/run.zarr"
    first, second = Lease(store), Lease(store)
    fs = first._fs
    real_open = fs.open

    def no_xb(path, mode="rb", **kwargs):
        if "x" in mode:
            raise ValueError(f"unsupported file mode: {mode!r}")
        return real_open(path, mode, **kwargs)

    monkeypatch.setattr(fs, "open", no_xb)
    first.acquire()
    assert first._no_xb and first.read_owner()["token"] == first.token
    with pytest.raises(LeaseHeld):
        second.acquire()
    first.release()
    second.acquire()
    second.release()


# ---------------------------------------------------------------- processes


def _racer(paths, barrier, results, index):
    from daskem.lease import Lease, LeaseHeld

    for path in paths:
        barrier.wait(timeout=60)
        lease = Lease(path)
        try:
            lease.acquire()
            outcome = "won"
        except LeaseHeld:
            outcome = "held"
        except Exception as exc:  # noqa: BLE001 - reported to the test
            outcome = repr(exc)
        results.put((path, index, outcome, lease.taken_over is not None))
        barrier.wait(timeout=60)  # everyone has tried while the winner still holds it
        if outcome == "won":
            lease.release()


def _race(paths):
    # A fork server imports daskem (and dask) once and each racer is a fork of it: eight
    # racers start in a fraction of a second, not eight interpreters importing dask.
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["daskem.lease", "pytest"])
    barrier, results = ctx.Barrier(N_RACERS), ctx.Queue()
    procs = [ctx.Process(target=_racer, args=(paths, barrier, results, i))
             for i in range(N_RACERS)]
    for proc in procs:
        proc.start()
    outcomes = [results.get(timeout=60) for _ in range(N_RACERS * len(paths))]
    for proc in procs:
        proc.join(timeout=60)
        assert proc.exitcode == 0
    by_path = {path: [] for path in paths}
    for path, _, outcome, took_over in outcomes:
        by_path[path].append((outcome, took_over))
    return by_path


def test_race_one_winner_among_processes(tmp_path):
    fresh = [str(tmp_path / f"fresh_{r}" / "run.zarr") for r in range(ROUNDS)]
    stale = [str(tmp_path / f"stale_{r}" / "run.zarr") for r in range(ROUNDS // 2)]
    for path in stale:  # all racers judge it stale and race to take it over
        write_lease(path, heartbeat=time.time() - 600)
    by_path = _race(fresh + stale)
    for path, outcomes in by_path.items():
        names = sorted(o for o, _ in outcomes)
        assert names == ["held"] * (N_RACERS - 1) + ["won"], (path, names)
        assert [t for o, t in outcomes if o == "won"] == [path in stale]
        assert not os.path.exists(os.path.join(path, LEASE))  # the winner released it


def test_killed_owner_on_this_host_is_taken_over_at_once(tmp_path):
    store = str(tmp_path / "run.zarr")
    code = ("import sys, time; from daskem.lease import Lease; "
            "Lease(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, store], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        with pytest.raises(LeaseHeld, match=f"pid {proc.pid}"):
            Lease(store).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()  # reaped: a zombie would still answer kill(pid, 0)
        proc.stdout.close()
    assert stored(store)["pid"] == proc.pid  # its lease is still there, and fresh
    lease = Lease(store)  # default stale_after: a minute, yet no waiting
    start = time.monotonic()
    lease.acquire()
    assert time.monotonic() - start < 1.0
    assert lease.taken_over["pid"] == proc.pid
    assert lease.taken_over["host"] == socket.gethostname()
    assert stored(store)["token"] == lease.token
    lease.release()
