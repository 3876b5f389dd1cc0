"""Faults survived: killed workers, killed jobs, damaged checkpoints, changed stores.

The kill drill runs ``DASKEM_DRILL_KILLS`` kills (default 3, as in CI); run the long
version with ``DASKEM_DRILL_KILLS=30 python -m pytest tests/test_faults.py -k drill``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import warnings

import dask.array as da
import numpy as np
import pytest
import yaml
import zarr
from conftest import assert_same_parameters, run_cli, start_cli, synthetic_store
from distributed import Client, LocalCluster

from daskem import GaussianMixture, KMeans
from daskem.model import read_model
from daskem.store import CheckpointWarning, RunStore

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def store_path(tmp_path_factory):
    return synthetic_store(tmp_path_factory.mktemp("faults") / "data.zarr", 80_000, 6, 4,
                           chunk_rows=5_000, seed=13)


def worker_pids(client) -> list[int]:
    return list(client.run(os.getpid).values())


def kill_a_worker(client, delay: float, log: list) -> threading.Thread:
    def kill():
        time.sleep(delay)
        pids = worker_pids(client)
        pid = random.Random(len(log)).choice(pids)
        os.kill(pid, signal.SIGKILL)
        log.append((time.monotonic(), pid))

    thread = threading.Thread(target=kill, daemon=True)
    thread.start()
    return thread


def wait_for_workers(client, n: int, timeout: float = 60) -> None:
    client.wait_for_workers(n, timeout=timeout)


@pytest.mark.parametrize("make", [
    lambda: GaussianMixture(4, covariance_type="full", max_iter=12, tol=0, n_init=2,
                            random_state=1),
    lambda: KMeans(4, init="k-means||", max_iter=15, tol=0, random_state=2),
], ids=["gmm", "kmeans"])
def test_worker_killed_during_init_and_estep(store_path, make):
    X = da.from_zarr(str(store_path), component="X")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference = make().fit(X)
            kills: list = []
            threads = [kill_a_worker(client, 0.2, kills)]  # during the first passes

            def on_pass(n_pass, states):
                if n_pass in (3, 7):  # during the E-step of the next iteration
                    wait_for_workers(client, 2)
                    threads.append(kill_a_worker(client, 0.02, kills))

            faulty = make().fit(X, callback=on_pass)
        for t in threads:
            t.join()
    assert len(kills) == 3
    assert_same_parameters(faulty, reference)


# ------------------------------------------------------------------------ job kills




def job_config(tmp_path, store_path, name: str, max_iter: int = 25) -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"path": str(store_path)},
        "model": {"kind": "gmm", "n_components": 4, "covariance_type": "diag",
                  "max_iter": max_iter, "tol": 0.0, "random_state": 7},
        "cluster": {"n_workers": 2, "dashboard_address": None},
        "run": {"store": str(tmp_path / f"{name}.zarr")},
    }))
    return str(path)


def test_kill_drill(tmp_path, store_path):
    """Kill `daskem run` at random moments, rerun each time; the checkpoints stay readable,
    at most one iteration is lost per kill, and the end is bit-identical."""
    n_kills = int(os.environ.get("DASKEM_DRILL_KILLS", "3"))
    max_iter = 25 * n_kills  # long enough not to finish between kills
    reference = job_config(tmp_path, store_path, "reference", max_iter)
    assert run_cli("run", reference, "-q").returncode == 0
    drilled = job_config(tmp_path, store_path, "drilled", max_iter)
    pointer = tmp_path / "drilled.zarr" / "latest" / "zarr.json"
    rng = random.Random(0)
    torn = lost = kills = 0
    for _ in range(n_kills):
        before = json.loads(pointer.read_text())["attributes"]["step"] if pointer.exists() else -1
        proc = start_cli("run", drilled, "-q", stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(2.0, 6.0))  # start-up is about 2 s; a pass about 0.1 s
        if proc.poll() is not None:
            break  # finished before the kill
        progress = json.loads(pointer.read_text())["attributes"]["step"] if pointer.exists() else -1
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        kills += 1
        store = RunStore(str(tmp_path / "drilled.zarr"))
        states = store.load()  # what a resume would read
        if pointer.exists():
            with warnings.catch_warnings():
                warnings.simplefilter("error", CheckpointWarning)
                try:
                    store.load()
                except CheckpointWarning:
                    torn += 1
        after = json.loads(pointer.read_text())["attributes"]["step"] if pointer.exists() else -1
        lost += max(0, progress - after)  # the pointer never moves back
        assert states is None or max(s.n_iter for s in states) == after
        assert after >= before
    final = run_cli("run", drilled, "-q")
    assert final.returncode == 0, final.stderr
    print(f"\nkill drill: {kills} kills, {torn} torn or unreadable checkpoints, {lost} "
          f"iterations lost, final step {after} of {max_iter}")
    assert torn == 0 and lost == 0
    assert kills == n_kills
    a = read_model(RunStore(str(tmp_path / "reference.zarr"))).arrays
    b = read_model(RunStore(str(tmp_path / "drilled.zarr"))).arrays
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def test_damaged_checkpoint_falls_back_with_warning(tmp_path, store_path):
    config = job_config(tmp_path, store_path, "damaged")
    config_text = open(config).read().replace("max_iter: 25", "max_iter: 6")
    open(config, "w").write(config_text)
    assert run_cli("run", config, "-q").returncode == 0
    store = RunStore(str(tmp_path / "damaged.zarr"))
    newest = store.read_pointer().group
    packed = zarr.open_group(store.path, mode="a")[newest]  # every restart's arrays
    packed[0] = packed[0] + 1.0  # bit rot in the newest checkpoint
    with pytest.warns(CheckpointWarning, match="damaged; resuming from"):
        states = store.load()
    assert max(s.n_iter for s in states) == store.read_pointer().step - 1


def test_changed_store_refused_unless_forced(tmp_path):
    data = synthetic_store(tmp_path / "grows.zarr", 4_000, 3, 2, chunk_rows=1_000, seed=1)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(data)}, "model": {"n_components": 2, "max_iter": 3},
        "cluster": {"n_workers": 1, "dashboard_address": None},
        "run": {"store": str(tmp_path / "r.zarr")}}))
    assert run_cli("run", str(config), "-q").returncode == 0
    RunStore(str(tmp_path / "r.zarr")).set_status("running")  # as if interrupted
    synthetic_store(data, 5_000, 3, 2, chunk_rows=1_000, seed=1)
    result = run_cli("run", str(config), "-q")
    assert result.returncode == 2
    assert "data source changed" in result.stderr and "shape" in result.stderr
    assert run_cli("run", str(config), "-q", "--force").returncode == 0


def test_lost_scheduler_exits_with_retriable_code(tmp_path, store_path):
    from distributed import Scheduler  # noqa: F401 - the scheduler runs in a subprocess

    port = 38000 + os.getpid() % 1000
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker",
                               f"tcp://127.0.0.1:{port}", "--nthreads", "1",
                               "--host", "127.0.0.1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        config = tmp_path / "lost.yaml"
        config.write_text(yaml.safe_dump({
            "data": {"path": str(store_path)},
            "model": {"n_components": 4, "covariance_type": "full", "max_iter": 400,
                      "tol": 0.0},
            "cluster": {"address": f"tcp://127.0.0.1:{port}"},
            "run": {"store": str(tmp_path / "lost.zarr")}}))
        proc = start_cli("run", config, "-q")
        pointer = tmp_path / "lost.zarr" / "latest" / "zarr.json"
        deadline = time.monotonic() + 120
        while not pointer.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        sched.kill()
        _, stderr = proc.communicate(timeout=180)
        assert proc.returncode == 5, stderr
        ours = [line for line in stderr.splitlines() if line.startswith("daskem: error:")]
        assert len(ours) == 1 and stderr.splitlines()[-1] == ours[0]
        assert "scheduler" in ours[0].lower() and "rerun" in ours[0]
    finally:
        for p in (worker, sched):
            p.kill()
            p.wait()
