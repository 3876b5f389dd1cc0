"""Synthetic feature stores of any size: a Gaussian mixture, generated chunk by chunk.

Every chunk is a pure function of (seed, chunk index), so a store of terabytes can be
described as a lazy dask array (``synthetic_array``) without being stored, and any part of
it regenerated exactly. The mixture's components are fixed by the seed.

    python scripts/make_feature_store.py data/demo.zarr                 # the demo store
    python scripts/make_feature_store.py data/big.zarr --n-samples 500000000 --chunk-rows 1000000
    python scripts/make_feature_store.py data/grid.zarr --format xarray --grid 48 32 32

Formats: ``zarr`` (one 2-D array ``X`` in a Zarr group, attributes naming the features),
``xarray`` (a dataset with one variable per feature over dimensions time × lat × lon, rows
on a fixed "land mask" set to NaN, and ``--gaps`` of each feature's other values missing
at random, as clouds hide one band and not the others), ``npy``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import dask.array as da
import numpy as np


def mixture(seed: int, n_components: int, n_features: int, separation: float = 2.0):
    """Weights, means and covariance factors (K, d, d) of the generating mixture."""
    rng = np.random.default_rng([seed, 0xFEA7])
    weights = rng.dirichlet(np.full(n_components, 5.0))
    means = rng.normal(scale=separation, size=(n_components, n_features))
    factors = (rng.normal(scale=0.35, size=(n_components, n_features, n_features))
               + np.eye(n_features)[None])
    return weights, means, factors


def synthetic_chunk(seed: int, chunk_index: int, n_rows: int, n_features: int,
                    n_components: int, dtype=np.float64, mix=None) -> np.ndarray:
    """Rows of one chunk: a pure function of (seed, chunk index); ``mix`` is
    ``mixture(seed, n_components, n_features)`` when the caller already has it."""
    weights, means, factors = mix or mixture(seed, n_components, n_features)
    rng = np.random.default_rng([seed, chunk_index])
    labels = rng.choice(n_components, size=n_rows, p=weights)
    noise = rng.standard_normal((n_rows, n_features))
    out = np.einsum("nd,nde->ne", noise, factors[labels]) + means[labels]
    return out.astype(dtype)


def synthetic_array(n_samples: int, n_features: int = 8, n_components: int = 5, *,
                    chunk_rows: int = 100_000, seed: int = 0, dtype="float64") -> da.Array:
    """The virtual store: a lazy (n_samples, n_features) dask array."""
    chunks = [chunk_rows] * (n_samples // chunk_rows)
    if n_samples % chunk_rows:
        chunks.append(n_samples % chunk_rows)

    def block(block_info=None):
        info = block_info[None]
        (i, _) = info["chunk-location"]
        rows = info["chunk-shape"][0]
        return synthetic_chunk(seed, i, rows, n_features, n_components, np.dtype(dtype))

    return da.map_blocks(block, chunks=(tuple(chunks), (n_features,)), dtype=np.dtype(dtype),
                         meta=np.empty((0, 0), dtype=dtype))


class SyntheticRows:
    """The virtual store as a row reader: tasks generate the rows they read themselves."""

    def __init__(self, n_samples: int, n_features: int = 8, n_components: int = 5, *,
                 chunk_rows: int = 100_000, seed: int = 0, dtype="float64") -> None:
        self.shape = (n_samples, n_features)
        self.n_components, self.chunk_rows, self.seed = n_components, chunk_rows, seed
        self.dtype = np.dtype(dtype)
        self.mix = mixture(seed, n_components, n_features)

    def read(self, start: int, stop: int) -> np.ndarray:
        first, last = start // self.chunk_rows, (stop - 1) // self.chunk_rows
        parts = []
        for i in range(first, last + 1):
            rows = min(self.chunk_rows, self.shape[0] - i * self.chunk_rows)
            parts.append(synthetic_chunk(self.seed, i, rows, self.shape[1], self.n_components,
                                         self.dtype, self.mix))
        block = np.concatenate(parts)
        offset = first * self.chunk_rows
        return block[start - offset:stop - offset]

    def to_dask(self) -> da.Array:
        return synthetic_array(self.shape[0], self.shape[1], self.n_components,
                               chunk_rows=self.chunk_rows, seed=self.seed, dtype=self.dtype)


def feature_names(n_features: int) -> list[str]:
    return [f"f{j}" for j in range(n_features)]


def write_zarr(path: str, X: da.Array) -> None:
    import zarr

    root = zarr.open_group(path, mode="w")
    # zstd with its frame checksum: a chunk damaged on disk fails to decode instead of
    # decoding to wrong numbers.
    arr = root.create_array("X", shape=X.shape, chunks=(X.chunks[0][0], X.shape[1]),
                            dtype=X.dtype,
                            compressors=zarr.codecs.ZstdCodec(level=3, checksum=True))
    da.store(X, arr, lock=False)
    root.attrs.update({"features": feature_names(X.shape[1]),
                       "description": "daskem synthetic feature store"})


def land_mask(n_lat: int, n_lon: int) -> np.ndarray:
    """True where a grid cell has no data (a fixed blob, like land in an ocean field)."""
    lat, lon = np.meshgrid(np.arange(n_lat), np.arange(n_lon), indexing="ij")
    return (lat - n_lat * 0.3) ** 2 + (lon - n_lon * 0.6) ** 2 < (min(n_lat, n_lon) * 0.15) ** 2


def write_xarray(path: str, grid: tuple[int, int, int], n_features: int, n_components: int,
                 seed: int, dtype="float64", gaps: float = 0.0) -> None:
    import xarray as xr

    n_time, n_lat, n_lon = grid
    cells = n_lat * n_lon
    X = synthetic_array(n_time * cells, n_features, n_components, chunk_rows=cells * 4,
                        seed=seed, dtype=dtype)
    cube = X.reshape(n_time, n_lat, n_lon, n_features)
    mask = land_mask(n_lat, n_lon)
    cube = da.where(mask[None, :, :, None], np.nan, cube)
    if gaps > 0:  # each feature's own missing values
        hidden = da.random.default_rng(seed + 1).random(cube.shape, chunks=cube.chunks) < gaps
        cube = da.where(hidden, np.nan, cube)
    ds = xr.Dataset(
        {name: (("time", "lat", "lon"), cube[..., j]) for j, name in
         enumerate(feature_names(n_features))},
        coords={"time": np.arange(n_time), "lat": np.linspace(-60, 60, n_lat),
                "lon": np.linspace(0, 360, n_lon, endpoint=False)},
        attrs={"description": "daskem synthetic feature store (xarray)"},
    )
    ds.to_zarr(path, mode="w", consolidated=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path")
    parser.add_argument("--format", choices=["zarr", "xarray", "npy"], default="zarr")
    parser.add_argument("--n-samples", type=int, default=200_000)
    parser.add_argument("--n-features", type=int, default=8)
    parser.add_argument("--n-components", type=int, default=5)
    parser.add_argument("--chunk-rows", type=int, default=25_000)
    parser.add_argument("--grid", type=int, nargs=3, metavar=("TIME", "LAT", "LON"),
                        default=(24, 32, 32), help="xarray format: the grid")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gaps", type=float, default=0.1,
                        help="xarray format: the fraction of each feature's values missing "
                        "(besides the land mask)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--if-missing", action="store_true",
                        help="do nothing if the path exists")
    args = parser.parse_args(argv)
    target = Path(args.path)
    if target.exists():
        if args.if_missing:
            print(f"{target} exists; left as it is")
            return 0
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    if args.format == "xarray":
        write_xarray(str(target), tuple(args.grid), args.n_features, args.n_components,
                     args.seed, args.dtype, args.gaps)
        print(f"wrote {target}: xarray dataset, grid {tuple(args.grid)}, "
              f"{args.n_features} features, {args.gaps:.0%} of each feature's values "
              "missing besides the land mask")
        return 0
    X = synthetic_array(args.n_samples, args.n_features, args.n_components,
                        chunk_rows=args.chunk_rows, seed=args.seed, dtype=args.dtype)
    if args.format == "npy":
        np.save(target, X.compute())
    else:
        write_zarr(str(target), X)
    print(f"wrote {target}: {args.n_samples:,} samples x {args.n_features} features "
          f"({args.format}, {args.dtype}, chunks of {args.chunk_rows:,} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
