"""Batch EM against incremental EM: passes, wall time and the optimum reached, side by side.

    python scripts/bench_incremental.py            # the full table (a few minutes)
    python scripts/bench_incremental.py --small    # a quick look

Every fit runs on the same 2-worker LocalCluster over a Zarr store on disk, read in every
pass (``daskem.io.ZarrRows``, 64 tasks per pass), with ``random_state=0``:

* "default start": the estimators' defaults (initialisation and restarts on the sample),
  ``update="batch"`` against ``update="incremental"`` (16 blocks), each to its default
  ``tol``; passes and wall time of the EM phase, the final mean log-likelihood (mixtures)
  or inertia (k-means) on the whole data, and scikit-learn's best of ``n_init=3`` on the
  same rows in memory for reference.
* "slow start": every fit starts from the same poor parameters (means on 5 random rows;
  no sample EM) with ``tol=0`` and a fixed number of passes, and the log-likelihood of the
  whole data is taken after every pass: how many passes each way needs to come within
  1e-3 and 1e-4 per sample of the best value any of them reached.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_passes import blobs  # noqa: E402

TASKS = 64


def passes_to(gap: np.ndarray, within: float):
    hit = np.flatnonzero(gap < within)
    return int(hit[0]) + 1 if hit.size else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--blocks", type=int, default=16)
    args = parser.parse_args(argv)

    import make_feature_store as mfs
    import sklearn.cluster
    import sklearn.mixture
    import zarr
    from distributed import Client, LocalCluster

    from daskem import GaussianMixture, KMeans
    from daskem.io import ZarrRows
    from daskem.kernels.estep import GaussianKernelParams, responsibilities, squared_distances

    n = 60_000 if args.small else 240_000
    cases = [("demo mixture d=8 K=5", None, 8, 5)]
    cases += [(f"blobs d={d} K={k}", seed, d, k)
              for d, k, seed in ([(6, 5, 1)] if args.small
                                 else [(6, 5, 1), (10, 8, 2), (16, 16, 3)])]
    updates = [("batch", {"update": "batch"}),
               ("incremental", {"update": "incremental", "n_blocks": args.blocks})]
    workers = min(2, os.cpu_count() or 1)
    table, slow = [], []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster):
        warnings.simplefilter("ignore")
        for name, seed, d, k in cases:
            path = str(Path(tmp) / f"{len(table)}.zarr")
            if seed is None:
                X = mfs.synthetic_array(n, d, k, chunk_rows=n // TASKS, seed=0).compute()
            else:
                X = blobs(n, d, k, seed)
            zarr.open_group(path, mode="w").create_array("X", data=X, chunks=(n // TASKS, d))
            reader = ZarrRows(path, "X")
            common = dict(random_state=0, chunk_rows=n // TASKS)

            def loglik(params, X=X):
                kp = GaussianKernelParams.build(params.weights, params.means,
                                                params.precisions_cholesky,
                                                params.covariance_type)
                return float(responsibilities(X, kp)[1].mean())

            sk = sklearn.mixture.GaussianMixture(k, n_init=3, random_state=0,
                                                 max_iter=300).fit(X)
            sk_km = sklearn.cluster.KMeans(k, n_init=3, random_state=0).fit(X)
            for label, upd in updates:
                for kind in ("gmm", "kmeans"):
                    est = (GaussianMixture(k, n_init=3, max_iter=300, **common, **upd)
                           if kind == "gmm" else KMeans(k, n_init=3, **common, **upd))
                    started = time.perf_counter()
                    est.fit(reader)
                    seconds = time.perf_counter() - started
                    value = est.score(X) if kind == "gmm" else est.inertia_
                    ref = sk.score(X) if kind == "gmm" else sk_km.inertia_
                    table.append((name, kind, label, est.passes_.get("em", 0),
                                  est.n_passes_, seconds, value, ref))
                    print(f"{name:22s} {kind:6s} {label:11s} em passes "
                          f"{est.passes_.get('em', 0):3d} of {est.n_passes_:3d}  "
                          f"{seconds:6.1f} s  {value:.6f} (scikit-learn {ref:.6f})",
                          flush=True)
            # The slow start: the same poor means for both ways, tol=0, a fixed budget.
            rng = np.random.default_rng(seed or 0)
            means0 = X[rng.choice(n, k, replace=False)]
            budget = 40 if args.small else 80
            curves = {}
            for label, upd in updates:
                for kind in ("gmm", "kmeans"):
                    values, started = [], time.perf_counter()
                    if kind == "gmm":
                        est = GaussianMixture(k, means_init=means0, tol=0, max_iter=budget,
                                              **common, **upd)
                        est.fit(reader, callback=lambda _, s, v=values: v.append(
                            loglik(s[0].params)))
                    else:
                        est = KMeans(k, init=means0, tol=0, max_iter=budget, **common, **upd)
                        est.fit(reader, callback=lambda _, s, v=values, X=X: v.append(
                            -float(squared_distances(X, s[0].params.cluster_centers)
                                   .min(axis=1).sum())))
                    curves[(kind, label)] = (np.array(values), time.perf_counter() - started)
            for kind in ("gmm", "kmeans"):
                best = max(curves[(kind, u)][0].max() for u, _ in updates)
                scale = 1.0 if kind == "gmm" else abs(best)  # k-means: relative inertia
                for label, _ in updates:
                    values, seconds = curves[(kind, label)]
                    gap = (best - values) / scale
                    slow.append((name, kind, label, passes_to(gap, 1e-3),
                                 passes_to(gap, 1e-4), len(values), seconds / len(values)))
                    print(f"{name:22s} {kind:6s} {label:11s} slow start: passes to 1e-3 "
                          f"{slow[-1][3]}, to 1e-4 {slow[-1][4]} (of {len(values)}); "
                          f"{slow[-1][6]:.2f} s per pass", flush=True)
    print()
    print("Default start (n_init=3; scikit-learn: best of 3, in memory):")
    print()
    print("| data | model | update | EM passes | all passes | wall s | daskem | "
          "scikit-learn |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, kind, label, em, total, seconds, value, ref in table:
        what = "log-lik." if kind == "gmm" else "inertia"
        print(f"| {name} | {kind} | {label} | {em} | {total} | {seconds:.1f} | "
              f"{value:.6g} | {ref:.6g} ({what}) |")
    print()
    print("Slow start (the same poor means, tol=0): passes to come within 1e-3 / 1e-4 of "
          "the best value reached (mean log-likelihood per sample; k-means: relative "
          "inertia):")
    print()
    print("| data | model | update | passes to 1e-3 | passes to 1e-4 | s per pass |")
    print("|---|---|---|---:|---:|---:|")
    for name, kind, label, p3, p4, budget, per_pass in slow:
        print(f"| {name} | {kind} | {label} | {p3 or f'> {budget}'} | "
              f"{p4 or f'> {budget}'} | {per_pass:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
