"""A first look at the data in one pass: size, per-feature mean and variance, non-finite
values, bad sample weights, and a uniform random sample of rows for seeding."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskem.kernels.estep import warm_up_kernels
from daskem.kernels.random import row_uniform

SAMPLE_STREAM = 0x5A3D1E


@dataclass(frozen=True)
class SampleRequest:
    seed: int
    probability: float  # each row is kept with this probability (row-addressed, see random.py)


@dataclass
class Summary:
    n_samples: int
    weight_sum: float
    mean: np.ndarray  # (d,) unweighted, float64
    m2: np.ndarray  # (d,) Σ (x − mean)², unweighted
    n_nonfinite: int
    first_nonfinite_row: int  # −1 if none
    n_bad_weights: int  # negative or non-finite sample weights
    first_bad_weight_row: int
    sample_index: np.ndarray  # (m,) global rows, ascending
    sample_x: np.ndarray  # (m, d) float64
    sample_w: np.ndarray  # (m,)

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / max(self.n_samples, 1)

    def __add__(self, other: Summary) -> Summary:
        n = self.n_samples + other.n_samples
        if self.n_samples == 0:
            mean, m2 = other.mean, other.m2
        elif other.n_samples == 0:
            mean, m2 = self.mean, self.m2
        else:
            # Chan et al.'s pairwise update: exact for any split of the rows. Non-finite
            # data make NaN here; they are reported from n_nonfinite, not from these.
            with np.errstate(invalid="ignore", over="ignore"):
                delta = other.mean - self.mean
                mean = self.mean + delta * (other.n_samples / n)
                m2 = self.m2 + other.m2 + delta**2 * (self.n_samples * other.n_samples / n)
        index = np.concatenate([self.sample_index, other.sample_index])
        order = np.argsort(index, kind="stable")
        return Summary(
            n_samples=n,
            weight_sum=self.weight_sum + other.weight_sum,
            mean=mean,
            m2=m2,
            n_nonfinite=self.n_nonfinite + other.n_nonfinite,
            first_nonfinite_row=_first(self.first_nonfinite_row, other.first_nonfinite_row),
            n_bad_weights=self.n_bad_weights + other.n_bad_weights,
            first_bad_weight_row=_first(self.first_bad_weight_row, other.first_bad_weight_row),
            sample_index=index[order],
            sample_x=np.concatenate([self.sample_x, other.sample_x])[order],
            sample_w=np.concatenate([self.sample_w, other.sample_w])[order],
        )


def _first(a: int, b: int) -> int:
    if a < 0:
        return b
    if b < 0:
        return a
    return min(a, b)


def summarise_chunk(x: np.ndarray, w: np.ndarray | None, offset: int,
                    request: SampleRequest) -> Summary:
    # Every fit starts with this pass: the worker loads the compiled kernels now (once per
    # process, from numba's cache), not in the first iteration.
    warm_up_kernels(x)
    n, d = x.shape
    finite = np.isfinite(x)
    n_nonfinite = int(x.size - np.count_nonzero(finite))
    first_nonfinite = -1
    if n_nonfinite:
        first_nonfinite = offset + int(np.flatnonzero(~finite.all(axis=1))[0])
    xf = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite data are reported
        mean = xf.mean(axis=0) if n else np.zeros(d)
        m2 = ((xf - mean) ** 2).sum(axis=0) if n else np.zeros(d)
    if w is None:
        w = np.ones(n)
        n_bad, first_bad = 0, -1
    else:
        w = np.asarray(w, dtype=np.float64)
        bad = ~(np.isfinite(w) & (w >= 0))
        n_bad = int(bad.sum())
        first_bad = offset + int(np.flatnonzero(bad)[0]) if n_bad else -1
    keep = np.flatnonzero(row_uniform(request.seed, SAMPLE_STREAM, offset, offset + n)
                          < request.probability)
    return Summary(
        n_samples=n,
        weight_sum=float(w.sum()),
        mean=mean,
        m2=m2,
        n_nonfinite=n_nonfinite,
        first_nonfinite_row=first_nonfinite,
        n_bad_weights=n_bad,
        first_bad_weight_row=first_bad,
        sample_index=keep.astype(np.int64) + offset,
        sample_x=xf[keep],
        sample_w=w[keep],
    )
