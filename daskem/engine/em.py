"""The EM loop for several models at once.

A model being fitted is a *family* (what kind of model and its fixed settings: covariance
type, tolerance, ...) and a *state* (a value: parameters, iteration count, objective
history, convergence flag, re-seeding events). One iteration maps every active state to
its next state with one pass over the data: each chunk task runs the E-step of every
active model and returns their statistics, which are tree-reduced; the M-steps run here,
on the client. Models that have converged or reached ``max_iter`` drop out of the pass.
Restarts (``n_init``) and, later, model selection are just several models in one list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np

from daskem.engine.data import ChunkedData
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, iteration_label, span
from daskem.errors import DataError, FitError
from daskem.kernels.estep import (
    GaussianKernelParams,
    KMeansKernelParams,
    gaussian_chunk_stats,
    kmeans_chunk_stats,
)
from daskem.kernels.mstep import (
    GaussianParams,
    KMeansParams,
    Reseed,
    gaussian_m_step,
    kmeans_labels_stable,
    kmeans_m_step,
)
from daskem.kernels.stats import Stats, reshift


@dataclass(frozen=True)
class EMState:
    """Where one model's fit stands: everything needed to continue it."""

    params: GaussianParams | KMeansParams
    n_iter: int = 0
    converged: bool = False
    objectives: tuple = ()  # per iteration: mean log-likelihood (mixtures) or inertia
    events: tuple = field(default=(), repr=False)  # (iteration, Reseed) pairs
    # Why this restart stopped before its passes over the data ("" while it runs): a
    # restart beaten on the sample is not run to the end (see engine.seeding).
    dropped: str = ""
    # Incremental EM: per block of chunks, the statistics of its latest visit and the
    # shift they are relative to, ``((shift, Stats), ...)``; empty for batch EM.
    blocks: tuple = field(default=(), repr=False, compare=False)
    # The statistics the latest M-step ran on and their shift, ``(shift, Stats)``: with
    # them a later fit can hold these rows fixed while it reads only new ones.
    last: tuple = field(default=(), repr=False, compare=False)

    @property
    def running(self) -> bool:
        return not self.converged and not self.dropped


@dataclass(frozen=True)
class GaussianFamily:
    """A Gaussian mixture: EM with soft (or hard) assignments."""

    covariance_type: str
    reg_covar: float = 1e-6
    tol: float = 1e-3
    hard: bool = False
    fixed_variance: float = 1.0
    marginalize: bool = False  # NaN is a missing value, marginalised in the E-step

    kernel = staticmethod(gaussian_chunk_stats)

    def kernel_params(self, params: GaussianParams, dtype, far: bool = True):
        # The mixture kernels form their features in float64 whatever ``dtype`` is.
        del dtype
        return GaussianKernelParams.build(
            params.weights, params.means, params.precisions_cholesky, self.covariance_type,
            hard=self.hard, far_capacity=params.n_components if far else 0,
            marginalize=self.marginalize)

    @staticmethod
    def stats_shift(kparams: GaussianKernelParams) -> np.ndarray:
        """The point the kernel's statistics are shifted by."""
        return kparams.shift

    def m_step(self, stats: Stats, kparams: GaussianKernelParams):
        return gaussian_m_step(stats, kparams.shift, self.covariance_type, self.reg_covar,
                               self.fixed_variance)

    def objective(self, stats: Stats, n_iter: int) -> float:
        """The mean log-likelihood of the statistics (refused when not finite)."""
        lower_bound = stats.objective / stats.weight_sum
        if not np.isfinite(lower_bound):
            raise FitError(
                f"the log-likelihood became {lower_bound} at iteration {n_iter}; "
                "increase reg_covar or scale the input data")
        return lower_bound

    def converged(self, state: EMState, objective: float, old_params, new_params,
                  stats: Stats | None = None) -> bool:
        previous = state.objectives[-1] if state.objectives else -np.inf
        return abs(objective - previous) < self.tol

    def update(self, state: EMState, stats: Stats, kparams: GaussianKernelParams) -> EMState:
        return _update(self, state, stats, kparams)


