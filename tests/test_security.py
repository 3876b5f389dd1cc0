"""Configs are data; the embedded cluster listens on loopback only; TLS passes through."""

from __future__ import annotations

import ipaddress
import os

import psutil
import pytest
import yaml
import zarr
from conftest import run_cli

from daskem.cluster import connect
from daskem.config import ClusterConfig, ConfigError, load_config
from daskem.progress import Reporter

pytestmark = pytest.mark.distributed


def listening_addresses(pids: set[int]) -> list[str]:
    return [c.laddr.ip for c in psutil.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN and c.pid in pids]


def test_embedded_cluster_listens_on_loopback_only():
    with connect(ClusterConfig(n_workers=2, dashboard_address="127.0.0.1:0"),
                 Reporter(quiet=True)) as client:
        pids = {os.getpid(), *client.run(os.getpid).values()}
        for proc in psutil.Process().children(recursive=True):
            pids.add(proc.pid)
        addresses = listening_addresses(pids)
    assert len(addresses) >= 4  # scheduler, dashboard, two workers (and their nannies)
    for address in addresses:
        assert ipaddress.ip_address(address).is_loopback, address


def test_no_dashboard_takes_no_fixed_port():
    """``dashboard_address: null``: the scheduler's HTTP routes take a free port, not 8787
    (two jobs on one machine must not warn about each other)."""
    import socket
    import warnings

    with socket.socket() as held:
        try:
            held.bind(("127.0.0.1", 8787))
        except OSError:
            pass  # something else holds it: the same situation
        held.listen()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with connect(ClusterConfig(n_workers=1, dashboard_address=None),
                         Reporter(quiet=True)) as client:
                port = client.run_on_scheduler(
                    lambda dask_scheduler: dask_scheduler.http_server.port)
    assert port != 8787
    assert not [w for w in caught if "8787" in str(w.message)], [str(w.message) for w in caught]


def test_tls_settings_pass_through(tmp_path, small_store):
    from distributed import LocalCluster
    from distributed.security import Security

    sec = Security.temporary()
    files = {}
    for name in ("tls_ca_file", "tls_client_cert", "tls_client_key"):
        path = tmp_path / f"{name}.pem"
        path.write_text(getattr(sec, name))
        files[name] = str(path)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, protocol="tls://",
                      host="127.0.0.1", security=sec, dashboard_address=None) as cluster:
        assert cluster.scheduler_address.startswith("tls://")
        base = {"data": {"path": str(small_store)},
                "model": {"kind": "kmeans", "n_components": 3, "max_iter": 5},
                "run": {"store": str(tmp_path / "tls.zarr")}}
        good = tmp_path / "tls.yaml"
        good.write_text(yaml.safe_dump({**base, "cluster": {
            "address": cluster.scheduler_address, "security": files}}))
        result = run_cli("run", good, "-q")
        assert result.returncode == 0, result.stderr
        assert zarr.open_group(str(tmp_path / "tls.zarr"), mode="r").attrs["status"] == \
            "complete"
        bad = tmp_path / "plain.yaml"  # no certificates for a TLS scheduler
        bad.write_text(yaml.safe_dump({**base, "run": {"store": str(tmp_path / "p.zarr")},
                                       "cluster": {"address": cluster.scheduler_address}}))
        result = run_cli("run", bad, "-q")
        assert result.returncode == 2, result.stderr
        assert "give cluster.security" in result.stderr
        wrong = tmp_path / "wrong.yaml"  # certificates of another authority
        other = Security.temporary()
        for name in files:
            (tmp_path / f"other_{name}.pem").write_text(getattr(other, name))
        wrong.write_text(yaml.safe_dump({**base, "run": {"store": str(tmp_path / "w.zarr")},
                                         "cluster": {"address": cluster.scheduler_address,
                                                     "security": {
            name: str(tmp_path / f"other_{name}.pem") for name in files}}}))
        result = run_cli("run", wrong, "-q")
        assert result.returncode == 5, result.stderr
        assert "cannot reach the Dask scheduler" in result.stderr


def test_security_needs_a_cluster_to_join(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "x.zarr"}, "run": {"store": "r.zarr"},
                                    "cluster": {"security": {"tls_ca_file": "ca.pem"}}}))
    with pytest.raises(ConfigError, match="security applies when joining a cluster"):
        load_config(path)


def test_run_store_holds_numbers_and_json_only(tmp_path, small_store):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"path": str(small_store)}, "model": {"n_components": 3, "max_iter": 4},
        "cluster": {"n_workers": 1, "dashboard_address": None},
        "run": {"store": str(tmp_path / "r.zarr")}}))
    result = run_cli("run", config, "-q")
    assert result.returncode == 0, result.stderr
    root = zarr.open_group(str(tmp_path / "r.zarr"), mode="r")
    kinds = set()

    def visit(group):
        import json

        json.dumps(dict(group.attrs))  # attributes are plain JSON
        for _, arr in group.arrays():
            kinds.add(arr.dtype.kind)
        for _, sub in group.groups():
            visit(sub)

    visit(root)
    assert kinds <= set("fiub"), kinds
