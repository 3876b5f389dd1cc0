"""Scheduler overhead per iteration against the number of chunks, on the virtual store.

    python scripts/bench_chunks.py [--chunks 1000 2000 5000 10000 20000] [--rows 64]

Each chunk holds only ``--rows`` rows of the synthetic generator's virtual store (nothing
is stored), so the compute is negligible and the seconds per iteration are the cost of
scheduling one pass: (fit with 6 iterations − fit with 2) / 4, k-means, 2 worker processes.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
import warnings
from pathlib import Path

import numpy as np


def synthetic():
    spec = importlib.util.spec_from_file_location(
        "make_feature_store", Path(__file__).with_name("make_feature_store.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1000, 2000, 5000, 10000,
                                                                   20000])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from daskem import KMeans

    warnings.simplefilter("ignore")
    mfs = synthetic()
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster):
        for n_chunks in args.chunks:
            X = mfs.synthetic_array(n_chunks * args.rows, 4, 3, chunk_rows=args.rows, seed=0)
            init = np.asarray(X[:3].compute(), dtype=np.float64)
            times = {}
            for iters in (2, 6):
                t0 = time.perf_counter()
                KMeans(3, init=init, max_iter=iters, tol=0).fit(X)
                times[iters] = time.perf_counter() - t0
            per_iter = (times[6] - times[2]) / 4
            rows.append((n_chunks, per_iter))
            print(f"{n_chunks:6d} chunks: {per_iter:.3f} s per iteration "
                  f"({per_iter / n_chunks * 1e3:.3f} ms per chunk)", flush=True)
    print("\n| chunks | seconds per iteration | ms per chunk |\n|---|---|---|")
    for n_chunks, per_iter in rows:
        print(f"| {n_chunks:,} | {per_iter:.2f} | {per_iter / n_chunks * 1e3:.3f} |")


if __name__ == "__main__":
    main()
