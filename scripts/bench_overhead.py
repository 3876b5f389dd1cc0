"""What one pass costs beyond the kernels, on a 2-worker LocalCluster.

    python scripts/bench_overhead.py [--chunks 16 64 256] [--rows 2000]

For data small enough that the kernels take little time, a pass is mostly overhead: the
client building the pass's graph, the scheduler running its tasks and the tree reduction,
the statistics travelling back. Printed per number of chunks (k-means and a full-covariance
mixture, d = 8, K = 8, data persisted on the workers):

* ``s/iter``: seconds per EM iteration of a whole fit ((fit of hi − fit of lo iterations)
  / (hi − lo)), which is one pass plus the client's M-step and bookkeeping;
* ``kernels``: the same chunks' kernels run one after another in this process, halved (two
  workers share them);
* ``empty pass``: one pass of the same graph shape with a kernel that does nothing;
* ``overhead``: s/iter − kernels.

Then, for data that make one chunk (``--one-chunk-rows``, default 20,000): seconds per
iteration when the rows are a NumPy array (daskem runs the passes in this process) and when
they are the same rows as a one-chunk dask array persisted on the cluster (every pass a
task on a worker).
"""

from __future__ import annotations

import argparse
import time
import warnings

import dask.array as da
import numpy as np


def per_iteration(fit, lo=3, hi=13, repeat=3) -> float:
    """Seconds per iteration from fits of ``lo`` and ``hi`` iterations (by the iterations
    they did: k-means may stop early once no label can change)."""
    times, done = {}, {}
    for iters in (lo, hi):
        runs = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            done[iters] = fit(iters)
            runs.append(time.perf_counter() - t0)
        times[iters] = float(np.median(runs))
    if done[hi] <= done[lo]:
        raise RuntimeError("the longer fit did no more iterations; use harder data")
    return (times[hi] - times[lo]) / (done[hi] - done[lo])


class Nothing:
    def __add__(self, other):
        return self


def nothing(x, w, offset, payload):
    return Nothing()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--rows", type=int, default=2000, help="rows per chunk")
    parser.add_argument("--one-chunk-rows", type=int, default=20_000)
    args = parser.parse_args()

    from distributed import Client, LocalCluster

    from daskem import GaussianMixture, KMeans
    from daskem.engine.data import as_chunked
    from daskem.engine.em import GaussianFamily, KMeansFamily
    from daskem.engine.reduce import map_reduce
    from daskem.kernels.mstep import GaussianParams, KMeansParams

    d, k = 8, 8
    rng = np.random.default_rng(0)
    cluster = LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                           dashboard_address=None)
    client = Client(cluster)
    print(f"{'chunks':>6} {'model':<8} {'s/iter':>8} {'kernels':>8} {'empty pass':>10} "
          f"{'overhead':>8}")
    try:
        for n_chunks in args.chunks:
            n = n_chunks * args.rows
            x = rng.normal(size=(n, d)) + rng.integers(0, 4, size=(n, 1)) * 3.0
            X = da.from_array(x, chunks=(args.rows, d)).persist()
            centers = x[:k].copy()
            data = as_chunked(X)
            t0 = time.perf_counter()
            for _ in range(10):
                map_reduce(data.chunks, None, data.offsets, nothing, None, phase="bench")
            empty = (time.perf_counter() - t0) / 10
            gm0 = GaussianMixture(k, means_init=centers, max_iter=2, random_state=0).fit(x)
            families = {
                "kmeans": (KMeansFamily(), KMeansParams(centers)),
                "gmm": (GaussianFamily("full"),
                        GaussianParams("full", gm0.weights_, gm0.means_, gm0.covariances_,
                                       gm0.precisions_cholesky_)),
            }
            for name, (family, params) in families.items():
                kp = family.kernel_params(params, x.dtype)
                blocks = np.array_split(x, n_chunks)
                family.kernel(blocks[0], None, 0, kp)
                t0 = time.perf_counter()
                for b in blocks:
                    family.kernel(b, None, 0, kp)
                kernels = (time.perf_counter() - t0) / 2

                def fit(iters, name=name, centers=centers, gm0=gm0, X=X):
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        if name == "kmeans":
                            est = KMeans(k, init=centers, max_iter=iters, tol=0)
                        else:
                            est = GaussianMixture(k, means_init=gm0.means_,
                                                  weights_init=gm0.weights_,
                                                  precisions_init=gm0.precisions_,
                                                  max_iter=iters, tol=0)
                        return est.fit(X).n_iter_

                fit(2)
                s_iter = per_iteration(fit)
                print(f"{n_chunks:>6} {name:<8} {s_iter:>8.4f} {kernels:>8.4f} {empty:>10.4f} "
                      f"{s_iter - kernels:>8.4f}", flush=True)
        one_chunk(rng, args.one_chunk_rows, d, k)
    finally:
        client.close()
        cluster.close()


def one_chunk(rng, n: int, d: int, k: int) -> None:
    from daskem import GaussianMixture, KMeans

    x = rng.normal(size=(n, d)) + rng.integers(0, 4, size=(n, 1)) * 3.0
    centers = x[:k].copy()
    gm0 = GaussianMixture(k, means_init=centers, max_iter=2, random_state=0).fit(x)
    ways = {"NumPy (in process)": x,
            "dask, 1 chunk (cluster)": da.from_array(x, chunks=(n, d)).persist()}
    print(f"\none chunk of {n:,} x {d}, K = {k}: seconds per iteration")
    print(f"{'input':<24} {'kmeans':>8} {'gmm':>8}")
    for way, X in ways.items():
        def fit_kmeans(iters, X=X):
            return KMeans(k, init=centers, max_iter=iters, tol=0).fit(X).n_iter_

        def fit_gmm(iters, X=X):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return GaussianMixture(k, means_init=gm0.means_, weights_init=gm0.weights_,
                                       precisions_init=gm0.precisions_, max_iter=iters,
                                       tol=0).fit(X).n_iter_

        print(f"{way:<24} {per_iteration(fit_kmeans):>8.4f} {per_iteration(fit_gmm):>8.4f}",
              flush=True)


if __name__ == "__main__":
    main()
