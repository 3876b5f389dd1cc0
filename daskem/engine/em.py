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
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, span
from daskem.errors import DataError, FitError
from daskem.kernels.estep import (
    GaussianKernelParams,
    KMeansKernelParams,
    gaussian_chunk_stats,
    kmeans_chunk_stats,
)
from daskem.kernels.mstep import GaussianParams, Reseed, gaussian_m_step, kmeans_m_step
from daskem.kernels.stats import Stats


@dataclass(frozen=True)
class EMState:
    """Where one model's fit stands: everything needed to continue it."""

    params: GaussianParams | np.ndarray
    n_iter: int = 0
    converged: bool = False
    objectives: tuple = ()  # per iteration: mean log-likelihood (mixtures) or inertia
    events: tuple = field(default=(), repr=False)  # (iteration, Reseed) pairs
    # Why this restart stopped before its passes over the data ("" while it runs): a
    # restart beaten on the sample is not run to the end (see engine.seeding).
    dropped: str = ""

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

    kernel = staticmethod(gaussian_chunk_stats)

    def kernel_params(self, params: GaussianParams, dtype, far: bool = True):
        # The mixture kernels form their features in float64 whatever ``dtype`` is.
        del dtype
        return GaussianKernelParams.build(
            params.weights, params.means, params.precisions_cholesky, self.covariance_type,
            hard=self.hard, far_capacity=params.n_components if far else 0)

    def update(self, state: EMState, stats: Stats, kparams: GaussianKernelParams) -> EMState:
        lower_bound = stats.objective / stats.weight_sum
        if not np.isfinite(lower_bound):
            raise FitError(
                f"the log-likelihood became {lower_bound} at iteration {state.n_iter + 1}; "
                "increase reg_covar or scale the input data")
        params, events = gaussian_m_step(
            stats, kparams.shift, self.covariance_type, self.reg_covar,
            self.fixed_variance)
        previous = state.objectives[-1] if state.objectives else -np.inf
        converged = abs(lower_bound - previous) < self.tol
        return _advance(state, params, lower_bound, converged, events)


@dataclass(frozen=True)
class KMeansFamily:
    """k-means: Lloyd's algorithm; ``tol`` is absolute (already scaled by the data)."""

    tol: float = 0.0

    kernel = staticmethod(kmeans_chunk_stats)

    def kernel_params(self, centers: np.ndarray, dtype, far: bool = True):
        return KMeansKernelParams.build(centers, dtype,
                                        far_capacity=len(centers) if far else 0)

    def update(self, state: EMState, stats: Stats, kparams: KMeansKernelParams) -> EMState:
        old = kparams.centers.astype(np.float64)
        centers, events = kmeans_m_step(stats, old)
        shift = float(((centers - old) ** 2).sum())
        return _advance(state, centers, stats.objective, shift <= self.tol, events)


def _advance(state: EMState, params, objective: float, converged: bool,
             events: list[Reseed]) -> EMState:
    n_iter = state.n_iter + 1
    return replace(
        state,
        params=params,
        n_iter=n_iter,
        converged=bool(converged),
        objectives=state.objectives + (float(objective),),
        events=state.events + tuple((n_iter, e) for e in events),
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
    for stats in result.items:
        if stats.n_nonfinite:
            raise DataError(
                f"X contains {stats.n_nonfinite} non-finite value(s) (NaN or inf); they "
                "appeared after the data were checked (was the source modified?)")
    return result.items


def run_em(
    data: ChunkedData,
    families: Sequence,
    states: Sequence[EMState],
    *,
    max_iter: int,
    split_every: int = DEFAULT_SPLIT_EVERY,
    callback: Callable[[int, list[EMState]], None] | None = None,
    phase: str = "estep",
) -> list[EMState]:
    """Iterate every model until it converges or reaches ``max_iter`` iterations.

    One pass (one ``dask.compute``) per iteration, shared by all models still running.
    ``callback(pass_number, states)`` is called after each pass (progress, checkpoints).
    """
    states = list(states)
    n_pass = 0
    while True:
        active = [i for i, s in enumerate(states) if s.running and s.n_iter < max_iter]
        if not active:
            return states
        kparams = [families[i].kernel_params(states[i].params, data.dtype) for i in active]
        name = "iteration" if phase == "estep" else f"{phase} iteration"
        with span(f"{name} {n_pass + 1}"):
            stats = evaluate(data, [families[i].kernel for i in active], kparams,
                             phase=phase, label=f"it{n_pass:04d}", split_every=split_every)
        for i, kp, st in zip(active, kparams, stats, strict=True):
            states[i] = families[i].update(states[i], st, kp)
        n_pass += 1
        if callback is not None:
            callback(n_pass, states)


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
                  callback=after_pass)
