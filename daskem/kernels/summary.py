"""A first look at the data in one pass: size, per-feature mean and variance, non-finite
values, bad sample weights, and a uniform random sample of rows for seeding.

With ``marginalize`` (``missing="marginalize"``), NaN is a missing value, not an error:
means and variances are over each feature's observed values, the missing values and the
rows with nothing observed are counted, and the sample leaves the latter out (only ±inf is
then non-finite)."""

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
    marginalize: bool = False  # NaN is a missing value


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
    n_observed: np.ndarray  # (d,) values of each feature the mean and m2 are over
    n_missing: int = 0  # NaN values (marginalize)
    n_empty: int = 0  # rows with no observed value (marginalize)

    @property
    def variance(self) -> np.ndarray:
        return self.m2 / np.maximum(self.n_observed, 1)

    @property
    def seed_x(self) -> np.ndarray:
        """The sample for seeding: a missing value is its feature's mean."""
        if not self.n_missing:
            return self.sample_x
        return np.where(np.isnan(self.sample_x), self.mean, self.sample_x)

    def __add__(self, other: Summary) -> Summary:
        n = self.n_samples + other.n_samples
        na, nb = self.n_observed, other.n_observed
        nab = na + nb
        # Chan et al.'s pairwise update, per feature: exact for any split of the rows.
        # Non-finite data make NaN here; they are reported from n_nonfinite, not from these.
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            delta = other.mean - self.mean
            share = np.where(nab > 0, nb / np.maximum(nab, 1), 0.0)
            mean = np.where(na == 0, other.mean, np.where(nb == 0, self.mean,
                                                          self.mean + delta * share))
            cross = np.where((na > 0) & (nb > 0), delta**2 * na * share, 0.0)
            m2 = self.m2 + other.m2 + cross
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
            n_observed=nab,
            n_missing=self.n_missing + other.n_missing,
            n_empty=self.n_empty + other.n_empty,
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
    missing = np.isnan(x) if request.marginalize else np.zeros((n, d), dtype=bool)
    bad = ~(finite | missing)
    n_nonfinite = int(np.count_nonzero(bad))
    first_nonfinite = -1
    if n_nonfinite:
        first_nonfinite = offset + int(np.flatnonzero(bad.any(axis=1))[0])
    xf = np.asarray(x, dtype=np.float64)
    n_observed = (n - missing.sum(axis=0)).astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        # non-finite data are reported
        if missing.any():
            mean = np.where(n_observed > 0, np.nansum(xf, axis=0) / np.maximum(n_observed, 1),
                            0.0)
            m2 = np.nansum((xf - mean) ** 2, axis=0)
        else:
            mean = xf.mean(axis=0) if n else np.zeros(d)
            m2 = ((xf - mean) ** 2).sum(axis=0) if n else np.zeros(d)
    empty = missing.all(axis=1) if d else np.zeros(n, dtype=bool)
    if w is None:
        w = np.ones(n)
        n_bad, first_bad = 0, -1
    else:
        w = np.asarray(w, dtype=np.float64)
        bad = ~(np.isfinite(w) & (w >= 0))
        n_bad = int(bad.sum())
        first_bad = offset + int(np.flatnonzero(bad)[0]) if n_bad else -1
    keep = np.flatnonzero((row_uniform(request.seed, SAMPLE_STREAM, offset, offset + n)
                           < request.probability) & ~empty)
    return Summary(
        n_samples=n,
        weight_sum=float(w[~empty].sum()),  # rows with nothing observed weigh nothing
        mean=mean,
        m2=m2,
        n_nonfinite=n_nonfinite,
        first_nonfinite_row=first_nonfinite,
        n_bad_weights=n_bad,
        first_bad_weight_row=first_bad,
        sample_index=keep.astype(np.int64) + offset,
        sample_x=xf[keep],
        sample_w=w[keep],
        n_observed=n_observed,
        n_missing=int(missing.sum()),
        n_empty=int(empty.sum()),
    )