@dataclass(frozen=True)
class KMeansFamily:
    """k-means: Lloyd's algorithm; ``tol`` is absolute (already scaled by the data)."""

    tol: float = 0.0
    marginalize: bool = False  # NaN is a missing value: partial distances

    kernel = staticmethod(kmeans_chunk_stats)

    def kernel_params(self, params: KMeansParams, dtype, far: bool = True):
        centers = params.cluster_centers
        return KMeansKernelParams.build(centers, dtype,
                                        far_capacity=len(centers) if far else 0,
                                        marginalize=self.marginalize)

    @staticmethod
    def stats_shift(kparams: KMeansKernelParams) -> np.ndarray:
        """The points the kernel's statistics are shifted by: every cluster's center."""
        return kparams.centers.astype(np.float64)

    def m_step(self, stats: Stats, kparams: KMeansKernelParams):
        centers, events = kmeans_m_step(stats, kparams.centers.astype(np.float64))
        return KMeansParams(centers), events

    @staticmethod
    def objective(stats: Stats, n_iter: int) -> float:
        return float(stats.objective)

    def converged(self, state: EMState, objective: float, old_params, new_params,
                  stats: Stats | None = None) -> bool:
        """The centers moved by at most ``tol`` (squared, summed), or (given the pass's
        ``stats``, computed at ``old_params``) so little that no label can change: a fixed
        point, whatever ``tol`` is."""
        old = np.asarray(old_params.cluster_centers, dtype=np.float64)
        new = new_params.cluster_centers
        if float(((np.asarray(new) - old) ** 2).sum()) <= self.tol:
            return True
        return stats is not None and kmeans_labels_stable(
            stats, old, new, old_params.cluster_centers.dtype)

    def update(self, state: EMState, stats: Stats, kparams: KMeansKernelParams) -> EMState:
        return _update(self, state, stats, kparams)


@dataclass(frozen=True)
class WithFixed:
    """A family whose every M-step also counts statistics held fixed: the rows of an
    earlier fit, not read again (``shift`` is what ``stats`` are relative to).

    The objective and the convergence test are those of the rows being read.
    """

    family: GaussianFamily | KMeansFamily
    shift: np.ndarray
    stats: Stats

    @property
    def kernel(self):
        return self.family.kernel

    def kernel_params(self, params, dtype, far: bool = True):
        return self.family.kernel_params(params, dtype, far)

    def stats_shift(self, kparams) -> np.ndarray:
        return self.family.stats_shift(kparams)

    def m_step(self, stats: Stats, kparams):
        return self.family.m_step(stats, kparams)

    def total(self, stats: Stats, shift: np.ndarray) -> Stats:
        """``stats`` (relative to ``shift``) and the fixed statistics, added."""
        return stats + reshift(self.stats, self.shift, shift)

    def objective(self, stats: Stats, n_iter: int) -> float:
        return self.family.objective(stats, n_iter)

    def converged(self, state: EMState, objective: float, old_params, new_params,
                  stats: Stats | None = None) -> bool:
        return self.family.converged(state, objective, old_params, new_params, stats)

    def update(self, state: EMState, stats: Stats, kparams) -> EMState:
        return _update(self, state, stats, kparams)


def _update(family, state: EMState, stats: Stats, kparams) -> EMState:
    """A batch iteration's end: the objective, the M-step, the convergence test."""
    objective = family.objective(stats, state.n_iter + 1)
    shift = family.stats_shift(kparams)
    total = _total(family, stats, shift)
    params, events = family.m_step(total, kparams)
    converged = family.converged(state, objective, kparams_centers(kparams, shift), params,
                                 total)
    return _advance(state, params, objective, converged, events, last=(shift, total))


def kparams_centers(kparams, shift: np.ndarray):
    """The centers a k-means pass ran with, in the data's dtype (the shift, for mixtures)."""
    return KMeansParams(kparams.centers) if isinstance(kparams, KMeansKernelParams) else shift


