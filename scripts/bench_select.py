"""Model selection in one run vs one fit per candidate: data passes and wall time.

    python scripts/bench_select.py                 # 8 sizes x 2 covariance types, 200k x 8
    python scripts/bench_select.py --small         # a quick look

Both sides run on the same 2-worker LocalCluster (one single-threaded worker process per
core), over the same Zarr store read from disk in every pass, with the same settings and
``random_state``, so every candidate starts from the same parameters and ends with the
same parameters in both (the script checks it). "passes" counts the passes over the data
(summary, seeding, k-means and EM iterations, the final log-likelihood).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import dask.array as da
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


class PassCounter:
    """Counts the passes daskem makes (every pass goes through ChunkedData.map_reduce)."""

    def __init__(self):
        from daskem.engine.data import ChunkedData

        self.count = 0
        original = ChunkedData.map_reduce

        def counted(data, *args, **kwargs):
            self.count += 1
            return original(data, *args, **kwargs)

        ChunkedData.map_reduce = counted


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--n-init", type=int, default=1)
    args = parser.parse_args(argv)

    import make_feature_store as mfs
    from distributed import Client, LocalCluster

    from daskem import ConvergenceWarning, GaussianMixture, select_mixture

    n = 40_000 if args.small else 200_000
    sizes = [2, 3, 4, 5] if args.small else [2, 3, 4, 5, 6, 7, 8, 9]
    ctypes = ["full", "diag"]
    settings = dict(tol=1e-4, max_iter=200, n_init=args.n_init, random_state=0)
    workers = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/bench.zarr"
        mfs.write_zarr(path, mfs.synthetic_array(n, 8, 5, chunk_rows=25_000, seed=0))
        X = da.from_zarr(path, component="X")
        env = {v: "1" for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                          dashboard_address=None, env=env) as cluster, Client(cluster), \
                warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            counter = PassCounter()
            t0 = time.perf_counter()
            sel = select_mixture(X, sizes, ctypes, **settings)
            t_select = time.perf_counter() - t0
            p_select = counter.count

            counter.count = 0
            t0 = time.perf_counter()
            worst = 0.0
            for cand in sel.candidates:
                alone = GaussianMixture(cand.n_components, covariance_type=cand.covariance_type,
                                        **settings).fit(X)
                alone.bic(X)  # the criterion a separate fit needs: one more pass
                worst = max(worst, float(np.abs(alone.means_ - cand.estimator.means_).max()))
            t_separate = time.perf_counter() - t0
            p_separate = counter.count

    print(f"data: {n:,} x 8 float64 Zarr store, 25,000-row chunks; {workers} workers")
    print(f"grid: K in {sizes} x {ctypes} = {len(sizes) * len(ctypes)} candidates, "
          f"n_init={args.n_init}, tol=1e-4")
    print(f"chosen by BIC: {sel.best.n_components} components, {sel.best.covariance_type}")
    print(f"largest difference of means, select vs separate fits: {worst:.1e}")
    print()
    print("| | passes over the data | wall time (s) |")
    print("|---|---:|---:|")
    print(f"| one `select` run | {p_select} | {t_select:.1f} |")
    print(f"| {len(sel.candidates)} separate fits (+ `bic`) | {p_separate} | {t_separate:.1f} |")
    print(f"| ratio (separate / select) | {p_separate / p_select:.1f}x | "
          f"{t_separate / t_select:.1f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
