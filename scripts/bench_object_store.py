"""Requests a run store on an object store costs: ``daskem run`` against a local
S3-compatible server (moto's, which counts what it serves), the run store on S3, the
data on local disk.

    python scripts/bench_object_store.py [--iters 4 12] [--restarts 2]

Prints, for two fits of different lengths, the requests for keys under the run store by
HTTP method, and the difference per iteration (start-up and the final writes cancel out);
with the wall time of each fit and of the same fit on local disk.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_feature_store import synthetic_array, write_zarr  # noqa: E402
from s3_server import S3Server  # noqa: E402


def run_job(config: dict, folder: Path, name: str) -> float:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "daskem", "run", str(path), "-q"],
                            capture_output=True, text=True, env=env)
    if result.returncode:
        sys.exit(result.stderr)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, nargs=2, default=(4, 12))
    parser.add_argument("--restarts", type=int, default=2)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="daskem-s3-"))
    data = folder / "features.zarr"
    write_zarr(str(data), synthetic_array(20_000, 8, 4, chunk_rows=5_000, seed=0))
    base = {"data": {"path": str(data)},
            "model": {"n_components": 4, "n_init": args.restarts, "tol": 0.0},
            "cluster": {"n_workers": 2, "dashboard_address": None}}
    rows = []
    with S3Server() as s3:
        for n in args.iters:
            name = f"run_{n}.zarr"
            s3.reset()
            seconds = run_job({**base, "model": {**base["model"], "max_iter": n},
                               "run": {"store": s3.url(name),
                                       "storage_options": s3.storage_options}},
                              folder, f"s3_{n}")
            local = run_job({**base, "model": {**base["model"], "max_iter": n},
                             "run": {"store": str(folder / name)}}, folder, f"local_{n}")
            rows.append((n, s3.requests(f"{name}/"), seconds, local))
    print(f"run store on S3 (moto, 127.0.0.1); {args.restarts} restart(s), K=4, d=8, "
          "20,000 rows, data on local disk")
    methods = sorted(set().union(*(r[1] for r in rows)))
    print(f"{'iterations':>10} {'requests':>9} " + " ".join(f"{m:>6}" for m in methods)
          + f" {'s (S3)':>8} {'s (disk)':>8}")
    for n, counts, seconds, local in rows:
        print(f"{n:>10} {sum(counts.values()):>9} "
              + " ".join(f"{counts[m]:>6}" for m in methods)
              + f" {seconds:>8.1f} {local:>8.1f}")
    (n1, c1, _, _), (n2, c2, _, _) = rows
    per = {m: (c2[m] - c1[m]) / (n2 - n1) for m in methods}
    print(f"{'per iter.':>10} {sum(per.values()):>9.1f} "
          + " ".join(f"{per[m]:>6.1f}" for m in methods))


if __name__ == "__main__":
    main()
