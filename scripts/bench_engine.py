"""Seconds per EM iteration: daskem on a LocalCluster vs scikit-learn, same data, same start.

    python scripts/bench_engine.py            # the full-size cases (several minutes)
    python scripts/bench_engine.py --small    # a quick look

Per-iteration time is measured as (time of a fit with ``hi`` iterations − time of a fit with
``lo`` iterations) / (hi − lo) for both tools, so that set-up costs (daskem's summary pass
and final pass, scikit-learn's input checks) cancel out. Both start from the same initial
parameters with ``tol=0``. daskem runs on a ``LocalCluster`` with one single-threaded worker
process per core, the data persisted on the workers; scikit-learn uses all cores through
its own threads (OpenMP for k-means, BLAS for mixtures).
"""

from __future__ import annotations

import argparse
import os
import time
import warnings

import dask.array as da
import numpy as np


def unstructured(n, d, k, dtype, seed=0):
    """Rows with no cluster structure: Lloyd keeps moving for many iterations."""
    return np.random.default_rng(seed).normal(size=(n, d)).astype(dtype)


def blobs(n, d, k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=2.0, size=(k, d))
    labels = rng.integers(0, k, size=n)
    X = centers[labels] + rng.normal(size=(n, d))
    return X.astype(dtype)


def per_iteration(fit, lo, hi):
    """(seconds per iteration, iterations measured) from two fits of lo and hi iterations."""
    t0 = time.perf_counter()
    n_lo = fit(lo)
    t1 = time.perf_counter()
    n_hi = fit(hi)
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / max(n_hi - n_lo, 1), n_hi - n_lo


def bench_kmeans(n, d, k, dtype, lo, hi, chunk_rows):
    from sklearn.cluster import KMeans as SkKMeans

    from daskem import KMeans

    X = unstructured(n, d, k, dtype)
    init = X[np.random.default_rng(1).choice(n, k, replace=False)].astype(np.float64)
    Xd = da.from_array(X, chunks=(chunk_rows, -1)).persist()

    def sk(iters):
        return SkKMeans(k, init=init, n_init=1, max_iter=iters, tol=0,
                        algorithm="lloyd").fit(X).n_iter_

    def ours(iters):
        return KMeans(k, init=init, max_iter=iters, tol=0).fit(Xd).n_iter_

    return per_iteration(sk, lo, hi), per_iteration(ours, lo, hi)


def bench_gmm(n, d, k, dtype, lo, hi, chunk_rows):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from daskem import GaussianMixture

    X = blobs(n, d, k, dtype)
    start = GaussianMixture(k, max_iter=2, tol=0, random_state=0).fit(X[:100_000])
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    Xd = da.from_array(X, chunks=(chunk_rows, -1)).persist()

    def sk(iters):
        return SkGaussianMixture(k, max_iter=iters, tol=0, **init).fit(X).n_iter_

    def ours(iters):
        return GaussianMixture(k, max_iter=iters, tol=0, **init).fit(Xd).n_iter_

    return per_iteration(sk, lo, hi), per_iteration(ours, lo, hi)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a tenth of the sizes")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--repeat", type=int, default=1, help="measure every case this many "
                        "times (every run is printed)")
    args = parser.parse_args()
    scale = 10 if args.small else 1

    from distributed import Client, LocalCluster

    warnings.simplefilter("ignore")
    cases = [
        ("KMeans float64", bench_kmeans, 1_000_000 // scale, 32, 64, np.float64, 3, 13),
        ("KMeans float32", bench_kmeans, 1_000_000 // scale, 32, 64, np.float32, 3, 13),
        ("GaussianMixture full float64", bench_gmm, 500_000 // scale, 16, 16, np.float64,
         2, 7),
    ]
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                      dashboard_address=None, host="127.0.0.1") as cluster, Client(cluster):
        rows = []
        for run in range(1, args.repeat + 1):
            for name, bench, n, d, k, dtype, lo, hi in cases:
                chunk_rows = max(n // (4 * args.workers), 1)
                (t_sk, n_sk), (t_ours, n_ours) = bench(n, d, k, dtype, lo, hi, chunk_rows)
                rows.append((run, name, n, d, k, t_sk, t_ours))
                print(f"run {run} {name}: scikit-learn {t_sk:.3f} s/iter ({n_sk} iters), "
                      f"daskem {t_ours:.3f} s/iter ({n_ours} iters)", flush=True)
    print()
    print("| run | case | n | d | K | scikit-learn s/iter | daskem s/iter | "
          "daskem / scikit-learn |")
    print("|---|---|---|---|---|---|---|---|")
    for run, name, n, d, k, t_sk, t_ours in rows:
        ratio = t_ours / t_sk
        how = f"{ratio:.2f}x" if ratio >= 0.5 else f"{ratio:.3f}x ({1 / ratio:.1f}x faster)"
        print(f"| {run} | {name} | {n:,} | {d} | {k} | {t_sk:.3f} | {t_ours:.3f} | {how} |")


if __name__ == "__main__":
    main()
