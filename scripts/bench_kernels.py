"""One core, no cluster: daskem's per-chunk kernels (compiled, and their NumPy twins)
against scikit-learn's single-threaded iteration on the same rows, and the compile time.

    python scripts/bench_kernels.py [--repeat 3]
        # k-means 250,000 rows, d=32, K=64 (float64 and float32);
        # mixtures 125,000 rows, d=16, K=16 (full and diag)

scikit-learn's k-means iteration is its own Lloyd step (``lloyd_iter_chunked_dense``, one
thread); its mixture iteration is (fit of hi − fit of lo iterations) / (hi − lo). Each
measurement is the median of 9 interleaved runs; ``--repeat`` runs the whole table again
(every run is printed). This separates the kernels' own speed from what a cluster adds:
``scripts/bench_engine.py`` measures the whole, ``scripts/bench_overhead.py`` the rest.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
from threadpoolctl import threadpool_limits


def interleaved(fns: dict, repeat: int = 9) -> dict:
    """Median seconds of each function, run in turn ``repeat`` times (after one warm run)."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: float(np.median(t)) for name, t in times.items()}


def kmeans_case(dtype, n=250_000, d=32, k=64) -> dict:
    from sklearn.cluster._k_means_lloyd import lloyd_iter_chunked_dense

    from daskem.kernels.estep import (
        KMeansKernelParams,
        kmeans_chunk_stats,
        kmeans_chunk_stats_numpy,
    )

    rng = np.random.default_rng(0)
    centers = rng.normal(scale=2.0, size=(k, d))
    x = (centers[rng.integers(0, k, n)] + rng.normal(size=(n, d))).astype(dtype)
    init = x[:k].astype(np.float64)
    params = KMeansKernelParams.build(init, dtype, far_capacity=k)
    sw = np.ones(n, dtype)
    new = np.empty((k, d), dtype)
    weight_in = np.empty(k, dtype)
    labels = np.empty(n, np.int32)
    shift = np.empty(k, dtype)
    return interleaved({
        "scikit-learn": lambda: lloyd_iter_chunked_dense(x, sw, init.astype(dtype), new,
                                                         weight_in, labels, shift, 1, True),
        "compiled": lambda: kmeans_chunk_stats(x, None, 0, params),
        "numpy": lambda: kmeans_chunk_stats_numpy(x, None, 0, params),
    })


def sklearn_em_iteration(fit, lo=1, hi=4) -> float:
    runs = {}
    for iters in (lo, hi):
        fit(iters)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fit(iters)
            times.append(time.perf_counter() - t0)
        runs[iters] = float(np.median(times))
    return (runs[hi] - runs[lo]) / (hi - lo)


def mixture_case(ctype, n=125_000, d=16, k=16) -> dict:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from daskem import GaussianMixture
    from daskem.kernels.estep import (
        GaussianKernelParams,
        gaussian_chunk_stats,
        gaussian_chunk_stats_numpy,
    )

    rng = np.random.default_rng(0)
    x = rng.normal(scale=2.0, size=(k, d))[rng.integers(0, k, n)] + rng.normal(size=(n, d))
    start = GaussianMixture(k, covariance_type=ctype, max_iter=2, tol=0,
                            random_state=0).fit(x)
    params = GaussianKernelParams.build(start.weights_, start.means_,
                                        start.precisions_cholesky_, ctype, far_capacity=k)
    out = interleaved({
        "compiled": lambda: gaussian_chunk_stats(x, None, 0, params),
        "numpy": lambda: gaussian_chunk_stats_numpy(x, None, 0, params),
    })
    init = dict(weights_init=start.weights_, means_init=start.means_,
                precisions_init=start.precisions_)
    out["scikit-learn"] = sklearn_em_iteration(
        lambda iters: SkGaussianMixture(k, covariance_type=ctype, max_iter=iters, tol=0,
                                        **init).fit(x))
    return out


COMPILE_PROBE = ("import time; t0 = time.perf_counter(); "
                 "from daskem.kernels import compiled; t1 = time.perf_counter(); "
                 "s = compiled.warm_up(); print(t1 - t0, s)")


def compile_times() -> tuple:
    """(import numba s, cold compile s, warm load s), each in a fresh process."""
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        runs = [subprocess.run([sys.executable, "-c", COMPILE_PROBE], env=env, check=True,
                               capture_output=True, text=True).stdout.split()
                for _ in range(2)]
    return float(runs[1][0]), float(runs[0][1]), float(runs[1][1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    # Load scikit-learn (and the OpenMP runtime of its k-means) before limiting threads:
    # a runtime loaded inside the limit would not be limited.
    import sklearn.cluster  # noqa: F401
    import sklearn.mixture  # noqa: F401

    from daskem.kernels import compiled

    numba_import, cold, warm = compile_times()
    print(f"compiled kernels, in a fresh process: import numba + module {numba_import:.2f} s, "
          f"compile all (cold cache) {cold:.2f} s, load all (warm cache) {warm:.2f} s")
    compiled.warm_up()
    rows = []
    with threadpool_limits(1):
        for run in range(1, args.repeat + 1):
            for label, case in [
                ("k-means float64, 250,000 × 32, K=64", lambda: kmeans_case(np.float64)),
                ("k-means float32, 250,000 × 32, K=64", lambda: kmeans_case(np.float32)),
                ("mixture full, 125,000 × 16, K=16", lambda: mixture_case("full")),
                ("mixture diag, 125,000 × 16, K=16", lambda: mixture_case("diag")),
            ]:
                t = case()
                rows.append((run, label, t))
                print(f"run {run} {label}: " + ", ".join(
                    f"{name} {sec * 1e3:.1f} ms" for name, sec in t.items()), flush=True)
    print()
    print("| run | one core, same rows | compiled | NumPy twin | scikit-learn iteration | "
          "compiled / scikit-learn |")
    print("|---|---|---|---|---|---|")
    for run, label, t in rows:
        ratio = t["compiled"] / t["scikit-learn"]
        how = f"{ratio:.2f}x" if ratio >= 0.5 else f"{1 / ratio:.1f}x faster"
        print(f"| {run} | {label} | {t['compiled'] * 1e3:.1f} ms | {t['numpy'] * 1e3:.1f} ms | "
              f"{t['scikit-learn'] * 1e3:.1f} ms | {how} |")


if __name__ == "__main__":
    main()
