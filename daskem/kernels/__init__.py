"""Per-chunk NumPy math: distances, log-densities, chunk statistics, M-steps, seeding.

Everything in this package takes ``x``, one in-memory chunk (``np.ndarray`` of shape
``(n_samples, n_features)``), or small parameter arrays, and returns NumPy arrays or small
dataclasses. None of these modules imports dask: the engine maps them over chunks.
"""
