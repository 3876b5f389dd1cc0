"""Fitting a stream of batches: stepwise EM for mixtures, mini-batch updates for k-means.

Mixtures: stepwise (online) EM (Cappé & Moulines 2009, "On-line expectation–maximization
algorithm for latent data models"; Liang & Klein 2009, "Online EM for unsupervised
models"). The running statistics ``s`` are kept per unit of weight; for batch ``t`` (t = 0
for the first batch after the initial fit) with statistics ``ŝ_t`` under the current
parameters, also per unit of weight::

    s ← (1 − η_t) s + η_t ŝ_t,      η_t = (t + 2)^(−α),   0.5 < α ≤ 1  (default 0.6)

and the M-step runs on ``s``. Larger ``α`` forgets old batches faster at first and slower
later; the sum of the steps diverges and the sum of their squares converges, so on a
stationary stream the parameters settle on a fixed point of EM.

k-means: mini-batch k-means (Sculley 2010, as scikit-learn's ``MiniBatchKMeans``): every
center keeps the weight of all rows ever assigned to it, and moves to the weighted mean of
its old position (with that weight) and the batch rows assigned to it.

Statistics from different parameters have different shifts; they are re-centred exactly
(:func:`daskem.kernels.stats.reshift`) before they are mixed.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from daskem.kernels.stats import Stats, reshift

STEP_POWER = 0.6


def step_size(t: int, power: float = STEP_POWER) -> float:
    """η_t = (t + 2)^(−power)."""
    return float((t + 2) ** -power)


def scale_stats(stats: Stats, factor: float) -> Stats:
    """The statistics of ``factor`` times the weight (counts and far points unchanged)."""
    return replace(stats, nk=stats.nk * factor, s1=stats.s1 * factor,
                   s2=None if stats.s2 is None else stats.s2 * factor,
                   objective=stats.objective * factor, weight_sum=stats.weight_sum * factor)


@dataclass(frozen=True)
class Running:
    """Stepwise EM's running statistics (per unit of weight), relative to ``shift``, and
    the number of steps taken."""

    shift: np.ndarray
    stats: Stats
    n_steps: int

    @classmethod
    def start(cls, shift: np.ndarray, stats: Stats) -> Running:
        """From the statistics of a fit (the M-step that gave its parameters)."""
        return cls(np.asarray(shift, np.float64), scale_stats(stats, 1.0 / stats.weight_sum),
                   1)


def mixture_step(family, running: Running, batch: Stats, kparams, power: float = STEP_POWER):
    """One stepwise EM step: returns ``(running, params, events)``.

    ``batch`` are the batch's statistics under the current parameters (``kparams``). The
    collapse threshold of the M-step stays one average row of this batch.
    """
    shift = family.stats_shift(kparams)
    eta = step_size(running.n_steps - 1, power)
    old = scale_stats(reshift(running.stats, running.shift, shift), 1.0 - eta)
    new = scale_stats(batch, eta / batch.weight_sum)
    mixed = replace(old + new, n_samples=batch.n_samples, n_nonfinite=0, far=batch.far)
    params, events = family.m_step(mixed, kparams)
    return Running(np.asarray(shift, np.float64), mixed, running.n_steps + 1), params, events


def kmeans_step(centers: np.ndarray, counts: np.ndarray, batch: Stats,
                shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One mini-batch k-means step: returns ``(centers, counts)``.

    ``batch`` are k-means statistics of the batch shifted by ``shift`` (the centers they
    were assigned to, in the data's dtype): a center with assigned weight ``n`` moves to
    c + Σ(x − c) / (W + n), its weight ``W`` becoming W + n. Centers no row chose stay.
    """
    counts = counts + batch.nk
    centers = np.array(centers, dtype=np.float64)
    moved = batch.nk > 0
    centers[moved] = shift[moved] + batch.s1[moved] / counts[moved, None]
    return centers, counts
