"""The EM loop on Dask arrays: passes over the data, tree reduction, seeding, convergence.

Functions here take ``X``, the whole ``dask.array.Array`` (wrapped in
:class:`~daskem.engine.data.ChunkedData`), and map the NumPy kernels of
:mod:`daskem.kernels` over its row-chunks. Every use of dask's graph machinery is in
:mod:`daskem.engine.reduce`.
"""
