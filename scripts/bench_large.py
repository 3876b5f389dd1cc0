"""A fit over a Zarr store larger than memory: time, read rate, worker memory, task count.

    python scripts/bench_large.py data/large.zarr --gigabytes 30    # writes the store if missing
    python scripts/bench_large.py data/large.zarr --iterations 3 --model gmm

Writes the store with the synthetic generator (float64, 16 features, chunks of 2^18 rows =
32 MiB), then fits from a fixed start on a 2-worker LocalCluster, reading the store once per
iteration, and prints per iteration: seconds, bytes read per second, the peak resident memory
of any worker (sampled every 0.2 s) and the number of tasks the scheduler ran. ``--reader``
fits through ``daskem.io.ZarrRows`` (tasks read their own blocks) instead of a dask array.
"""

from __future__ import annotations

import argparse
import threading
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np


def synthetic():
    """The generator beside this script; its code travels with the tasks by value, since
    workers cannot import scripts/."""
    import cloudpickle
    import make_feature_store  # scripts/ is on sys.path when this file runs as a script

    cloudpickle.register_pickle_by_value(make_feature_store)
    return make_feature_store


class MemoryWatch:
    """Peak RSS of the workers, sampled from a thread."""

    def __init__(self, client, interval=0.2):
        self.client, self.interval = client, interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import psutil

        def rss():
            return psutil.Process().memory_info().rss

        while not self._stop.is_set():
            try:
                self.peak = max([self.peak, *self.client.run(rss).values()])
            except Exception:  # noqa: BLE001 - a sample missed while a worker is busy
                pass
            self._stop.wait(self.interval)

    def reset(self):
        self.peak = 0

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--gigabytes", type=float, default=30.0)
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--chunk-rows", type=int, default=1 << 18)
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--model", choices=["kmeans", "gmm"], default="kmeans")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--reader", action="store_true",
                        help="fit through daskem.io.ZarrRows instead of a dask array")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    mfs = synthetic()
    import zarr
    from distributed import Client, LocalCluster

    from daskem import GaussianMixture, KMeans
    from daskem.io.source import ZarrRows

    n_rows = int(args.gigabytes * 2**30 / (8 * args.features))
    n_rows -= n_rows % args.chunk_rows
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster) as client:
        if not Path(args.path).exists():
            t0 = time.perf_counter()
            mfs.write_zarr(args.path, mfs.synthetic_array(
                n_rows, args.features, 8, chunk_rows=args.chunk_rows, seed=0))
            print(f"wrote {args.path}: {n_rows:,} x {args.features} float64 "
                  f"({n_rows * args.features * 8 / 2**30:.1f} GiB) in "
                  f"{time.perf_counter() - t0:.0f} s", flush=True)
        arr = zarr.open_group(args.path, mode="r")["X"]
        X = da.from_zarr(arr)
        size = X.nbytes
        print(f"store: {X.shape[0]:,} x {X.shape[1]} ({size / 2**30:.1f} GiB, "
              f"{X.numblocks[0]} chunks of {X.chunks[0][0]:,} rows); machine memory "
              f"{__import__('psutil').virtual_memory().total / 2**30:.1f} GiB", flush=True)
        init = np.asarray(arr[:8], dtype=np.float64)
        if args.model == "kmeans":
            est = KMeans(8, init=init, max_iter=args.iterations, tol=0)
        else:
            start = GaussianMixture(8, covariance_type="diag", max_iter=1, tol=0,
                                    means_init=init, random_state=0)
            start.fit(np.asarray(arr[:50000]))
            est = GaussianMixture(8, covariance_type="diag", max_iter=args.iterations, tol=0,
                                  weights_init=start.weights_, means_init=start.means_,
                                  precisions_init=start.precisions_)
        rows = []
        source = ZarrRows(args.path, "X") if args.reader else X
        with MemoryWatch(client) as watch:
            last = [time.perf_counter(), time.time()]

            def on_pass(n_pass, states):
                now, wall = time.perf_counter(), time.time()
                tasks = len(client.get_task_stream(start=last[1], stop=wall))
                passes = 2 if n_pass == 1 else 1  # the first also holds the summary pass
                seconds = (now - last[0]) / passes
                rows.append((n_pass, seconds, size / seconds, watch.peak, tasks // passes))
                print(f"iteration {n_pass}: {seconds:.1f} s per pass, "
                      f"{size / seconds / 2**20:.0f} MiB/s, peak worker memory "
                      f"{watch.peak / 2**20:.0f} MiB, {tasks // passes} tasks per pass",
                      flush=True)
                last[0], last[1] = now, wall
                watch.reset()

            t0 = time.perf_counter()
            est.fit(source, callback=on_pass)
            total = time.perf_counter() - t0
    print(f"\nfit: {total:.0f} s in all, {'row reader' if args.reader else 'dask array'}; "
          "iteration 1 is the mean of the summary pass (data check, seeding sample) and the "
          "first E-step")
    print("\n| iteration | seconds | MiB/s read | peak worker RSS (MiB) | tasks |")
    print("|---|---|---|---|---|")
    for n_pass, seconds, rate, peak, tasks in rows:
        print(f"| {n_pass} | {seconds:.1f} | {rate / 2**20:.0f} | {peak / 2**20:.0f} | {tasks} |")


if __name__ == "__main__":
    main()
