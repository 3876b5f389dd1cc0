"""Scheduler overhead per iteration against the number of chunks, on the virtual store.

    python scripts/bench_chunks.py [--chunks 1000 2000 5000 10000 20000] [--rows 64]

Each chunk holds only ``--rows`` rows of the synthetic generator's virtual store (nothing
is stored), so the compute is small and the seconds per iteration are mostly the cost of
scheduling one pass: (fit with 6 iterations − fit with 2) / 4, k-means, 2 worker processes.
The time to generate all rows once, on one core, is printed beside it: with the reader, a
small store is one task, so that generation is what remains of an iteration.
Two ways in: the store as a dask array (one task per chunk, plus the task that makes the
chunk) and as a row reader (each task reads about 64 MiB of whole chunks itself).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np


def synthetic():
    """The generator beside this script; its code travels with the tasks by value, since
    workers cannot import scripts/."""
    import cloudpickle
    import make_feature_store  # scripts/ is on sys.path when this file runs as a script

    cloudpickle.register_pickle_by_value(make_feature_store)
    return make_feature_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[1000, 2000, 5000, 10000,
                                                                   20000])
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--dask-limit", type=int, default=5000,
                        help="skip the dask-array way above this many chunks (slow)")
    args = parser.parse_args()
    from distributed import Client, LocalCluster

    from daskem import KMeans

    warnings.simplefilter("ignore")
    mfs = synthetic()
    rows = []
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster):
        for n_chunks in args.chunks:
            reader = mfs.SyntheticRows(n_chunks * args.rows, 4, 3, chunk_rows=args.rows,
                                       seed=0)
            init = reader.read(0, 3).astype(np.float64)
            t0 = time.perf_counter()
            reader.read(0, reader.shape[0])
            result = {"generate": time.perf_counter() - t0}
            for way, X in (("reader", reader), ("dask", reader.to_dask())):
                if way == "dask" and n_chunks > args.dask_limit:
                    continue
                times = {}
                for iters in (2, 6):
                    t0 = time.perf_counter()
                    KMeans(3, init=init, max_iter=iters, tol=0).fit(X)
                    times[iters] = time.perf_counter() - t0
                result[way] = (times[6] - times[2]) / 4
                print(f"{n_chunks:6d} chunks, {way:6s}: {result[way]:.3f} s per iteration",
                      flush=True)
            rows.append((n_chunks, result))
    print("\n| chunks | row reader: s per iteration | of which generating the rows (one "
          "core) | row reader: the rest | dask array: s per iteration |\n|---|---|---|---|---|")
    for n_chunks, result in rows:
        dask_s = f"{result['dask']:.2f}" if "dask" in result else "not run"
        print(f"| {n_chunks:,} | {result['reader']:.2f} | {result['generate']:.2f} | "
              f"{result['reader'] - result['generate']:.2f} | {dask_s} |")


if __name__ == "__main__":
    main()
