"""The daskem page of the Dask dashboard, opened in headless Chromium while a fit runs."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.distributed


def _browser() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    if os.environ.get("CI"):
        pytest.fail("CI needs Chromium for the dashboard test (.ci/run installs it)")
    pytest.skip("no Chromium here (apt-get install chromium)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_daskem_page_draws_the_running_fit(tmp_path, small_store):
    browser = _browser()
    config = tmp_path / "dash.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(small_store)},
        "model": {"n_components": 3, "n_init": 2, "max_iter": 2000, "tol": 0.0},
        "cluster": {"n_workers": 2, "dashboard_address": f"127.0.0.1:{_free_port()}"},
        "run": {"store": str(tmp_path / "dash.zarr")}}))
    job = subprocess.Popen([sys.executable, "-m", "daskem", "run", str(config)], cwd=ROOT,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    try:
        page, iteration, deadline = None, 0, time.monotonic() + 120
        while time.monotonic() < deadline and iteration < 5:
            line = job.stdout.readline()
            if not line:
                break
            found = re.search(r"daskem page: (http\S+)", line)
            page = found.group(1) if found else page
            it = re.match(r"iter +(\d+)/", line)
            iteration = int(it.group(1)) if it else iteration
        assert page and iteration >= 5, "the job did not start iterating"
        dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                              "--virtual-time-budget=3000", "--dump-dom", page],
                             capture_output=True, text=True, timeout=60).stdout
        assert job.poll() is None, "the fit ended before the page was read"
        shown = re.search(r'id="iteration" data-iteration="(\d+)"', dom)
        assert shown, dom[-3000:]
        assert int(shown.group(1)) >= iteration  # at least where the job's output was
        assert "restart 0 (" in dom and "restart 1 (" in dom  # every restart in the legend
        assert dom.count("<polyline") >= 1 and "lower bound" in dom
        assert re.search(r"<th>em</th><td>(\d+)</td>", dom)  # reads by phase
    finally:
        os.killpg(job.pid, signal.SIGTERM)  # the job stops at its next checkpoint
        job.communicate(timeout=60)
