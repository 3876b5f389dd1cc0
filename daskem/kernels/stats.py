"""Sufficient statistics of one chunk, and how two of them merge.

Statistics of component k, with ``r`` the responsibility (or 0/1 for k-means) times the
sample weight, and ``c`` a shift known to every chunk (for mixtures one point ``s`` near
the current means, for k-means each cluster's current center)::

    nk = Σ r          s1 = Σ r (x − c)          s2 = Σ r (x − c)(x − c)ᵀ

``s2`` is kept as the upper triangle, row-major, of the matrix (full, and tied, which sums
it over components in the M-step), its diagonal (diag), its trace (spherical) or absent
(fixed, k-means). Summing shifted values keeps ``s2/nk − (s1/nk)(s1/nk)ᵀ`` accurate for
data far from the origin. Everything is
float64, whatever the data's dtype. Merging is addition, except for the far points, of
which the ``capacity`` farthest are kept (ties broken by global row index), so the merge is
associative and commutative and the result does not depend on the reduction's shape.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class FarPoints:
    """The rows that the model explains worst, candidates for re-seeding components.

    ``score`` is larger for a worse-explained row (squared distance to its center for
    k-means, minus the log-likelihood for a mixture).
    """

    score: np.ndarray  # (m,)
    index: np.ndarray  # (m,) global row index
    x: np.ndarray  # (m, n_features)
    label: np.ndarray  # (m,) the component the row was assigned to
    weight: np.ndarray  # (m,) sample weight
    capacity: int

    @classmethod
    def empty(cls, n_features: int, capacity: int) -> FarPoints:
        return cls(
            score=np.empty(0),
            index=np.empty(0, dtype=np.int64),
            x=np.empty((0, n_features)),
            label=np.empty(0, dtype=np.int64),
            weight=np.empty(0),
            capacity=capacity,
        )

    @classmethod
    def from_block(cls, score, x, label, weight, offset: int, capacity: int) -> FarPoints:
        """The ``capacity`` worst rows of an in-memory block whose first row is ``offset``."""
        n = score.shape[0]
        if capacity <= 0:
            return cls.empty(x.shape[1], 0)
        if n > capacity:
            keep = np.argpartition(-score, capacity - 1)[:capacity]
        else:
            keep = np.arange(n)
        keep = np.sort(keep)
        w = np.ones(len(keep)) if weight is None else np.asarray(weight, np.float64)[keep]
        return cls(
            score=np.asarray(score[keep], dtype=np.float64),
            index=keep.astype(np.int64) + offset,
            x=np.asarray(x[keep], dtype=np.float64),
            label=np.asarray(label[keep], dtype=np.int64),
            weight=w,
            capacity=capacity,
        )

    def merge_block(self, score, x, label, weight, offset: int) -> FarPoints:
        """Merge the rows of a block, looking only at those that can enter the kept set.

        ``label`` is an array of labels, or a function of row indices returning theirs
        (so that labels are computed only for the few candidate rows).
        """
        if self.capacity <= 0:
            return self
        rows = np.arange(score.shape[0])
        if len(self.score) >= self.capacity:
            floor = self.score[-1]  # the smallest kept score (kept in decreasing order)
            rows = np.flatnonzero(score >= floor)
            if rows.size == 0:
                return self
        if rows.size > self.capacity:
            top = np.argpartition(-score[rows], self.capacity - 1)[:self.capacity]
            rows = np.sort(rows[top])
        labels = label(rows) if callable(label) else label[rows]
        w = None if weight is None else weight[rows]
        block = FarPoints.from_block(score[rows], x[rows], labels, w, 0, self.capacity)
        block.index = rows[block.index] + offset
        return self.merge(block)

    def merge(self, other: FarPoints) -> FarPoints:
        score = np.concatenate([self.score, other.score])
        index = np.concatenate([self.index, other.index])
        # Largest score first; equal scores in row order: a total order, so the merge does
        # not depend on which partial result came first.
        order = np.lexsort((index, -score))[: max(self.capacity, other.capacity)]
        return FarPoints(
            score=score[order],
            index=index[order],
            x=np.concatenate([self.x, other.x])[order],
            label=np.concatenate([self.label, other.label])[order],
            weight=np.concatenate([self.weight, other.weight])[order],
            capacity=max(self.capacity, other.capacity),
        )


@dataclass
class Stats:
    """Sufficient statistics of one model over some rows.

    ``objective`` is the weighted sum of per-sample log-likelihoods for a mixture (the
    classification log-likelihood for hard assignments) and the inertia for k-means.
    """

    nk: np.ndarray  # (n_components,)
    s1: np.ndarray  # (n_components, n_features)
    s2: np.ndarray | None
    objective: float
    weight_sum: float
    n_samples: int
    n_nonfinite: int
    far: FarPoints = field(repr=False)
    # k-means: a lower bound, over the rows, of (distance to the second-nearest center −
    # distance to the nearest). If no center then moves by more than half of it, no label
    # changes (see kmeans_labels_stable); +inf for mixtures and no rows.
    margin: float = np.inf
    # k-means with missing values: Σ w per cluster and feature over the observed values
    # (None: every value observed, each row counted in every feature: ``nk``).
    counts: np.ndarray | None = None

    @property
    def feature_counts(self) -> np.ndarray:
        """Σ w per component and feature, (K, d)."""
        if self.counts is not None:
            return self.counts
        return np.broadcast_to(self.nk[:, None], self.s1.shape)

    @classmethod
    def zeros(cls, n_components: int, n_features: int, s2_shape: tuple | None,
              far_capacity: int) -> Stats:
        return cls(
            nk=np.zeros(n_components),
            s1=np.zeros((n_components, n_features)),
            s2=None if s2_shape is None else np.zeros(s2_shape),
            objective=0.0,
            weight_sum=0.0,
            n_samples=0,
            n_nonfinite=0,
            far=FarPoints.empty(n_features, far_capacity),
        )

    def __add__(self, other: Stats) -> Stats:
        return Stats(
            nk=self.nk + other.nk,
            s1=self.s1 + other.s1,
            s2=None if self.s2 is None else self.s2 + other.s2,
            objective=self.objective + other.objective,
            weight_sum=self.weight_sum + other.weight_sum,
            n_samples=self.n_samples + other.n_samples,
            n_nonfinite=self.n_nonfinite + other.n_nonfinite,
            far=self.far.merge(other.far),
            margin=min(self.margin, other.margin),
            counts=(None if self.counts is None and other.counts is None
                    else self.feature_counts + other.feature_counts),
        )


def reshift(stats: Stats, old: np.ndarray, new: np.ndarray) -> Stats:
    """The same statistics shifted by ``new`` instead of ``old``: exact, no pass.

    ``old`` and ``new`` are one point (d,) or one per component (K, d). With
    δ = old − new, x − new = (x − old) + δ, so::

        s1' = s1 + nk δ        s2' = s2 + s1 δᵀ + δ s1ᵀ + nk δδᵀ

    (its diagonal for diag, its trace for spherical). Used to add statistics computed
    under different parameters (incremental and stepwise EM).
    """
    k, d = stats.s1.shape
    delta = np.broadcast_to(np.asarray(old, np.float64) - np.asarray(new, np.float64), (k, d))
    if not delta.any():
        return stats
    nk = stats.nk
    s2 = stats.s2
    if s2 is not None:
        if s2.ndim == 1:  # spherical: the trace
            s2 = s2 + 2.0 * np.einsum("kd,kd->k", stats.s1, delta) + nk * (delta**2).sum(1)
        elif s2.shape[1] == d and d > 1:  # diag
            s2 = s2 + 2.0 * stats.s1 * delta + nk[:, None] * delta**2
        else:  # full and tied: packed upper triangles
            iu, ju = np.triu_indices(d)
            s2 = (s2 + stats.s1[:, iu] * delta[:, ju] + delta[:, iu] * stats.s1[:, ju]
                  + nk[:, None] * delta[:, iu] * delta[:, ju])
    return Stats(nk=nk, s1=stats.s1 + stats.feature_counts * delta, s2=s2,
                 objective=stats.objective, weight_sum=stats.weight_sum,
                 n_samples=stats.n_samples, n_nonfinite=stats.n_nonfinite, far=stats.far,
                 margin=stats.margin, counts=stats.counts)


def pack_stats(items) -> np.ndarray:
    """``(shift, Stats)`` pairs as one flat float64 array (one array per checkpoint, not
    a dozen: a checkpoint on an object store costs a request per array). Row indices and
    labels are stored as floats, exact below 2**53; far points are padded to capacity.
    """
    shift0, first = items[0]
    k, d = first.s1.shape
    s2 = first.s2
    s2_width = -1 if s2 is None else (0 if s2.ndim == 1 else s2.shape[1])
    shift_rows = 1 if np.ndim(shift0) == 1 else k
    cap = max(st.far.capacity for _, st in items)
    # Layout 2 adds the per-feature counts of k-means with missing values.
    with_counts = any(st.counts is not None for _, st in items)
    parts = [np.array([2.0 if with_counts else 1.0, len(items), k, d, shift_rows, s2_width,
                       cap])]
    for shift, st in items:
        m = len(st.far.score)
        far = np.zeros((cap, d + 4))
        far[:m, 0], far[:m, 1], far[:m, 2] = st.far.score, st.far.index, st.far.label
        far[:m, 3], far[:m, 4:] = st.far.weight, st.far.x
        parts += [np.ravel(shift), st.nk, np.ravel(st.s1),
                  np.empty(0) if st.s2 is None else np.ravel(st.s2),
                  np.ravel(st.feature_counts) if with_counts else np.empty(0),
                  np.array([st.objective, st.weight_sum, st.n_samples, st.n_nonfinite,
                            st.margin, m, st.far.capacity]), np.ravel(far)]
    return np.concatenate([np.asarray(p, dtype=np.float64) for p in parts])


def unpack_stats(flat: np.ndarray) -> tuple:
    """Inverse of :func:`pack_stats`: a tuple of ``(shift, Stats)`` pairs."""
    version, n, k, d, shift_rows, s2_width, cap = (int(v) for v in flat[:7])
    if version not in (1, 2):
        raise ValueError(f"unknown layout {version} of packed statistics")
    pos = 7

    def take(count, shape):
        nonlocal pos
        out = np.array(flat[pos:pos + count]).reshape(shape)
        pos += count
        return out

    items = []
    for _ in range(n):
        shift = take(shift_rows * d, (d,) if shift_rows == 1 else (k, d))
        nk, s1 = take(k, (k,)), take(k * d, (k, d))
        s2 = (None if s2_width < 0 else take(k, (k,)) if s2_width == 0
              else take(k * s2_width, (k, s2_width)))
        counts = take(k * d, (k, d)) if version == 2 else None
        objective, weight_sum, n_samples, n_nonfinite, margin, m, capacity = take(7, (7,))
        far = take(cap * (d + 4), (cap, d + 4))[:int(m)]
        items.append((shift, Stats(
            nk=nk, s1=s1, s2=s2, objective=float(objective), weight_sum=float(weight_sum),
            n_samples=int(n_samples), n_nonfinite=int(n_nonfinite), margin=float(margin),
            counts=counts,
            far=FarPoints(score=far[:, 0], index=far[:, 1].astype(np.int64),
                          x=far[:, 4:], label=far[:, 2].astype(np.int64),
                          weight=far[:, 3], capacity=int(capacity)))))
    return tuple(items)
