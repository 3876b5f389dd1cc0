"""One core, no cluster: daskem's per-chunk kernels against scikit-learn's single-threaded
iteration on the same rows, and where the k-means kernel's time goes.

    python scripts/bench_kernels.py            # 250,000 rows, d=32, K=64 (k-means)
                                               # and 125,000 rows, d=16, K=16 (mixture)

This separates the kernel's own speed from what a cluster adds (scheduling, transfers, the
workers' event loops): ``scripts/bench_engine.py`` measures the whole.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits


def best_of(fn, repeat=7) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def sklearn_per_iteration(fit, lo: int, hi: int) -> float:
    """Seconds per iteration from fits of ``lo`` and ``hi`` iterations (by ``n_iter_``: a
    Lloyd fit stops early once no label changes)."""
    runs = {}
    for iters in (lo, hi):
        fit(iters)
        times, n_iter = [], 0
        for _ in range(3):
            t0 = time.perf_counter()
            n_iter = fit(iters).n_iter_
            times.append(time.perf_counter() - t0)
        runs[iters] = (float(np.median(times)), n_iter)
    (t_lo, n_lo), (t_hi, n_hi) = runs[lo], runs[hi]
    if n_hi <= n_lo:
        raise RuntimeError("scikit-learn converged before the longer fit; use harder data")
    return (t_hi - t_lo) / (n_hi - n_lo)


def kmeans_case(n=250_000, d=32, k=64):
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(k, d))
    for dtype in (np.float64, np.float32):
        x = (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)
        kmeans_one(x, k)


def kmeans_one(x: np.ndarray, k: int) -> None:
    from sklearn.cluster import KMeans as SkKMeans

    from daskem.kernels.estep import KMeansKernelParams, block_rows, kmeans_chunk_stats

    n, d = x.shape
    dtype = x.dtype
    init = x[:k].astype(np.float64)
    params = KMeansKernelParams.build(init, dtype, far_capacity=k)
    ours = best_of(lambda: kmeans_chunk_stats(x, None, 0, params))
    theirs = sklearn_per_iteration(
        lambda iters: SkKMeans(k, init=init, n_init=1, max_iter=iters, tol=0,
                               algorithm="lloyd").fit(x), 1, 8)
    print(f"k-means {dtype.name} n={n:,} d={d} K={k}: daskem kernel {ours * 1e3:.1f} ms, "
          f"scikit-learn Lloyd iteration {theirs * 1e3:.1f} ms, ratio {ours / theirs:.2f}x")

    # Where the kernel's time goes: its NumPy steps on one block, timed alone.
    b = block_rows(n, 2 * d + k + 1)
    xb = x[:b]
    aug = np.ones((b, d + 1), dtype)
    scores = np.empty((b, k), dtype)
    resid = np.empty((b, d), dtype)
    labels = np.zeros(b, dtype=np.intp)

    def step_gemm():
        np.subtract(xb, params.shift, out=aug[:, :d])
        np.matmul(aug, params.scorer, out=scores)

    def step_argmin():
        np.argmin(scores, axis=1, out=labels)

    def step_residuals():
        np.take(params.centers, labels, axis=0, out=resid, mode="clip")
        np.subtract(xb, resid, out=resid)
        np.einsum("ij,ij->i", resid, resid)

    steps = {"shift + distance GEMM": step_gemm, "argmin": step_argmin,
             "exact residuals + norms": step_residuals}
    parts = ", ".join(f"{label} {best_of(fn, 50) * n / b * 1e3:.1f} ms"
                      for label, fn in steps.items())
    print(f"    per chunk: {parts}")


def gmm_case(n=125_000, d=16, k=16):
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from daskem import GaussianMixture
    from daskem.kernels.estep import GaussianKernelParams, gaussian_chunk_stats

    rng = np.random.default_rng(0)
    x = rng.normal(scale=2.0, size=(k, d))[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    start = GaussianMixture(k, max_iter=2, tol=0, random_state=0).fit(x)
    params = GaussianKernelParams.build(start.weights_, start.means_,
                                        start.precisions_cholesky_, "full", far_capacity=k)
    ours = best_of(lambda: gaussian_chunk_stats(x, None, 0, params))
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)

    theirs = sklearn_per_iteration(
        lambda iters: SkGaussianMixture(k, max_iter=iters, tol=0, **init).fit(x), 1, 4)
    print(f"mixture full float64 n={n:,} d={d} K={k}: daskem kernel {ours * 1e3:.1f} ms, "
          f"scikit-learn EM iteration {theirs * 1e3:.1f} ms, {theirs / ours:.1f}x faster")


def main() -> None:
    warnings.simplefilter("ignore")
    # Load scikit-learn (and the OpenMP runtime of its k-means) before limiting threads:
    # a runtime loaded inside the limit would not be limited.
    import sklearn.cluster  # noqa: F401
    import sklearn.mixture  # noqa: F401

    with threadpool_limits(1):
        kmeans_case()
        gmm_case()


if __name__ == "__main__":
    main()