def _total(family, stats: Stats, shift: np.ndarray) -> Stats:
    """What the M-step counts: ``stats``, and a :class:`WithFixed` family's fixed rows."""
    return family.total(stats, shift) if isinstance(family, WithFixed) else stats


def _advance(state: EMState, params, objective: float, converged: bool,
             events: list[Reseed], last: tuple = ()) -> EMState:
    n_iter = state.n_iter + 1
    return replace(
        state,
        params=params,
        n_iter=n_iter,
        converged=bool(converged),
        objectives=state.objectives + (float(objective),),
        events=state.events + tuple((n_iter, e) for e in events),
        last=last,
    )


@dataclass(frozen=True)
class MultiRequest:
    """The payload of one pass: a kernel and its parameters for every model in the pass."""

    kernels: tuple
    params: tuple


@dataclass
class StatsList:
    items: list

    def __add__(self, other: StatsList) -> StatsList:
        return StatsList([a + b for a, b in zip(self.items, other.items, strict=True)])


def multi_chunk_stats(x, w, offset, request: MultiRequest) -> StatsList:
    return StatsList([kernel(x, w, offset, p)
                      for kernel, p in zip(request.kernels, request.params, strict=True)])


def evaluate(data: ChunkedData, kernels: Sequence[Callable], params: Sequence, *,
             phase: str = "estep", label: str = "",
             split_every: int = DEFAULT_SPLIT_EVERY) -> list[Stats]:
    """One pass computing the statistics of several models; raises on non-finite data."""
    result = data.map_reduce(multi_chunk_stats, MultiRequest(tuple(kernels), tuple(params)),
                             phase=phase, label=label, split_every=split_every)
    return _finite(result.items)


def _finite(items: list[Stats]) -> list[Stats]:
    for stats in items:
        if stats.n_nonfinite:
            raise DataError(
                f"X contains {stats.n_nonfinite} non-finite value(s) (NaN or inf); they "
                "appeared after the data were checked (was the source modified?)")
    return items


def run_em(
    data: ChunkedData,
    families: Sequence,
    states: Sequence[EMState],
    *,
    max_iter: int,
    split_every: int = DEFAULT_SPLIT_EVERY,
    callback: Callable[[int, list[EMState]], None] | None = None,
    phase: str = "estep",
    n_blocks: int = 1,
) -> list[EMState]:
    """Iterate every model until it converges or reaches ``max_iter`` iterations.

    One pass (one ``dask.compute``) per iteration, shared by all models still running.
    ``callback(pass_number, states)`` is called after each pass (progress, checkpoints).
    With ``n_blocks > 1`` the iterations are incremental (:func:`run_incremental`) when
    the data have chunks enough for two blocks or more.
    """
    if len(data.block_ranges(n_blocks)) > 1:
        return run_incremental(data, families, states, max_iter=max_iter,
                               n_blocks=n_blocks, split_every=split_every,
                               callback=callback, phase=phase)
    states = list(states)
    n_pass = 0
    while True:
        active = [i for i, s in enumerate(states) if s.running and s.n_iter < max_iter]
        if not active:
            return states
        kparams = [families[i].kernel_params(states[i].params, data.dtype) for i in active]
        name = "iteration" if phase == "estep" else f"{phase} iteration"
        iteration = max(states[i].n_iter for i in active) + 1  # (as progress lines count)
        with span(f"{name} {iteration}"):
            stats = evaluate(data, [families[i].kernel for i in active], kparams,
                             phase=phase, label=iteration_label(iteration),
                             split_every=split_every)
        for i, kp, st in zip(active, kparams, stats, strict=True):
            states[i] = families[i].update(states[i], st, kp)
        n_pass += 1
        if callback is not None:
            callback(n_pass, states)


