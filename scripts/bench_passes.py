"""Passes over the data per fit: the whole-data way and the sample way, against scikit-learn.

    python scripts/bench_passes.py             # demo store + anisotropic blobs, n_init = 3
    python scripts/bench_passes.py --small     # a quick look

Every daskem fit runs on the same 2-worker LocalCluster over a Zarr store read from disk in
every pass, with ``random_state=0`` and ``n_init=3``:

* "whole data": ``init_params="k-means||"`` (GaussianMixture) / ``init="k-means||"``
  (KMeans): k-means|| and Lloyd over the data, every restart run to the end — how daskem
  fitted before it initialised on the sample;
* "sample": the defaults (``"kmeans"`` / ``"k-means++"``): seeding, k-means and every
  restart's EM on the summary pass's sample, in memory; the best restart goes on over the
  data.

Passes are the estimator's own ``passes_`` (tests/test_rows.py checks that they equal the
reads at the source). scikit-learn fits the same rows in memory (``n_init=3``, its best of
three). The mean log-likelihood (mixtures) and inertia (k-means) are all computed on the
whole data.
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


def blobs(n: int, d: int, k: int, seed: int) -> np.ndarray:
    """Anisotropic, overlapping Gaussian blobs of unequal sizes."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=4.0, size=(k, d))
    share = rng.uniform(1, 3, k)
    sizes = rng.multinomial(n, share / share.sum())
    parts = [rng.normal(size=(m, d)) @ (rng.normal(size=(d, d)) * 0.6 + np.eye(d)) + c
             for m, c in zip(sizes, centers, strict=True)]
    return np.concatenate(parts)[rng.permutation(n)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--n-init", type=int, default=3)
    args = parser.parse_args(argv)

    import make_feature_store as mfs
    import sklearn.cluster
    import sklearn.mixture
    import zarr
    from distributed import Client, LocalCluster

    from daskem import GaussianMixture, KMeans
    from daskem.io import ZarrRows

    n_blobs = 30_000 if args.small else 120_000
    cases = [("demo store (5 components)", None, 8, 5, "full")]
    cases += [(f"blobs d={d} K={k}", (d, k, seed), d, k, "full")
              for d, k, seed in ([(6, 5, 1), (12, 10, 2)] if args.small
                                 else [(6, 5, 1), (10, 8, 2), (16, 16, 3)])]
    workers = min(2, os.cpu_count() or 1)
    rows_out = []
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                         dashboard_address=None, host="127.0.0.1") as cluster, \
            Client(cluster):
        warnings.simplefilter("ignore")
        for name, spec, d, k, ctype in cases:
            path = str(Path(tmp) / f"{len(rows_out)}.zarr")
            if spec is None:
                n = 40_000 if args.small else 200_000
                mfs.write_zarr(path, mfs.synthetic_array(n, d, k, chunk_rows=n // 8, seed=0))
            else:
                X = blobs(n_blobs, d, k, spec[2])
                group = zarr.open_group(path, mode="w")
                group.create_array("X", data=X, chunks=(n_blobs // 8, d))
            X = zarr.open_array(path, path="X", mode="r")[...]
            reader = ZarrRows(path, "X")
            for kind in ("gmm", "kmeans"):
                started = time.perf_counter()
                if kind == "gmm":
                    sk = sklearn.mixture.GaussianMixture(
                        k, covariance_type=ctype, n_init=args.n_init, random_state=0,
                        max_iter=300).fit(X)
                    sk_value = sk.score(X)
                else:
                    sk = sklearn.cluster.KMeans(k, n_init=args.n_init, random_state=0).fit(X)
                    sk_value = -sk.inertia_
                sk_seconds = time.perf_counter() - started
                for way in ("whole data", "sample"):
                    if kind == "gmm":
                        init = {"init_params": "k-means||"} if way == "whole data" else {}
                        est = GaussianMixture(k, covariance_type=ctype, n_init=args.n_init,
                                              random_state=0, max_iter=300, **init)
                    else:
                        init = {"init": "k-means||"} if way == "whole data" else {}
                        est = KMeans(k, n_init=args.n_init, random_state=0, **init)
                    started = time.perf_counter()
                    est.fit(reader)
                    seconds = time.perf_counter() - started
                    value = est.score(X) if kind == "gmm" else -est.inertia_
                    rows_out.append((name, kind, way, est.n_passes_, dict(est.passes_),
                                     seconds, value, sk_value, sk_seconds))
                    print(f"{name:28s} {kind:6s} {way:10s} passes {est.n_passes_:3d} "
                          f"{seconds:6.1f} s  daskem {value:.6f}  scikit-learn {sk_value:.6f} "
                          f"({sk_seconds:.1f} s)", flush=True)
    print()
    print("| data | model | initialisation | passes (by phase) | wall s | daskem | "
          "scikit-learn best of 3 | difference |")
    print("|---|---|---|---|---:|---:|---:|---:|")
    for name, kind, way, n_passes, by_phase, seconds, value, sk_value, _ in rows_out:
        phases = ", ".join(f"{p} {c}" for p, c in by_phase.items())
        if kind == "gmm":
            shown = (f"{value:.5f}", f"{sk_value:.5f}", f"{value - sk_value:+.2e} per sample")
        else:  # inertia
            shown = (f"{-value:.6g}", f"{-sk_value:.6g}",
                     f"{(-value) / (-sk_value) - 1:+.2%}")
        print(f"| {name} | {kind} | {way} | {n_passes} ({phases}) | {seconds:.1f} | "
              f"{shown[0]} | {shown[1]} | {shown[2]} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
