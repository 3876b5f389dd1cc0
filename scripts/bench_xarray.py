"""Seconds per pass per row: the same rows as a Zarr array and as an xarray dataset.

    python scripts/bench_xarray.py [--grid 48 64 64] [--runs 3] [--iters 12]

The rows of a (time, lat, lon) grid with 8 feature variables are written twice: as the
variables of an xarray dataset in Zarr (chunked by 4 time steps, as
scripts/make_feature_store.py writes them) and as one (n_rows, 8) Zarr array with the same
rows. ``daskem run`` fits the same mixture on each (tol 0, a fixed number of iterations,
2 local workers); the seconds per pass are read from the run store (history/seconds: the
median pass after the first). Also: the xarray dataset with the land mask (NaN cells) and
``missing: drop``, as configs/gmm_xarray.yaml. Every run is printed.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_feature_store import feature_names, land_mask, synthetic_array  # noqa: E402


def write_stores(folder: Path, grid: tuple[int, int, int]) -> dict[str, dict]:
    import dask.array as da
    import xarray as xr
    import zarr

    n_time, n_lat, n_lon = grid
    cells = n_lat * n_lon
    X = synthetic_array(n_time * cells, 8, 5, chunk_rows=cells * 4, seed=0)
    cube = X.reshape(n_time, n_lat, n_lon, 8)
    coords = {"time": np.arange(n_time), "lat": np.linspace(-60, 60, n_lat),
              "lon": np.linspace(0, 360, n_lon, endpoint=False)}
    names = feature_names(8)
    for name, data in (("grid", cube),
                       ("masked", da.where(land_mask(n_lat, n_lon)[None, :, :, None],
                                           np.nan, cube))):
        xr.Dataset({f: (("time", "lat", "lon"), data[..., j]) for j, f in enumerate(names)},
                   coords=coords).to_zarr(folder / f"{name}.zarr", mode="w",
                                          consolidated=False)
    rows = zarr.create_array(str(folder / "rows.zarr"), shape=X.shape, dtype="f8",
                             chunks=(cells * 4, 8))
    da.store(X, rows, lock=False)
    xarray = {"format": "xarray", "features": names, "sample_dims": ["time", "lat", "lon"]}
    return {"zarr": {"path": str(folder / "rows.zarr")},
            "xarray": {"path": str(folder / "grid.zarr"), **xarray},
            "xarray, NaN cells dropped": {"path": str(folder / "masked.zarr"), **xarray,
                                          "missing": "drop"}}


def seconds_per_pass(folder: Path, name: str, data: dict, iters: int) -> tuple[float, int]:
    from daskem.model import read_history
    from daskem.store import RunStore

    store = folder / f"run-{name.replace(' ', '_').replace(',', '')}.zarr"
    config = folder / "job.yaml"
    config.write_text(yaml.safe_dump({
        "data": data, "model": {"n_components": 5, "max_iter": iters, "tol": 0.0},
        "cluster": {"n_workers": 2, "dashboard_address": None},
        "run": {"store": str(store)}}))
    subprocess.run(["rm", "-rf", str(store)], check=True)
    result = subprocess.run([sys.executable, "-m", "daskem", "run", str(config), "-q"],
                            capture_output=True, text=True)
    if result.returncode:
        sys.exit(result.stderr)
    seconds = read_history(RunStore(str(store)))["seconds"]
    import zarr

    n_rows = int(zarr.open_group(str(store), mode="r").attrs["fingerprint"]["shape"][0])
    return statistics.median(seconds[2:]), n_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grid", type=int, nargs=3, default=(48, 64, 64))
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--iters", type=int, default=12)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="daskem-xarray-"))
    sources = write_stores(folder, tuple(args.grid))
    print(f"grid {args.grid} (time, lat, lon) x 8 features; K=5 full; median s per pass "
          f"over iterations 3 to {args.iters}; 2 workers")
    print(f"{'run':>3} {'source':<28} {'rows':>9} {'s/pass':>8} {'us/pass/row':>12} "
          f"{'vs zarr':>8}")
    for run in range(1, args.runs + 1):
        base = None
        for name, data in sources.items():
            seconds, n_rows = seconds_per_pass(folder, name, data, args.iters)
            per_row = seconds / n_rows * 1e6
            base = base or per_row
            print(f"{run:>3} {name:<28} {n_rows:>9,} {seconds:>8.3f} {per_row:>12.3f} "
                  f"{per_row / base:>8.2f}")


if __name__ == "__main__":
    main()
