"""The real ``daskem`` command, end to end, on its embedded two-worker LocalCluster."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from conftest import feature_store_module, run_cli, start_cli, synthetic_store, write_config

from daskem import GaussianMixture, KMeans
from daskem.model import read_history, read_model
from daskem.store import RunStore

pytestmark = pytest.mark.distributed






def test_run_zarr_store_end_to_end(tmp_path, small_store):
    store = tmp_path / "gmm.zarr"
    model = {"kind": "gmm", "n_components": 3, "covariance_type": "full", "max_iter": 40,
             "tol": 1e-8, "n_init": 2, "random_state": 3}
    cfg = write_config(tmp_path, "gmm", data={"path": str(small_store), "chunk_rows": 700},
                       model=model, run={"store": str(store)})
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    assert re.search(r"iter    1/40  restart \d: lower bound", result.stdout), result.stdout
    assert "done: gmm" in result.stdout

    # the same fit through the estimator API, in this process
    X = da.from_zarr(str(small_store), component="X").rechunk((700, 4))
    with dask.config.set(scheduler="synchronous"):
        ref = GaussianMixture(3, covariance_type="full", max_iter=40, tol=1e-8, n_init=2,
                              random_state=3).fit(X)
        ref_labels = ref.predict(X).compute()
        ref_resp = ref.predict_proba(X).compute()
    fitted = read_model(RunStore(str(store))).arrays
    np.testing.assert_allclose(fitted["means"], ref.means_, rtol=1e-9)
    np.testing.assert_allclose(fitted["covariances"], ref.covariances_, rtol=1e-9)
    out = zarr.open_group(str(store), mode="r")["outputs"]
    assert out["labels"].shape == (3000,)
    assert out["responsibilities"].shape == (3000, 3)
    np.testing.assert_array_equal(out["labels"][...], ref_labels)
    np.testing.assert_allclose(out["responsibilities"][...], ref_resp, atol=1e-9)
    np.testing.assert_allclose(out["log_likelihood"][...].mean(), ref.score(X), rtol=1e-9)

    again = run_cli("run", str(cfg))
    assert again.returncode == 0 and "nothing to do" in again.stdout

    shown = run_cli("inspect", str(store), "--json")
    info = json.loads(shown.stdout)
    assert info["status"] == "complete"
    assert info["model"]["n_iter"] == ref.n_iter_
    assert len(info["history"]["objective"]) == ref.n_iter_
    # the passes over the store: the estimator's count, and one more for the outputs
    expected = {**ref.passes_, "outputs": 1, "resumed": False}
    assert info["passes"] == expected
    total = sum(v for k, v in expected.items() if k != "resumed")
    assert f"read the data {total} times (summary 1," in result.stdout
    assert len(info["pass_seconds"]) == ref.n_iter_ + 1  # the start, then every iteration
    text = run_cli("inspect", str(store)).stdout
    assert text.count("weights:") == 1 and "timing: " in text and "per iteration" in text


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory):
    mfs = feature_store_module()
    path = tmp_path_factory.mktemp("grid") / "grid.zarr"
    mfs.write_xarray(str(path), (6, 10, 12), 3, 3, seed=2)
    return path


def test_run_xarray_dataset_end_to_end(tmp_path, grid_store):
    store = tmp_path / "km.zarr"
    data = {"path": str(grid_store), "features": ["f0", "f1", "f2"],
            "sample_dims": ["time", "lat", "lon"], "missing": "drop", "chunk_rows": 200}
    cfg = write_config(tmp_path, "km", data=data,
                       model={"kind": "kmeans", "n_components": 3, "random_state": 1},
                       run={"store": str(store)})
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    mfs = feature_store_module()
    n_missing = int(mfs.land_mask(10, 12).sum()) * 6
    assert f"dropped {n_missing:,} of 720 rows" in result.stdout

    source = xr.open_zarr(str(grid_store), consolidated=False)
    out = xr.open_zarr(str(store), group="outputs", consolidated=False)
    assert out.labels.dims == ("time", "lat", "lon")
    for dim in ("time", "lat", "lon"):
        np.testing.assert_array_equal(out[dim].values, source[dim].values)
    cube = np.stack([source[f].values for f in ("f0", "f1", "f2")], axis=-1)
    rows = cube.reshape(-1, 3)
    ok = np.isfinite(rows).all(axis=1)
    # Labels are integers, as in a plain Zarr output: -1 for the missing cells.
    assert out.labels.dtype == np.int64, out.labels.dtype
    labels = out.labels.values.reshape(-1)
    assert (labels[~ok] == -1).all()
    with dask.config.set(scheduler="synchronous"):
        ref = KMeans(3, random_state=1).fit(da.from_array(rows[ok], chunks=(200, 3)))
    np.testing.assert_array_equal(labels[ok], ref.predict(rows[ok]))
    assert "-1" in out.labels.attrs["description"]


def test_bad_data_and_changed_config_exit_codes(tmp_path, small_store):
    bad = tmp_path / "bad.zarr"
    X = np.random.default_rng(0).normal(size=(500, 3))
    X[321, 2] = np.nan
    group = zarr.open_group(str(bad), mode="w")
    group.create_array("X", data=X, chunks=(100, 3))
    cfg = write_config(tmp_path, "bad", data={"path": str(bad)},
                       model={"n_components": 2}, run={"store": str(tmp_path / "b.zarr")})
    result = run_cli("run", str(cfg))
    assert result.returncode == 3
    assert "row 321 (chunk 3)" in result.stderr and result.stderr.count("\n") == 1

    store = str(tmp_path / "s.zarr")
    base = dict(data={"path": str(small_store)}, run={"store": store})
    first = write_config(tmp_path, "a", model={"n_components": 2, "max_iter": 3}, **base)
    assert run_cli("run", str(first)).returncode == 0
    other = write_config(tmp_path, "b", model={"n_components": 3, "max_iter": 3}, **base)
    result = run_cli("run", str(other))
    assert result.returncode == 2 and "made by a different config" in result.stderr
    assert "--set run.store=PATH" in result.stderr
    assert "cluster" not in result.stdout  # refused before a cluster starts


def test_killed_run_resumes_to_identical_parameters(tmp_path):
    """SIGKILL `daskem run` after a few checkpoints; the rerun ends bit-identical."""
    data_path = synthetic_store(tmp_path / "kill.zarr", 60_000, 8, 6, chunk_rows=7_500,
                                seed=9)
    model = {"kind": "gmm", "n_components": 6, "covariance_type": "full", "max_iter": 30,
             "tol": 0.0, "n_init": 2, "random_state": 4}
    data = {"path": str(data_path)}
    reference = write_config(tmp_path, "ref", data=data, model=model,
                             run={"store": str(tmp_path / "ref.zarr")})
    killed = write_config(tmp_path, "killed", data=data, model=model,
                          run={"store": str(tmp_path / "killed.zarr")})
    assert run_cli("run", str(reference), "-q").returncode == 0

    proc = start_cli("run", killed, "-q", stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pointer = tmp_path / "killed.zarr" / "latest" / "zarr.json"
    deadline = time.monotonic() + 240
    step = -1
    while time.monotonic() < deadline and proc.poll() is None:
        if pointer.exists():
            try:
                step = json.loads(pointer.read_text())["attributes"]["step"]
            except ValueError:
                pass
            if step >= 4:
                break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the command and its worker processes
    proc.wait()
    assert 4 <= step < 30
    assert RunStore(str(tmp_path / "killed.zarr")).attrs["status"] == "running"

    resumed = run_cli("run", str(killed))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint" in resumed.stdout
    a = read_model(RunStore(str(tmp_path / "ref.zarr"))).arrays
    b = read_model(RunStore(str(tmp_path / "killed.zarr"))).arrays
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    ha = read_history(RunStore(str(tmp_path / "ref.zarr")))["objective"]
    hb = read_history(RunStore(str(tmp_path / "killed.zarr")))["objective"]
    np.testing.assert_array_equal(ha, hb)


def test_join_cluster_fsspec_url_json_log_and_predict(tmp_path, small_store):
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        store = tmp_path / "joined.zarr"
        cfg = write_config(tmp_path, "joined",
                           data={"path": f"file://{small_store}", "chunk_rows": 1000},
                           model={"kind": "kmeans", "n_components": 3, "max_iter": 20},
                           run={"store": str(store)})
        cfg.write_text(cfg.read_text().replace("n_workers: 2",
                                               f"address: {cluster.scheduler_address}"))
        log = tmp_path / "log.jsonl"
        result = run_cli("run", str(cfg), "--log-json", str(log))
        assert result.returncode == 0, result.stderr
        assert f"joined the Dask cluster at {cluster.scheduler_address}" in result.stdout
        def strict(token):  # what JavaScript's JSON.parse accepts: no NaN, no Infinity
            raise ValueError(f"not JSON: {token}")

        records = [json.loads(line, parse_constant=strict)
                   for line in log.read_text().splitlines()]
        iterations = [r for r in records if r["event"] == "iteration"]
        assert iterations and all("objective" in r and "elapsed" in r for r in iterations)
        assert [r["iteration"] for r in iterations] == list(range(1, len(iterations) + 1))
        assert iterations[0]["change"] is None  # no change before the second iteration
        assert [r["passes"] for r in iterations] == sorted(r["passes"] for r in iterations)
        (done,) = [r for r in records if r["event"] == "info" and "passes" in r]
        assert done["passes"] == sum(done["passes_by_phase"].values())

        out = tmp_path / "predicted.zarr"
        result = run_cli("predict", str(store), "--out", str(out))
        assert result.returncode == 0, result.stderr
    labels = zarr.open_group(str(out), mode="r")["labels"][...]
    np.testing.assert_array_equal(
        labels, zarr.open_group(str(store), mode="r")["outputs"]["labels"][...])


@pytest.mark.parametrize("assignment, said", [
    ("model.n_component=8", "--set 'model.n_component=8': model.n_component: unknown key "
                            "(did you mean model.n_components?)"),
    ("modle.n_components=8", "--set 'modle.n_components=8': modle: unknown key "
                             "(did you mean model?)"),
    ("model.colour=red", "--set 'model.colour=red': model.colour: unknown key\n"),
])
def test_set_names_a_wrong_key_and_the_nearest_one(tmp_path, assignment, said):
    config = write_config(tmp_path, "c", data={"path": str(tmp_path / "x.zarr")},
                          model={"kind": "gmm", "n_components": 3})
    out = run_cli("validate", str(config), "--set", assignment)
    assert out.returncode == 2
    assert said.rstrip("\n") in out.stderr
    assert ("did you mean" in out.stderr) == ("did you mean" in said)
    assert len(out.stderr.strip().splitlines()) == 1


def test_help_reads_as_prose():
    """--help reflows the docstrings and shows no type tags for flags."""
    out = run_cli("run", "--help")
    assert out.returncode == 0
    assert "<bool>" not in out.stdout and "<list[str]>" not in out.stdout
    assert "--set KEY=VALUE" in out.stdout
    top = run_cli("--help").stdout
    assert "keep the best\n" not in top and "select" in top