def _block_stats(data: ChunkedData, kernels, params, blocks, *, phase: str, label: str,
                 split_every: int) -> list[list[Stats]]:
    """Statistics of several models per block of chunks, ``[block][model]``, in one
    ``compute``; raises on non-finite data as :func:`evaluate` does."""
    results = data.map_reduce(multi_chunk_stats, MultiRequest(tuple(kernels), tuple(params)),
                              phase=phase, label=label, split_every=split_every,
                              blocks=blocks)
    return [_finite(result.items) for result in results]


def block_total(blocks: Sequence[tuple], reference: np.ndarray) -> Stats:
    """The sum of per-block statistics, each re-centred on ``reference``, in block order."""
    total = None
    for shift, stats in blocks:
        stats = reshift(stats, shift, reference)
        total = stats if total is None else total + stats
    return total


def run_incremental(data: ChunkedData, families: Sequence, states: Sequence[EMState], *,
                    max_iter: int, n_blocks: int, split_every: int = DEFAULT_SPLIT_EVERY,
                    callback: Callable[[int, list[EMState]], None] | None = None,
                    phase: str = "estep") -> list[EMState]:
    """Incremental EM (Neal & Hinton 1998): an M-step after every block of chunks.

    The chunks are cut into ``n_blocks`` consecutive blocks. A model's first pass is a
    batch iteration that keeps each block's statistics. Every later pass is a *sweep*:
    for each block in order, its E-step under the current parameters replaces the
    block's statistics from the previous sweep, and the M-step runs on the sum over all
    blocks (each re-centred exactly onto the current shift, added in block order). The
    fixed points are batch EM's, and a sweep takes ``n_blocks`` small steps where batch
    EM takes one: fewer passes where EM creeps (measured in the README).

    An iteration is a pass (a sweep); its objective is the sum of the blocks'
    objectives, each under the parameters its block was visited with, and the
    convergence test is the model's own (the change of that objective, or the movement
    of the centers over the sweep). A re-seeding inside a sweep makes the other blocks'
    statistics stale: the model sits out the rest of that sweep, and its next pass is a
    batch iteration again. Deterministic: the blocks, their order and every reduction are
    fixed by the chunk grid.
    """
    states = list(states)
    blocks = data.block_ranges(n_blocks)
    name = "iteration" if phase == "estep" else f"{phase} iteration"
    n_pass = 0
    while True:
        active = [i for i, s in enumerate(states) if s.running and s.n_iter < max_iter]
        if not active:
            return states
        fresh = [i for i in active if len(states[i].blocks) != len(blocks)]
        iteration = max(states[i].n_iter for i in active) + 1
        with span(f"{name} {iteration}"):
            if fresh:
                _batch_pass(data, families, states, fresh, blocks, phase=phase,
                            label=iteration_label(iteration), split_every=split_every)
            else:
                _sweep(data, families, states, active, blocks, phase=phase,
                       label=iteration_label(iteration), split_every=split_every)
        n_pass += 1
        if callback is not None:
            callback(n_pass, states)


def _batch_pass(data, families, states, models, blocks, *, phase, label, split_every):
    """A batch iteration of ``models`` that keeps every block's statistics."""
    kparams = [families[i].kernel_params(states[i].params, data.dtype) for i in models]
    per_block = _block_stats(data, [families[i].kernel for i in models], kparams, blocks,
                             phase=phase, label=label, split_every=split_every)
    for j, (i, kp) in enumerate(zip(models, kparams, strict=True)):
        shift = families[i].stats_shift(kp)
        kept = tuple((shift, stats[j]) for stats in per_block)
        updated = families[i].update(states[i], block_total(kept, shift), kp)
        states[i] = replace(updated, blocks=kept)


