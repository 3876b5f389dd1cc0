"""The cost of a pass with missing values, against a pass over complete data, side by side.

    python scripts/bench_missing.py [--rows 1000000] [--features 16] [--components 16]
                                    [--runs 3]

Two copies of the same rows: complete, and with 10% of the rows missing 1–3 features (chosen
at random). ``GaussianMixture(missing="marginalize")`` fits each from the same initial
parameters (tol 0, a fixed number of iterations) on a 2-worker LocalCluster with the data
persisted on the workers; seconds per pass are the difference of two fits' times over their
difference in passes. Also one core, one chunk: the chunk kernel alone on each copy. Every
run is printed, with the ratio missing / complete (target: at most 1.5).
"""

from __future__ import annotations

import argparse
import time
import warnings

import dask.array as da
import numpy as np
from distributed import Client, LocalCluster
from threadpoolctl import threadpool_limits

from daskem import GaussianMixture
from daskem.kernels.covariance import covariance
from daskem.kernels.estep import GaussianKernelParams, gaussian_chunk_stats


def make_data(n, d, k, seed=0):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    x = means[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    holed = x.copy()
    rows = np.flatnonzero(rng.uniform(size=n) < 0.10)
    for row, count in zip(rows, rng.integers(1, 4, rows.size), strict=True):
        holed[row, rng.choice(d, size=count, replace=False)] = np.nan
    return x, holed, means


def fit_seconds(X, means, kind, iters):
    k, d = means.shape
    init = dict(weights_init=np.full(k, 1.0 / k), means_init=means)
    if covariance(kind).updated:
        shape = covariance(kind).shape(k, d)
        init["precisions_init"] = (np.broadcast_to(np.eye(d), shape) if len(shape) == 3
                                   else np.ones(shape))
    gm = GaussianMixture(k, covariance_type=kind, tol=0.0, max_iter=iters,
                         missing="marginalize", **init)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gm.fit(X)
    return time.perf_counter() - t0


def per_pass(X, means, kind, short=2, long=10):
    return (fit_seconds(X, means, kind, long) - fit_seconds(X, means, kind, short)) / (
        long - short)


def kernel_seconds(x, means, kind, repeat=5):
    k, d = means.shape
    ctype = covariance(kind)
    shape = ctype.shape(k, d)
    prec_chol = (np.broadcast_to(np.eye(d), shape) if len(shape) == 3 else np.ones(shape))
    p = GaussianKernelParams.build(np.full(k, 1.0 / k), means, prec_chol, kind,
                                   marginalize=True)
    gaussian_chunk_stats(x[:1000], None, 0, p)  # compile / load
    best = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        gaussian_chunk_stats(x, None, 0, p)
        best.append(time.perf_counter() - t0)
    return float(np.median(best))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--features", type=int, default=16)
    ap.add_argument("--components", type=int, default=16)
    ap.add_argument("--chunk-rows", type=int, default=125_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kinds", nargs="+", default=["full", "diag"])
    args = ap.parse_args()
    x, holed, means = make_data(args.rows, args.features, args.components)
    n_holed = int(np.isnan(holed).any(axis=1).sum())
    print(f"{args.rows:,} rows x {args.features}, K={args.components}; {n_holed:,} rows "
          f"({n_holed / args.rows:.1%}) miss 1-3 features; chunks of {args.chunk_rows:,} rows")
    chunk = slice(0, args.chunk_rows)
    print("\none core, one chunk (the chunk kernel, BLAS on one thread):")
    for kind in args.kinds:
        for run in range(args.runs):
            with threadpool_limits(1):
                a = kernel_seconds(x[chunk], means, kind)
                b = kernel_seconds(holed[chunk], means, kind)
            print(f"  {kind:9s} run {run + 1}: complete {a * 1e3:7.1f} ms  missing "
                  f"{b * 1e3:7.1f} ms  ratio {b / a:.2f}")
    print("\n2-worker LocalCluster, seconds per pass:")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        complete = client.persist(da.from_array(x, chunks=(args.chunk_rows, -1)))
        missing = client.persist(da.from_array(holed, chunks=(args.chunk_rows, -1)))
        for kind in args.kinds:
            fit_seconds(complete, means, kind, 1)  # workers load the kernels
            fit_seconds(missing, means, kind, 1)
            for run in range(args.runs):
                a = per_pass(complete, means, kind)
                b = per_pass(missing, means, kind)
                print(f"  {kind:9s} run {run + 1}: complete {a:.3f} s  missing {b:.3f} s  "
                      f"ratio {b / a:.2f}")


if __name__ == "__main__":
    main()
