"""Passes and wall time of whole fits on a Zarr store larger than the cluster's memory.

    python scripts/bench_passes_large.py /work/large.zarr --gigabytes 6
    python scripts/bench_passes_large.py /work/large.zarr --only gmm

Writes the store once if it is missing (the synthetic generator of make_feature_store.py:
float64, 16 features, a mixture of 8 overlapping anisotropic Gaussians, chunks of 2^18 rows
= 32 MiB), then fits it on a 2-worker LocalCluster whose workers may hold 2 GiB each, so the
store does not fit in the cluster (it may in the machine's page cache: the disk is read
only as fast as the cache misses). Every fit reads the store through
``daskem.io.ZarrRows`` with ``n_init=3`` and ``random_state=0``, three ways:

* "whole data": ``init_params="k-means||"`` / ``init="k-means||"`` — k-means|| seeding and
  every restart over the data, how daskem fitted before it initialised on the sample;
* "sample": the defaults (seeding, k-means and the choice among restarts on the sample);
* "sample + incremental": the same with ``update="incremental"`` (16 blocks).

Prints passes by phase, wall time, seconds per pass, the final objective (mean
log-likelihood of the last EM pass; k-means: inertia per row) and the peak memory of any
worker process.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_large import MemoryWatch, synthetic  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--gigabytes", type=float, default=6.0)
    parser.add_argument("--memory-limit", default="2GiB")
    parser.add_argument("--only", choices=["gmm", "kmeans"])
    parser.add_argument("--skip-whole-data", action="store_true",
                        help="leave out the whole-data initialisation (the slowest)")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    mfs = synthetic()
    from distributed import Client, LocalCluster

    from daskem import GaussianMixture, KMeans
    from daskem.io import ZarrRows

    d, k, chunk_rows = 16, 8, 1 << 18
    n_rows = int(args.gigabytes * 2**30 / (8 * d))
    n_rows -= n_rows % chunk_rows
    ways = [("whole data", {"init": "k-means||"}), ("sample", {}),
            ("sample + incremental", {"update": "incremental"})]
    if args.skip_whole_data:
        ways = ways[1:]
    rows = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      memory_limit=args.memory_limit, dashboard_address=None,
                      host="127.0.0.1") as cluster, Client(cluster) as client:
        if not Path(args.path).exists():
            started = time.perf_counter()
            mfs.write_zarr(args.path, mfs.synthetic_array(n_rows, d, k, chunk_rows=chunk_rows,
                                                          seed=0))
            print(f"wrote {args.path} in {time.perf_counter() - started:.0f} s", flush=True)
        reader = ZarrRows(args.path, "X")
        size = reader.shape[0] * reader.shape[1] * reader.dtype.itemsize
        print(f"store: {reader.shape[0]:,} x {reader.shape[1]} {reader.dtype} "
              f"({size / 2**30:.1f} GiB); cluster: 2 workers x {args.memory_limit}",
              flush=True)
        for kind in ("gmm", "kmeans"):
            if args.only and kind != args.only:
                continue
            for way, options in ways:
                if kind == "gmm":
                    options = {("init_params" if key == "init" else key): value
                               for key, value in options.items()}
                    est = GaussianMixture(k, n_init=3, random_state=0, **options)
                else:
                    est = KMeans(k, n_init=3, random_state=0, **options)
                with MemoryWatch(client) as watch:
                    started = time.perf_counter()
                    est.fit(reader)
                    seconds = time.perf_counter() - started
                value = (est.lower_bound_ if kind == "gmm"
                         else est.inertia_ / reader.shape[0])
                rows.append((kind, way, est.n_passes_, dict(est.passes_), seconds, value,
                             watch.peak))
                print(f"{kind:6s} {way:22s} passes {est.n_passes_:3d} {dict(est.passes_)} "
                      f"{seconds:7.1f} s ({seconds / est.n_passes_:.1f} s per pass) "
                      f"objective {value:.6f}  peak worker {watch.peak / 2**30:.2f} GiB",
                      flush=True)
    print()
    print("| model | initialisation | passes (by phase) | wall s | s per pass | objective | "
          "peak worker memory |")
    print("|---|---|---|---:|---:|---:|---:|")
    for kind, way, n_passes, by_phase, seconds, value, peak in rows:
        phases = ", ".join(f"{p} {c}" for p, c in by_phase.items())
        what = "mean log-lik." if kind == "gmm" else "inertia per row"
        print(f"| {kind} | {way} | {n_passes} ({phases}) | {seconds:.0f} | "
              f"{seconds / n_passes:.1f} | {value:.6f} ({what}) | {peak / 2**30:.2f} GiB |")


if __name__ == "__main__":
    main()
