"""Random numbers addressed by global row index.

A uniform number for row ``i`` is a hash of ``(seed, stream, i)``, so every row gets the
same number however the data are chunked and whichever worker reads the chunk: sampling
and k-means|| seeding then do not depend on the chunking.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a bijective mix of 64-bit words (wrapping arithmetic).
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def row_uniform(seed: int, stream: int, start: int, stop: int) -> np.ndarray:
    """Uniform numbers in (0, 1) for global rows ``start .. stop-1`` of stream ``stream``."""
    with np.errstate(over="ignore"):
        key = _splitmix64(np.array([seed & 0xFFFFFFFFFFFFFFFF], dtype=np.uint64) + _GOLDEN)
        key = _splitmix64(key ^ np.uint64(stream & 0xFFFFFFFFFFFFFFFF))
        rows = np.arange(start, stop, dtype=np.uint64)
        bits = _splitmix64(rows * _GOLDEN + key)
    # 53 random bits, shifted off zero so that 1/u and log(u) are finite.
    return ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * (1.0 / 9007199254740992.0)


def spawn_seeds(random_state, n: int) -> list[int]:
    """``n`` independent 63-bit seeds from a seed, a ``Generator`` or ``None``."""
    rng = np.random.default_rng(random_state) if not isinstance(
        random_state, np.random.Generator) else random_state
    return [int(s) for s in rng.integers(0, 2**63 - 1, size=n)]
