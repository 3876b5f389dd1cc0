"""The faults a scheduled ``daskem run`` really meets, on the real command and real stores.

Each test damages or disturbs one thing (a chunk of the input, the working directory of
the workers, a second copy of the job, a stop signal, a full disk) and checks that the job
either succeeds with the right model and outputs, or fails with the right exit code and
one line that names the cause, writes no model, and can be rerun to the same result as an
undisturbed run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
import zarr
from conftest import run_cli, start_cli, synthetic_store

from daskem.model import load_estimator, read_history, read_model
from daskem.store import RunStore

pytestmark = pytest.mark.distributed

MODEL = {"kind": "gmm", "n_components": 3, "covariance_type": "diag", "max_iter": 40,
         "tol": 0.0, "random_state": 5}
CLUSTER = {"n_workers": 2, "threads_per_worker": 1, "dashboard_address": None}
N_ROWS, CHUNK_ROWS = 40_000, 10_000  # four chunks; the last one, X/c/3/0, is damaged






def write_config(path: Path, data: str, store: str, **sections) -> Path:
    sections.setdefault("cluster", CLUSTER)
    path.write_text(yaml.safe_dump({"data": {"path": data}, "model": MODEL,
                                    "run": {"store": store}, **sections}))
    return path


def error_line(stderr: str) -> str:
    """The one ``daskem: error:`` line, which must also be the last line."""
    ours = [line for line in stderr.splitlines() if line.startswith("daskem: error:")]
    assert len(ours) == 1, stderr
    assert stderr.strip().splitlines()[-1] == ours[0], stderr
    return ours[0]


def has_model(store: Path) -> bool:
    return (store / "zarr.json").exists() and "model" in zarr.open_group(str(store), mode="r")


def assert_same_model(store: Path, reference: Path) -> None:
    a, b = RunStore(str(reference)), RunStore(str(store))
    ma, mb = read_model(a).arrays, read_model(b).arrays
    assert sorted(ma) == sorted(mb)
    for name in ma:
        np.testing.assert_array_equal(ma[name], mb[name], err_msg=name)
    np.testing.assert_array_equal(read_history(a)["objective"], read_history(b)["objective"])


def wait_for_step(store: Path, proc, step: int, timeout: float = 240) -> int:
    pointer = store / "latest" / "zarr.json"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.exists():
            try:
                reached = json.loads(pointer.read_text())["attributes"]["step"]
            except ValueError:
                reached = -1
            if reached >= step:
                return reached
        time.sleep(0.02)
    raise AssertionError(f"the run ended or stalled before checkpoint {step}: "
                         f"{proc.poll()}")


@pytest.fixture(scope="module")
def data_store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("jobdata") / "data.zarr", N_ROWS, 4, 3,
                           chunk_rows=CHUNK_ROWS, seed=5)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_store):
    """An undisturbed run of the same config (the run store is not part of its hash)."""
    home = tmp_path_factory.mktemp("reference")
    config = write_config(home / "ref.yaml", str(data_store), str(home / "ref.zarr"))
    result = run_cli("run", str(config), "-q")
    assert result.returncode == 0, result.stderr
    return home / "ref.zarr"


# ------------------------------------------------------------------ damaged input chunks


def damage(chunk: Path, how: str) -> None:
    if how == "deleted":
        chunk.unlink()
    elif how == "garbled":  # one byte flipped in the middle, as bit rot does
        raw = bytearray(chunk.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        chunk.write_bytes(bytes(raw))
    else:  # truncated, as an interrupted copy leaves it
        raw = chunk.read_bytes()
        chunk.write_bytes(raw[: len(raw) // 2])


@pytest.mark.parametrize("how", ["deleted", "garbled", "truncated"])
def test_damaged_chunk_exits_3_naming_it_then_fits_once_restored(tmp_path, data_store,
                                                                  reference, how):
    data = tmp_path / "data.zarr"
    shutil.copytree(data_store, data)
    chunk = data / "X" / "c" / "3" / "0"
    good = chunk.read_bytes()
    damage(chunk, how)
    config = write_config(tmp_path / "job.yaml", str(data), str(tmp_path / "run.zarr"))

    validate = run_cli("validate", str(config))
    if how == "deleted":  # seen in the store's listing, before any chunk is read
        assert validate.returncode == 3, validate.stdout + validate.stderr
        assert "X/c/3/0" in error_line(validate.stderr)
    result = run_cli("run", str(config), "-q")
    assert result.returncode == 3, result.stdout + result.stderr
    line = error_line(result.stderr)
    assert "X/c/3/0" in line and "30,000" in line and "39,999" in line, line
    assert ("missing" if how == "deleted" else "cannot be read") in line, line
    assert not has_model(tmp_path / "run.zarr")

    chunk.write_bytes(good)  # restored
    rerun = run_cli("run", str(config), "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert_same_model(tmp_path / "run.zarr", reference)


def test_chunk_changed_after_a_complete_run_is_not_nothing_to_do(tmp_path, data_store,
                                                                 reference):
    """A complete run store remembers the data's chunks: a store changed since is refused
    (exit 2) rather than reported complete; --force fits it again."""
    data = tmp_path / "data.zarr"
    shutil.copytree(data_store, data)
    store = tmp_path / "run.zarr"
    config = write_config(tmp_path / "job.yaml", str(data), str(store))
    assert run_cli("run", str(config), "-q").returncode == 0
    again = run_cli("run", str(config))
    assert again.returncode == 0 and "nothing to do" in again.stdout

    chunk = data / "X" / "c" / "1" / "0"
    values = zarr.open_array(str(data), path="X", mode="a")
    values[15_000, 0] = values[15_000, 0] + 100.0  # one value rewritten
    changed = run_cli("run", str(config), "-q")
    assert changed.returncode == 2, changed.stderr
    assert "changed since" in error_line(changed.stderr) and "chunks" in changed.stderr
    assert chunk.exists()
    forced = run_cli("run", str(config), "-q", "--force")
    assert forced.returncode == 0, forced.stderr
    means = read_model(RunStore(str(store))).arrays["means"]
    assert not np.array_equal(means, read_model(RunStore(str(reference))).arrays["means"])


# ------------------------------------------------------------------ joined clusters


def start_cluster(workdir: Path, n_workers: int = 2, wrap: list[str] | None = None):
    """A scheduler and ``dask worker`` processes started in ``workdir`` (as an HPC job
    script or dask-jobqueue starts them, elsewhere than the client)."""
    workdir.mkdir(parents=True, exist_ok=True)
    scheduler_file = workdir / "scheduler.json"
    procs = [subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
         "--port", "0", "--dashboard-address", ":0", "--scheduler-file", str(scheduler_file)],
        cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    deadline = time.monotonic() + 60
    while not scheduler_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    for i in range(n_workers):
        command = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file",
                   str(scheduler_file), "--nthreads", "1", "--host", "127.0.0.1",
                   "--no-dashboard"]
        if wrap is not None and i == 0:
            command = [*wrap, *command]
        procs.append(subprocess.Popen(command, cwd=workdir, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
    from distributed import Client

    with Client(scheduler_file=str(scheduler_file), timeout="30s") as client:
        client.wait_for_workers(n_workers, timeout=60)
    return scheduler_file, procs


def stop(procs) -> None:
    for p in reversed(procs):
        p.kill()
        p.wait()


def test_relative_paths_on_a_joined_cluster_give_the_right_outputs(tmp_path, data_store,
                                                                   reference):
    job = tmp_path / "job"
    job.mkdir()
    shutil.copytree(data_store, job / "data.zarr")
    scheduler_file, procs = start_cluster(tmp_path / "elsewhere")
    try:
        config = write_config(job / "job.yaml", "data.zarr", "runs/rel.zarr",
                              cluster={"scheduler_file": str(scheduler_file)})
        result = run_cli("run", "job.yaml", "-q", cwd=job)
    finally:
        stop(procs)
    assert result.returncode == 0, result.stderr
    store = job / "runs" / "rel.zarr"
    assert_same_model(store, reference)
    assert not (tmp_path / "elsewhere" / "runs").exists()  # nothing written by workers there
    labels = zarr.open_array(str(store), path="outputs/labels", mode="r")
    assert labels.nchunks_initialized == labels.nchunks
    estimator, _ = load_estimator(RunStore(str(store)))
    X = zarr.open_array(str(job / "data.zarr"), path="X", mode="r")[...]
    np.testing.assert_array_equal(labels[...], estimator.predict(X))
    assert config.exists()


def can_unshare() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return os.geteuid() == 0 and probe.returncode == 0


def test_workers_that_do_not_see_the_run_store_are_refused(tmp_path, data_store):
    """A worker with its own mount namespace, where a tmpfs hides the client's run-store
    directory (as a node without the client's filesystem): refused with exit 2 before any
    fit, never exit 0 with outputs written elsewhere."""
    if not can_unshare():
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with unshare available")
        pytest.skip("needs root and unshare -m")
    runs = tmp_path / "runs"
    runs.mkdir()
    wrap = ["unshare", "-m", "sh", "-c", f'mount -t tmpfs tmpfs "{runs}" && exec "$@"', "sh"]
    scheduler_file, procs = start_cluster(tmp_path / "elsewhere", wrap=wrap)
    try:
        config = write_config(tmp_path / "job.yaml", str(data_store), str(runs / "hidden.zarr"),
                              cluster={"scheduler_file": str(scheduler_file)})
        result = run_cli("run", str(config), "-q")
    finally:
        stop(procs)
    assert result.returncode == 2, result.stdout + result.stderr
    line = error_line(result.stderr)
    assert "run.store" in line and "1 of 2 worker(s)" in line, line
    assert not has_model(runs / "hidden.zarr")


# ------------------------------------------------------------------ one job per store


def test_two_jobs_on_one_store_one_runs_the_other_is_refused(tmp_path, data_store,
                                                             reference):
    store = tmp_path / "run.zarr"
    config = write_config(tmp_path / "job.yaml", str(data_store), str(store))
    procs = [start_cli("run", str(config), "-q") for _ in range(2)]
    outcomes = [(p.pid, *p.communicate(timeout=300), p.returncode) for p in procs]
    codes = sorted(code for *_, code in outcomes)
    assert codes == [0, 2], outcomes
    (winner,) = [pid for pid, _, _, code in outcomes if code == 0]
    (refused,) = [stderr for _, _, stderr, code in outcomes if code == 2]
    line = error_line(refused)
    assert "in use by another daskem job" in line and f"pid {winner}" in line, line
    assert_same_model(store, reference)
    assert not (store / "lease").exists()  # released at the end


def test_killed_owner_lease_is_taken_over(tmp_path, data_store, reference):
    store = tmp_path / "run.zarr"
    config = write_config(tmp_path / "job.yaml", str(data_store), str(store))
    proc = start_cli("run", str(config), "-q")
    wait_for_step(store, proc, 2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert (store / "lease" / "zarr.json").exists()  # left behind by the killed owner
    rerun = run_cli("run", str(config))
    assert rerun.returncode == 0, rerun.stderr
    assert f"took over the stale lease of {store} (host" in rerun.stdout
    assert f"pid {proc.pid})" in rerun.stdout
    assert_same_model(store, reference)


# ------------------------------------------------------------------ stop signals


@pytest.mark.parametrize("signum,target", [(signal.SIGTERM, "group"),
                                           (signal.SIGINT, "main")],
                         ids=["sigterm-process-group", "sigint-main-process"])
def test_stop_signal_ends_cleanly_and_rerun_resumes(tmp_path, data_store, reference, signum,
                                                    target):
    """SIGTERM to the whole process group (Slurm) or SIGINT to the command alone (Ctrl-C):
    one line, exit 128 + signal, the newest checkpoint complete, a bit-identical resume."""
    store = tmp_path / "run.zarr"
    config = write_config(tmp_path / "job.yaml", str(data_store), str(store))
    proc = start_cli("run", str(config), "-q")
    wait_for_step(store, proc, 3)
    if target == "group":
        os.killpg(proc.pid, signum)
    else:
        proc.send_signal(signum)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr
    line = error_line(stderr)
    name = signal.Signals(signum).name
    assert f"stopped by {name}" in line and "rerunning resumes from checkpoint iter_" in line
    pointer = RunStore(str(store)).read_pointer()
    assert f"iteration {pointer.step})" in line
    states = RunStore(str(store)).load()  # complete: no fallback, no warning
    assert max(s.n_iter for s in states) == pointer.step
    assert not (store / "lease").exists()
    rerun = run_cli("run", str(config))
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming from checkpoint checkpoints/iter_{pointer.step:06d}" in rerun.stdout
    assert_same_model(store, reference)


# ------------------------------------------------------------------ full disks


def mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                   check=True)


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(f"/tmp/daskem-mount-probe-{os.getpid()}")
    try:
        mount_tmpfs(probe, "64k")
    except (subprocess.CalledProcessError, OSError):
        return False
    subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return True


@pytest.fixture
def small_disk(tmp_path):
    if not can_mount():
        if os.environ.get("CI"):
            pytest.fail("CI runs as root and can mount a tmpfs")
        pytest.skip("needs root to mount a small tmpfs")
    mounted = []

    def make(name: str, size: str) -> Path:
        path = tmp_path / name
        mount_tmpfs(path, size)
        mounted.append(path)
        return path

    yield make
    for path in mounted:
        subprocess.run(["umount", str(path)], check=False)


def test_disk_full_during_checkpoints_names_the_path_and_resumes(tmp_path, data_store,
                                                                 reference, small_disk):
    disk = small_disk("disk", "300k")
    store = disk / "run.zarr"
    # Every checkpoint kept, so that they are what fills the disk.
    config = write_config(tmp_path / "job.yaml", str(data_store), str(store),
                          run={"store": str(store), "keep_checkpoints": 10_000})
    result = run_cli("run", str(config), "-q")
    assert result.returncode == 4, result.stdout + result.stderr
    line = error_line(result.stderr)
    assert "no space left on device while writing" in line and str(store) in line, line
    assert "free space at" in line and "rerunning resumes from checkpoint iter_" in line, line
    step = RunStore(str(store)).read_pointer().step
    assert 0 < step < MODEL["max_iter"]

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)  # freed
    rerun = run_cli("run", str(config))
    assert rerun.returncode == 0, rerun.stderr
    assert "resuming from checkpoint" in rerun.stdout
    assert_same_model(store, reference)


def test_disk_full_during_outputs_names_the_path_and_keeps_the_model(tmp_path, data_store,
                                                                     reference, small_disk):
    disk = small_disk("outputs", "200k")  # room for the metadata, not the 40,000 rows
    store = tmp_path / "run.zarr"
    config = write_config(tmp_path / "job.yaml", str(data_store), str(store),
                          output={"path": str(disk / "out.zarr")})
    result = run_cli("run", str(config), "-q")
    assert result.returncode == 4, result.stdout + result.stderr
    line = error_line(result.stderr)
    assert "no space left on device while writing the outputs" in line, line
    assert str(disk / "out.zarr") in line and "writes the outputs again" in line, line
    assert RunStore(str(store)).attrs["status"] == "fitted"

    subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
    rerun = run_cli("run", str(config), "-q")
    assert rerun.returncode == 0, rerun.stderr
    assert RunStore(str(store)).attrs["status"] == "complete"
    assert_same_model(store, reference)
    labels = zarr.open_array(str(disk / "out.zarr"), path="labels", mode="r")
    assert labels.nchunks_initialized == labels.nchunks


def test_warnings_reach_the_terminal_as_one_line(tmp_path, data_store):
    """A job that stops at max_iter warns in one line, not with Python's source line."""
    config = write_config(tmp_path / "job.yaml", str(data_store), str(tmp_path / "run.zarr"))
    result = run_cli("run", str(config), "-q", "--set", "model.max_iter=2")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines == ["daskem: warning: Best performing initialization did not converge. Try "
                     "different init parameters, or increase max_iter, tol, or check for "
                     "degenerate data. (ConvergenceWarning)"], result.stderr
