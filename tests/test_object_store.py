"""A run store on an S3-compatible server (moto's, started here on 127.0.0.1), reached with
storage options only: fit, resume, inspect, predict, load and report."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import run_cli

pytest.importorskip("moto")
s3fs = pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _s3_server_module():
    spec = importlib.util.spec_from_file_location("s3_server", ROOT / "scripts" / "s3_server.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def s3():
    with _s3_server_module().S3Server() as server:
        yield server


def run_daskem(*args, home: Path):
    """The real command, with no AWS credentials in its environment or home directory."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["HOME"] = str(home)
    return run_cli(*args, env=env, cwd=ROOT)


def options_flags(options: dict) -> list[str]:
    return ["--storage-option", f"key={options['key']}",
            "--storage-option", f"secret={options['secret']}",
            "--storage-option",
            f"client_kwargs.endpoint_url={options['client_kwargs']['endpoint_url']}"]


def test_run_store_on_s3_with_storage_options_only(tmp_path, s3, small_store):
    import daskem
    from daskem.model import read_model
    from daskem.store import RunStore

    url = s3.url("gmm.zarr")
    config = tmp_path / "s3.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(small_store)},
        "model": {"n_components": 3, "covariance_type": "diag", "max_iter": 6, "tol": 0.0},
        "cluster": {"n_workers": 2, "dashboard_address": None},
        "run": {"store": url, "storage_options": s3.storage_options}}))
    first = run_daskem("run", str(config), "-q", home=tmp_path)
    assert first.returncode == 0, first.stderr
    store = RunStore(url, s3.storage_options)
    assert store.attrs["status"] == "complete"
    fitted = read_model(store)
    # The run store keeps the config, not the secret.
    kept = store.attrs["config"]["run"]["storage_options"]
    assert kept["secret"] == "<redacted>" and kept["client_kwargs"] == \
        s3.storage_options["client_kwargs"]

    # Interrupted after its last checkpoint (model and outputs not yet written): the rerun
    # resumes from the checkpoint on S3 and ends with the same model.
    fs = s3fs.S3FileSystem(**s3.storage_options, skip_instance_cache=True)
    fs.rm(f"{s3.bucket}/gmm.zarr/model", recursive=True)
    fs.rm(f"{s3.bucket}/gmm.zarr/outputs", recursive=True)
    store.set_status("running")
    resumed = run_daskem("run", str(config), home=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from checkpoint checkpoints/iter_000006" in resumed.stdout
    again = read_model(RunStore(url, s3.storage_options))
    for name in fitted.arrays:
        np.testing.assert_array_equal(again.arrays[name], fitted.arrays[name], err_msg=name)
    assert store.checkpoint_names() == ["iter_000004", "iter_000005", "iter_000006"]

    shown = run_daskem("inspect", url, "--json", *options_flags(s3.storage_options),
                   home=tmp_path)
    assert shown.returncode == 0, shown.stderr
    info = json.loads(shown.stdout)
    assert info["status"] == "complete" and info["model"]["n_iter"] == 6
    no_options = run_daskem("inspect", url, home=tmp_path)
    assert no_options.returncode != 0

    predicted = run_daskem("predict", url, *options_flags(s3.storage_options), home=tmp_path)
    assert predicted.returncode == 0, predicted.stderr
    import zarr

    root = zarr.open_group(url, mode="r", storage_options=s3.storage_options)
    labels = np.asarray(root["outputs/labels"][...])
    np.testing.assert_array_equal(np.asarray(root["predictions/labels"][...]), labels)

    estimator = daskem.load(url, storage_options=s3.storage_options)
    raw = np.asarray(zarr.open_group(str(small_store), mode="r")["X"][...])
    np.testing.assert_array_equal(estimator.predict(raw), labels)

    # The report goes beside the run store, on S3, reached with the same options; the
    # data is read through the stored config (a local path here).
    reported = run_daskem("report", url, *options_flags(s3.storage_options), home=tmp_path)
    assert reported.returncode == 0, reported.stderr
    assert f"wrote {s3.url('gmm-report')}/report.html" in reported.stdout
    page = fs.cat_file(f"{s3.bucket}/gmm-report/report.html").decode()
    assert "No data sample" not in page and page.count("data:image/png;base64,") == 4
    assert fs.exists(f"{s3.bucket}/gmm-report/means.png")
    assert not (tmp_path / "s3:").exists() and not (ROOT / "s3:").exists()
    # "predict" closes its connections: no aiohttp warnings.
    assert "Unclosed" not in predicted.stderr + reported.stderr, predicted.stderr