def _sweep(data, families, states, models, blocks, *, phase, label, split_every):
    """One incremental pass of ``models``: an M-step after every block."""
    params = {i: states[i].params for i in models}
    kept = {i: list(states[i].blocks) for i in models}
    events: dict[int, list] = {i: [] for i in models}
    going = list(models)
    for b, block in enumerate(blocks):
        if not going:
            break
        kparams = [families[i].kernel_params(params[i], data.dtype) for i in going]
        (stats,) = _block_stats(data, [families[i].kernel for i in going], kparams, [block],
                                phase=phase, label=label, split_every=split_every)
        for i, kp, st in zip(going, kparams, stats, strict=True):
            reference = families[i].stats_shift(kp)
            kept[i][b] = (reference, st)
            total = _total(families[i], block_total(kept[i], reference), reference)
            params[i], new_events = families[i].m_step(total, kp)
            events[i].extend(new_events)
        going = [i for i in going if not events[i]]
    data.count_pass(phase)
    for i in models:
        family, state = families[i], states[i]
        reference = kept[i][-1][0]
        total = block_total(kept[i], reference)
        objective = family.objective(total, state.n_iter + 1)
        converged = not events[i] and family.converged(state, objective, state.params,
                                                       params[i])
        # The blocks' labels came from different centers: no margin holds for the sum.
        last = replace(_total(family, total, reference), margin=np.inf)
        states[i] = replace(_advance(state, params[i], objective, converged, events[i],
                                     last=(reference, last)),
                            blocks=() if events[i] else tuple(kept[i]))


def run_em_in_memory(x: np.ndarray, w: np.ndarray | None, families: Sequence,
                     states: Sequence[EMState], *, max_iter: int) -> list[EMState]:
    """:func:`run_em` on rows held in memory (the summary pass's sample): the same
    kernels, M-steps and convergence tests, no pass over the data."""
    states = list(states)
    for _ in range(max_iter):
        active = [i for i, s in enumerate(states) if s.running and s.n_iter < max_iter]
        if not active:
            break
        for i in active:
            kparams = families[i].kernel_params(states[i].params, x.dtype)
            stats = families[i].kernel(x, w, 0, kparams)
            states[i] = families[i].update(states[i], stats, kparams)
    return states


def best_index(states: Sequence[EMState], maximise: bool) -> int:
    """The restart a fit keeps: the first with the best final objective among those that
    ran to the end (restarts dropped on the sample have none)."""
    sign = 1.0 if maximise else -1.0
    values = [sign * s.objectives[-1] if s.objectives and not s.dropped else -np.inf
              for s in states]
    return int(np.argmax(values))


class Checkpointer(Protocol):
    """Where a resumable fit keeps its states (see :class:`daskem.store.RunStore`)."""

    def load(self) -> list[EMState] | None:
        """The newest complete states, or ``None`` to start from the beginning."""

    def save(self, states: list[EMState]) -> None:
        """Keep ``states``; called after initialisation and after every pass."""


def fit_states(
    data: ChunkedData,
    families: Sequence,
    make_initial: Callable[[], list[EMState]],
    *,
    max_iter: int,
    split_every: int = DEFAULT_SPLIT_EVERY,
    checkpoint: Checkpointer | None = None,
    callback: Callable[[int, list[EMState]], None] | None = None,
    n_blocks: int = 1,
) -> list[EMState]:
    """Initialise (or resume from ``checkpoint``) and iterate to the end.

    The initial states are saved before the first iteration and the states after every
    pass, so a fit killed at any moment resumes from its newest complete checkpoint and,
    every step being deterministic, ends with the parameters of an uninterrupted fit.
    """
    states = checkpoint.load() if checkpoint is not None else None
    if states is None:
        with span("initialisation"):
            states = make_initial()
        if checkpoint is not None:
            checkpoint.save(states)
    elif len(states) != len(families):
        raise ValueError(f"the checkpoint holds {len(states)} models, the fit has "
                         f"{len(families)}")

    def after_pass(n_pass: int, current: list[EMState]) -> None:
        if checkpoint is not None:
            checkpoint.save(current)
        if callback is not None:
            callback(n_pass, current)

    return run_em(data, families, states, max_iter=max_iter, split_every=split_every,
                  callback=after_pass, n_blocks=n_blocks)
