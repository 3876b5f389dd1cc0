"""The job layer: progress lines with restarts, checkpoint pruning, the fit pipeline against
``daskem run``, the config's mapping onto the estimators."""

from __future__ import annotations

import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import write_config

from daskem import ConvergenceWarning, GaussianMixture, KMeans
from daskem.config import ConfigError, parse_config
from daskem.engine.em import EMState
from daskem.model import read_model, read_selection
from daskem.progress import Reporter
from daskem.steps import build_estimator
from daskem.store import RunStore

ROOT = Path(__file__).resolve().parents[1]


def run(*args, timeout=300):
    """``python ARGS`` (the command, or a pipeline script) from the project's root."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)



# ------------------------------------------------------------------ progress (item 1)


def test_progress_line_follows_one_restart():
    """Restart 0 was beaten on the sample after 57 iterations (dropped); restart 1 goes on
    over the store. The line shows restart 1: its iteration, objective and change."""
    dropped = EMState(np.zeros((2, 2)), n_iter=57, objectives=(-3.0,) * 57,
                      dropped="beaten on the sample")
    chosen = EMState(np.zeros((2, 2)), n_iter=6, objectives=(-9.0, -5.0, -4.5, -4.25),
                     converged=False)
    out = io.StringIO()
    Reporter(stream=out).iteration(7, [dropped, chosen], "gmm", 100)
    line = out.getvalue()
    assert line.startswith("iter    6/100  restart 1: lower bound -4.25  change 2.500e-01")
    assert "running 1/2" in line
    # Once it converges, none runs: the line still follows the chosen one, not the dropped.
    out = io.StringIO()
    done = EMState(np.zeros((2, 2)), n_iter=7, objectives=(-4.25, -4.2), converged=True)
    Reporter(stream=out).iteration(8, [dropped, done], "gmm", 100)
    assert out.getvalue().startswith("iter    7/100  restart 1: lower bound -4.2  change "
                                     "5.000e-02  running 0/2")
    # k-means: the best is the least inertia.
    out = io.StringIO()
    a = EMState(np.zeros((2, 2)), n_iter=3, objectives=(10.0, 9.0, 8.0))
    b = EMState(np.zeros((2, 2)), n_iter=3, objectives=(7.0, 6.0, 5.5))
    Reporter(stream=out).iteration(3, [a, b], "kmeans", 50)
    assert out.getvalue().startswith("iter    3/50  restart 1: inertia 5.5  change 5.000e-01")


def test_progress_of_a_real_run_ends_where_the_fit_ends(tmp_path, small_store):
    cfg = write_config(tmp_path, "p", data={"path": str(small_store), "chunk_rows": 700},
                       model={"kind": "gmm", "n_components": 3, "n_init": 3, "max_iter": 60,
                              "tol": 1e-9, "random_state": 2},
                       run={"store": str(tmp_path / "p.zarr")})
    result = run("-m", "daskem", "run", str(cfg))
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("iter")]
    parsed = [re.match(r"iter +(\d+)/60 +restart (\d): lower bound (\S+) +change (\S+)", ln)
              for ln in lines]
    assert all(parsed), lines
    n_iter = int(re.search(r"done: gmm, (\d+) iterations", result.stdout).group(1))
    assert int(parsed[-1].group(1)) == n_iter
    record = read_model(RunStore(str(tmp_path / "p.zarr")))
    assert float(parsed[-1].group(3)) == pytest.approx(record.objective, rel=1e-9)
    # The change column is the followed restart's own change.
    for before, after in zip(parsed, parsed[1:], strict=False):
        if before.group(2) == after.group(2) and int(after.group(1)) == int(before.group(1)) + 1:
            moved = abs(float(after.group(3)) - float(before.group(3)))
            # (the objective is printed to 10 digits)
            shown = 1e-9 * abs(float(after.group(3)))
            assert float(after.group(4)) == pytest.approx(moved, rel=1e-3, abs=shown)


# ------------------------------------------------------------------ keep_checkpoints (item 7)


def test_keep_checkpoints_prunes_and_resume_still_falls_back(tmp_path, small_store):
    from daskem.store import CheckpointWarning

    path = tmp_path / "keep.zarr"
    cfg = write_config(tmp_path, "keep", data={"path": str(small_store)},
                       model={"n_components": 3, "covariance_type": "diag", "max_iter": 8,
                              "tol": 0.0},
                       run={"store": str(path), "keep_checkpoints": 2})
    result = run("-m", "daskem", "run", str(cfg), "-q")
    assert result.returncode == 0, result.stderr
    store = RunStore(str(path))
    names = store.checkpoint_names()
    assert names == ["iter_000007", "iter_000008"]
    assert store.read_pointer().group == "checkpoints/iter_000008"
    # The newest damaged: the one older checkpoint kept is where a resume goes on from.
    packed = zarr.open_group(str(path), mode="a")["checkpoints/iter_000008"]
    packed[0] = packed[0] + 1.0  # bit rot in the newest checkpoint
    with pytest.warns(CheckpointWarning, match="damaged; resuming from checkpoints/iter_000007"):
        states = store.load()
    assert states[0].n_iter == 7


def test_pruning_after_a_job_killed_while_writing_a_checkpoint(tmp_path):
    """Killed while writing iteration 4 (its group has no checksum, the pointer still names
    3): nothing was pruned for it, the resume goes on from 3, and once 4 is written again
    the oldest is removed."""
    X = np.random.default_rng(0).normal(size=(300, 2))
    store = RunStore(str(tmp_path / "torn.zarr"), keep_checkpoints=2)
    with pytest.warns(ConvergenceWarning):
        GaussianMixture(2, random_state=0, max_iter=3, tol=0).fit(X, checkpoint=store)
    assert store.checkpoint_names() == ["iter_000002", "iter_000003"]
    group = zarr.open_group(str(tmp_path / "torn.zarr"), mode="a")
    group["checkpoints"].create_array("iter_000004", data=np.zeros(5))  # no checksum
    states = RunStore(str(tmp_path / "torn.zarr"), keep_checkpoints=2).load()
    assert states[0].n_iter == 3
    assert store.checkpoint_names() == ["iter_000002", "iter_000003", "iter_000004"]
    store.save([EMState(states[0].params, n_iter=4, objectives=(-1.0,) * 4)])  # (a mixture)
    assert store.checkpoint_names() == ["iter_000003", "iter_000004"]
    assert store.read_pointer().group == "checkpoints/iter_000004"
    assert store.load()[0].n_iter == 4
    with pytest.raises(ValueError, match="keep at least 1"):
        RunStore(str(tmp_path / "x.zarr"), keep_checkpoints=0)


# ------------------------------------------------------------------ one job path


@pytest.mark.parametrize("kind", ["gmm", "select"])
def test_fit_pipeline_leaves_the_run_store_daskem_run_leaves(tmp_path, small_store, kind):
    model = {"kind": "gmm", "n_components": 3, "n_init": 2, "max_iter": 15, "tol": 1e-6,
             "random_state": 1}
    extra = {"select": {"n_components": [2, 3], "covariance_types": ["diag", "full"]}} \
        if kind == "select" else {}
    cfg = write_config(tmp_path, "same", data={"path": str(small_store), "standardize": True},
                       model=model, run={"store": str(tmp_path / "cli.zarr")}, **extra)
    by_cli = run("-m", "daskem", "run", str(cfg), "-q")
    assert by_cli.returncode == 0, by_cli.stderr
    by_pipeline = run("pipelines/fit.py", str(cfg), f"run.store={tmp_path / 'pipe.zarr'}")
    assert by_pipeline.returncode == 0, by_pipeline.stderr
    assert "done: gmm" in by_pipeline.stdout

    a, b = RunStore(str(tmp_path / "cli.zarr")), RunStore(str(tmp_path / "pipe.zarr"))
    ra, rb = read_model(a), read_model(b)
    assert list(ra.arrays) == list(rb.arrays)
    for name in ra.arrays:
        np.testing.assert_array_equal(ra.arrays[name], rb.arrays[name], err_msg=name)
    assert ra.attrs == rb.attrs
    np.testing.assert_array_equal(ra.history["objective"], rb.history["objective"])
    sa, sb = a.attrs, b.attrs
    for key in ("status", "passes", "standardize", "fingerprint", "config_hash"):
        assert sa.get(key) == sb.get(key), key
    assert sa["status"] == "complete" and sa["standardize"]
    assert sa["outputs"]["arrays"] == sb["outputs"]["arrays"]
    assert a.checkpoint_names() == b.checkpoint_names()
    ga, gb = zarr.open_group(a.path, mode="r"), zarr.open_group(b.path, mode="r")
    for name in sa["outputs"]["arrays"]:
        np.testing.assert_array_equal(ga["outputs"][name][...], gb["outputs"][name][...])
    # daskem.load: the standardised model as a pipeline whose predict takes the raw rows.
    import daskem

    loaded = daskem.load(a.path)
    assert type(loaded).__name__ == "Pipeline"
    raw = np.asarray(zarr.open_group(str(small_store), mode="r")["X"][...])
    np.testing.assert_array_equal(loaded.predict(raw), ga["outputs"]["labels"][...])
    # Every group opens in xarray, with dimension names.
    import xarray as xr

    model = xr.open_zarr(a.path, group="model")
    assert model["means"].dims == ("component", "feature")
    assert model["covariances"].dims[0] == "component"
    history = xr.open_zarr(a.path, group="history")
    assert history["objective"].dims == ("iteration",)
    outputs = xr.open_zarr(a.path, group="outputs")
    assert outputs["labels"].dims == ("sample",) and outputs["labels"].dtype == np.int64
    assert outputs["responsibilities"].dims == ("sample", "component")
    np.testing.assert_array_equal(outputs["labels"].values, ga["outputs"]["labels"][...])
    np.testing.assert_array_equal(history["objective"].values, ra.history["objective"])
    if kind == "select":
        ta, tb = read_selection(a), read_selection(b)
        assert ta["table"] == tb["table"] and ta["chosen"] == tb["chosen"]
        table = xr.open_zarr(a.path, group="selection")
        assert table["bic"].dims == ("candidate",)
        assert table["bic"].values.tolist() == [row["bic"] for row in ta["table"]]
        first = xr.open_zarr(a.path, group="selection/candidate_000")
        assert first["means"].shape == (ta["table"][0]["n_components"], 4)
    # Rerun: both see the store complete.
    again = run("pipelines/fit.py", str(cfg), f"run.store={tmp_path / 'pipe.zarr'}")
    assert "nothing to do" in again.stdout and "'status': 'complete'" in again.stdout


# ------------------------------------------------------------------ config -> estimator


def config(model: dict, **sections):
    return parse_config({"data": {"path": "x.zarr"}, "run": {"store": "r.zarr"},
                         "model": model, **sections})


@pytest.mark.parametrize("kind, cls", [("gmm", GaussianMixture), ("kmeans", KMeans)])
def test_left_out_parameters_take_the_estimators_defaults(kind, cls):
    made = build_estimator(config({"kind": kind})).get_params()
    expected = cls(random_state=0).get_params()
    assert made == expected
    set_ = build_estimator(config({"kind": kind, "n_components": 4, "tol": 0.5, "max_iter": 7},
                                  fit={"update": "incremental", "n_blocks": 4})).get_params()
    size = "n_clusters" if kind == "kmeans" else "n_components"
    assert set_ == {**expected, size: 4, "tol": 0.5, "max_iter": 7, "update": "incremental",
                    "n_blocks": 4}


def test_gmm_parameters_are_refused_for_kmeans():
    with pytest.raises(ConfigError, match="covariance_type applies to kind gmm only"):
        config({"kind": "kmeans", "covariance_type": "diag"})
