"""Closing the network sessions that fsspec's object-store filesystems keep open.

s3fs keeps an aiohttp session per cached filesystem; zarr's stores use asynchronous
instances, which s3fs never closes, so a process that exits with them open prints
"Unclosed client session" for each. A job closes them when it is done, in its own process and
on the workers of its embedded cluster.
"""

from __future__ import annotations

import sys

TIMEOUT = 5.0  # seconds per session


def close_sessions() -> int:
    """Close the sessions of every cached s3fs filesystem of this process and forget the
    filesystems (a later use opens new ones). Returns how many were closed; never raises."""
    s3fs = sys.modules.get("s3fs")
    if s3fs is None:
        return 0
    closed = 0
    for fs in list(s3fs.S3FileSystem._cache.values()):
        creator = getattr(fs, "_s3creator", None)
        if creator is None:
            continue
        try:
            _run(fs, creator.__aexit__(None, None, None))
            closed += 1
        except Exception:  # noqa: BLE001 - best effort at the end of a job
            pass
        fs._s3creator = fs._s3 = None
    s3fs.S3FileSystem.clear_instance_cache()
    return closed


def _run(fs, coroutine) -> None:
    """Run ``coroutine`` on the event loop the filesystem's session belongs to: zarr's for
    the asynchronous instances its stores open, fsspec's for the others."""
    if fs.asynchronous:
        from zarr.core.sync import sync

        sync(coroutine, timeout=TIMEOUT)
    else:
        from fsspec.asyn import sync

        async def wrapped():
            return await coroutine

        sync(fs.loop, wrapped, timeout=TIMEOUT)
