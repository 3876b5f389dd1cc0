"""Per-sample outputs written to Zarr from the workers, aligned with the source's rows.

Every row of the source gets an output, rows with missing values included: their label is
``-1`` and their responsibilities and log-likelihood are NaN (with ``missing:
marginalize``, only rows with nothing observed; the others get the results of their
observed part). ``imputed`` (mixtures) is the rows with every NaN replaced by its
conditional expectation under the model. Plain sources get Zarr
arrays (``labels`` (n,), ``responsibilities`` (n, K), ``log_likelihood`` (n,)); xarray
sources get an xarray dataset over the source's sample dimensions, with its coordinates.
Nothing of size n_samples passes through the client: each task writes its own chunk.
"""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np

from daskem.errors import StorageError, storage_errors
from daskem.io.source import Source

LABEL_FILL = -1
DESCRIPTIONS = {
    "labels": f"the most probable component or nearest center; {LABEL_FILL} for rows with "
              "missing values",
    "responsibilities": "posterior probability of each component; NaN for rows with missing "
                        "values (with missing: marginalize, rows with nothing observed)",
    "log_likelihood": "log p(x) under the model (of the observed part, with missing: "
                      "marginalize); NaN for rows with missing values (with marginalize, "
                      "rows with nothing observed)",
    "imputed": "the features, every missing value replaced by its conditional expectation "
               "under the model (observed values unchanged)",
}


def marginalizes(model) -> bool:
    """Whether ``model`` (an estimator, or a pipeline ending in one) takes NaN as missing."""
    final = model[-1] if hasattr(model, "steps") else model
    return getattr(final, "missing", "error") == "marginalize"


def _masked(x: np.ndarray, model, what: str, standardize=None) -> np.ndarray:
    if what == "imputed":
        # Rows holding an infinity (kept in the outputs by missing: drop) get fill values.
        out = np.full(x.shape, np.nan)
        ok = ~np.isinf(x).any(axis=1)
        if not ok.any():
            return out
        xs = x[ok]
        if standardize is None:
            out[ok] = model.impute(xs)
            return out
        # ``x`` in the data's units, the model in standardised ones: the imputed values
        # are brought back, the observed ones kept as they are.
        mean, scale = standardize
        filled = model.impute((xs - mean) / scale) * scale + mean
        out[ok] = np.where(np.isnan(xs), filled, xs)
        return out
    if marginalizes(model):  # a row needs one observed value (and no infinity)
        ok = ~np.isinf(x).any(axis=1) & ~np.isnan(x).all(axis=1)
    else:
        ok = np.isfinite(x).all(axis=1)
    n = x.shape[0]
    if what == "labels":
        out = np.full(n, LABEL_FILL, dtype=np.int64)
        if ok.any():
            out[ok] = model.predict(x[ok])
    elif what == "responsibilities":
        out = np.full((n, model.n_components), np.nan)
        if ok.any():
            out[ok] = model.predict_proba(x[ok])
    else:
        out = np.full(n, np.nan)
        if ok.any():
            out[ok] = model.score_samples(x[ok])
    return out


def per_row(model, full: da.Array, what: str, standardize=None) -> da.Array:
    """A lazy per-row output of ``model`` over every row of ``full`` (for ``imputed``
    with ``standardize``, the ``(mean, scale)`` of the model's space: ``full`` is then in
    the data's units)."""
    if what == "responsibilities":
        return full.map_blocks(_masked, model, what, dtype=np.float64,
                               chunks=(full.chunks[0], (model.n_components,)),
                               name=f"daskem-output-{what}")
    if what == "imputed":
        return full.map_blocks(_masked, model, what, standardize, dtype=np.float64,
                               name=f"daskem-output-{what}")
    dtype = np.int64 if what == "labels" else np.float64
    return full.map_blocks(_masked, model, what, dtype=dtype, drop_axis=1,
                           name=f"daskem-output-{what}")


def write_outputs(model, source: Source, which: list[str], target: str, group: str,
                  storage_options: dict | None = None) -> list[str]:
    """Compute and write the ``which`` outputs in one pass, then check that every chunk of
    every output is in ``target`` (see :func:`verify_outputs`); returns the names written.

    Every chunk is written, even one equal to the fill value (zarr leaves those out by
    default), so that a missing chunk always means a lost write.
    """
    arrays = {what: per_row(model, source.full, what) for what in which if what != "imputed"}
    if "imputed" in which:
        unscaled = source.full if source.unscaled is None else source.unscaled
        arrays["imputed"] = per_row(model, unscaled, "imputed", source.standardize)
    if not arrays:
        return []
    with storage_errors("the outputs", _joined(target, group)):
        _write(arrays, source, target, group, storage_options)
    verify_outputs(target, group, list(arrays), storage_options)
    return list(arrays)


def _joined(target: str, group: str) -> str:
    return f"{target.rstrip('/')}/{group}" if group else target


def verify_outputs(target: str, group: str, names: list[str],
                   storage_options: dict | None = None) -> None:
    """Check, from the client, that each output array in ``target`` has all its chunks.

    Workers write the chunks; one that writes where this client does not look (another
    filesystem, a relative path resolved in another directory) leaves the client's copy
    with metadata only. One listing per array; raises :class:`StorageError` naming the
    array and how many chunks are missing.
    """
    import zarr

    where = _joined(target, group)
    try:
        node = zarr.open_group(target, path=group or None, mode="r",
                               storage_options=storage_options or None)
    except Exception as exc:  # noqa: BLE001 - any failure to open means no outputs
        raise StorageError(f"outputs: cannot open {where} after writing them: {exc}") from None
    for name in names:
        try:
            arr = node[name]
        except KeyError:
            raise StorageError(f"outputs: {name} is missing from {where} after writing "
                               "it") from None
        written, expected = arr.nchunks_initialized, arr.nchunks
        if written != expected:
            error = StorageError(
                f"outputs: {name} in {where} holds {written} of its {expected} chunks after "
                "writing: the workers wrote the others elsewhere (do they see the same "
                "filesystem as this client?) or the writes were lost")
            error.remedy = ("give output.path (or run.store) a location every worker and "
                            "this client share, and rerun: the fitted model is kept")
            raise error


def _write(arrays: dict, source: Source, target: str, group: str,
           storage_options: dict | None) -> None:
    if source.layout is None:
        import zarr

        node = zarr.open_group(target, path=group or None, mode="a",
                               storage_options=storage_options or None)
        writes = []
        for name, arr in arrays.items():
            out = node.create_array(
                name, shape=arr.shape, chunks=arr.chunksize, dtype=arr.dtype,
                fill_value=LABEL_FILL if name == "labels" else np.nan,
                dimension_names=("sample", "feature" if name == "imputed" else
                                 "component")[:arr.ndim], overwrite=True,
                attributes={"description": DESCRIPTIONS[name]},
                config={"write_empty_chunks": True})
            writes.append(da.to_zarr(arr, out, compute=False))
        dask.compute(*writes)
        return
    import xarray as xr

    layout = source.layout
    dims = layout.sample_dims
    variables = {}
    for name, arr in arrays.items():
        if arr.ndim == 1:
            variables[name] = (dims, arr.reshape(layout.shape))
        else:
            variables[name] = (dims + ["feature" if name == "imputed" else "component"],
                               arr.reshape(layout.shape + (arr.shape[1],)))
    coords = {d: layout.coords[d] for d in dims}
    if "imputed" in arrays:
        # variable-length strings: Zarr v3 has a specification for those
        coords["feature"] = np.array(source.features, dtype=object)
    ds = xr.Dataset(variables, coords=coords)
    for name, text in DESCRIPTIONS.items():
        if name in ds:
            ds[name].attrs["description"] = text
    ds = ds.chunk({dims[0]: "auto"})
    # Labels are integers with -1 for missing rows, as in the plain outputs: no CF
    # ``_FillValue``, which would make readers mask them into NaN floats.
    encoding = {"labels": {"_FillValue": None}} if "labels" in ds else {}
    ds.to_zarr(target, group=group, mode="w", consolidated=False, encoding=encoding,
               storage_options=storage_options or None, write_empty_chunks=True)
