"""Model selection: a grid of Gaussian mixtures fitted together, one pass per iteration.

Every candidate (a number of components and a covariance type) and each of its restarts
is one model of the engine's EM loop, so every pass over the data serves all the models
still running; a converged model drops out of the passes. Initialisation is shared too:
the k-means of a given size and seed is run once for every covariance type.

A candidate's start is the start a :class:`~daskem.GaussianMixture` with the same
settings and ``random_state`` would take (for the same ``sample_size``; its default grows
with the largest candidate above 200 components), so each candidate's parameters are
those of a separate fit.

The criteria use the log-likelihood of the data under each candidate's final parameters
(one extra pass for all candidates): ``BIC = -2·log L + p·log n`` and ``AIC = -2·log L +
2·p`` with ``p`` free parameters and ``n`` samples (with ``sample_weight``, the sum of the
weights: a weight counts as that many repeated rows). Lower is better.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from daskem.engine.em import EMState, best_index, evaluate, fit_states
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, in_span
from daskem.engine.seeding import choose_on_sample, initial_mixtures
from daskem.errors import ClusterPolicyWarning, ConvergenceWarning, ParameterError
from daskem.estimators.base import (
    DEFAULT_BLOCKS,
    blocks_of,
    check_choice,
    default_sample_size,
    master_rng,
    restart_records,
    start_fit,
)
from daskem.estimators.mixture import GaussianMixture, _kernel_params
from daskem.kernels.covariance import COVARIANCE_TYPES, n_parameters
from daskem.kernels.estep import gaussian_loglik_chunk
from daskem.kernels.random import spawn_seeds

CRITERIA = ("bic", "aic")


@dataclass
class Candidate:
    """One fitted candidate of a selection and the numbers its criteria use."""

    n_components: int
    covariance_type: str
    estimator: GaussianMixture  # fitted: the best of the candidate's restarts
    log_likelihood: float  # Σ w·log p(x) under the final parameters
    n_samples: float  # n of the BIC (the weight sum)
    n_parameters: int
    bic: float
    aic: float

    def record(self) -> dict:
        """The candidate as plain numbers (for tables, JSON and the run store)."""
        est = self.estimator
        return {"n_components": self.n_components, "covariance_type": self.covariance_type,
                "log_likelihood": self.log_likelihood, "n_samples": self.n_samples,
                "n_parameters": self.n_parameters, "bic": self.bic, "aic": self.aic,
                "lower_bound": float(est.lower_bound_), "n_iter": int(est.n_iter_),
                "converged": bool(est.converged_)}


@dataclass
class Selection:
    """The result of :func:`select_mixture`: every candidate, and the chosen one."""

    candidates: list[Candidate]
    criterion: str
    best_index: int
    passes_: dict = field(default_factory=dict)  # full reads of the data, by phase

    @property
    def n_passes_(self) -> int:
        return int(sum(self.passes_.values()))

    @property
    def best(self) -> Candidate:
        return self.candidates[self.best_index]

    @property
    def best_estimator_(self) -> GaussianMixture:
        return self.best.estimator

    def table(self) -> list[dict]:
        """One record per candidate, with ``chosen`` marking the selected one."""
        return [dict(c.record(), chosen=i == self.best_index)
                for i, c in enumerate(self.candidates)]

    def format(self) -> str:
        """The candidates as a fixed-width text table, the chosen one marked ``*``."""
        return format_table(self.table())


def format_table(table: list[dict]) -> str:
    """Candidate records (:meth:`Selection.table`, or as kept in a run store) as text."""
    lines = [f"{'':1} {'K':>4} {'covariance':<10} {'log L':>16} {'params':>7} "
             f"{'BIC':>16} {'AIC':>16} {'iter':>5} conv"]
    for row in table:
        lines.append(
            f"{'*' if row['chosen'] else ' '} {row['n_components']:>4} "
            f"{row['covariance_type']:<10} {row['log_likelihood']:>16.8g} "
            f"{row['n_parameters']:>7} {row['bic']:>16.8g} {row['aic']:>16.8g} "
            f"{row['n_iter']:>5} {'yes' if row['converged'] else 'no'}")
    return "\n".join(lines)


def grid(n_components: Sequence[int], covariance_types: Sequence[str]) -> list[tuple]:
    """The candidates of a grid, in order: by covariance type, then by size."""
    if isinstance(n_components, (int, np.integer)):
        n_components = [n_components]
    if isinstance(covariance_types, str):
        covariance_types = [covariance_types]
    sizes = list(n_components)
    if not sizes or not list(covariance_types):
        raise ParameterError("select needs at least one n_components and one covariance type")
    for k in sizes:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ParameterError(f"n_components must be integers >= 1; got {k!r}")
    for ctype in covariance_types:
        check_choice("covariance_types", ctype, COVARIANCE_TYPES)
    if len(set(sizes)) != len(sizes) or len(set(covariance_types)) != len(covariance_types):
        raise ParameterError("n_components and covariance_types must not repeat a value")
    return [(int(k), c) for c in covariance_types for k in sorted(sizes)]


@in_span("daskem select_mixture")
def select_mixture(
    X,
    n_components: Sequence[int],
    covariance_types: Sequence[str] = ("full",),
    *,
    criterion: str = "bic",
    sample_weight=None,
    tol: float = 1e-3,
    reg_covar: float = 1e-6,
    max_iter: int = 100,
    n_init: int = 1,
    init_params: str = "kmeans",
    random_state=None,
    assignment: str = "soft",
    fixed_variance: float = 1.0,
    sample_size: int | None = None,
    split_every: int = DEFAULT_SPLIT_EVERY,
    chunk_rows: int | None = None,
    checkpoint=None,
    callback: Callable[[int, list[EMState]], None] | None = None,
    passes: dict | None = None,
    update: str = "batch",
    n_blocks: int = DEFAULT_BLOCKS,
    missing: str = "error",
) -> Selection:
    """Fit every (size, covariance type) of a grid in shared passes and pick by BIC or AIC.

    >>> sel = select_mixture(X, range(2, 10), ["full", "diag"])   # doctest: +SKIP
    >>> sel.best_estimator_.predict(X)                             # doctest: +SKIP

    ``checkpoint`` and ``callback`` are those of :meth:`GaussianMixture.fit` (the states
    are every candidate's restarts, in :func:`grid` order, restarts innermost); ``passes``,
    a dict that counts the full reads of the data by phase while the selection runs (for
    progress displays; the result's ``passes_`` holds them too).
    """
    check_choice("criterion", criterion, CRITERIA)
    cells = grid(n_components, covariance_types)
    settings = dict(tol=tol, reg_covar=reg_covar, max_iter=max_iter, n_init=n_init,
                    init_params=init_params, random_state=random_state,
                    assignment=assignment, fixed_variance=fixed_variance,
                    split_every=split_every, chunk_rows=chunk_rows, update=update,
                    n_blocks=n_blocks, missing=missing)
    protos = [GaussianMixture(k, covariance_type=c, sample_size=sample_size, **settings)
              for k, c in cells]
    for est in protos:
        est._check_params()
    largest = max(k for k, _ in cells)
    rng = master_rng(random_state)
    # The same draws as a separate fit: the summary sample, then the restarts' seeds.
    if sample_size is None:
        sample_size = default_sample_size(largest)
    data, summary = start_fit(X, sample_weight, n_components=largest, what="n_components",
                              chunk_rows=chunk_rows, sample_size=sample_size, rng=rng,
                              split_every=split_every, missing=missing)
    if passes is not None:  # the caller's dict counts the passes as they are made
        passes.update(data.passes)
        data.passes = passes

    families = [est._family() for est in protos for _ in range(n_init)]

    def initial():
        seeds = spawn_seeds(rng, n_init)
        starts = [s for est in protos for s in est._starts(seeds)]
        params = initial_mixtures(data, summary, starts, split_every=split_every)
        states = [EMState(p) for p in params]
        if init_params == "k-means||":
            return states
        # Each candidate's restarts compared on the sample: its best runs over the data.
        groups = [i // n_init for i in range(len(states))]
        return choose_on_sample(summary, families, states, groups, maximise=True)

    states = fit_states(data, families, initial, max_iter=max_iter, split_every=split_every,
                        checkpoint=checkpoint, callback=callback,
                        n_blocks=blocks_of(update, n_blocks))

    best_states = []
    for i, est in enumerate(protos):
        own = states[i * n_init:(i + 1) * n_init]
        best = own[best_index(own, maximise=True)]
        est._set_state(best, data.n_features, data.dtype)
        est.restarts_ = restart_records(own)
        est.n_empty_rows_, est.n_missing_values_ = summary.n_empty, summary.n_missing
        best_states.append(best)
    # One more pass: every candidate's log-likelihood under its final parameters.
    lls = evaluate(data, [gaussian_loglik_chunk] * len(protos),
                   [_kernel_params(est._params, missing == "marginalize") for est in protos],
                   phase="select",
                   label="loglik", split_every=split_every)
    candidates = []
    for (k, ctype), est, ll in zip(cells, protos, lls, strict=True):
        p = n_parameters(ctype, k, data.n_features)
        n = ll.weight_sum
        candidates.append(Candidate(k, ctype, est, ll.total, n, p,
                                    bic=-2.0 * ll.total + p * np.log(n),
                                    aic=-2.0 * ll.total + 2.0 * p))
    scores = [getattr(c, criterion) for c in candidates]
    selection = Selection(candidates, criterion, int(np.argmin(scores)), dict(data.passes))
    for c in candidates:
        c.estimator._set_passes(data.passes)  # the passes they shared
    _warn(selection)
    return selection


def _warn(selection: Selection) -> None:
    late = [f"{c.n_components} {c.covariance_type}" for c in selection.candidates
            if not c.estimator.converged_]
    if late:
        warnings.warn(f"{len(late)} of {len(selection.candidates)} candidates did not "
                      f"converge ({', '.join(late)}); increase max_iter or tol",
                      ConvergenceWarning, stacklevel=4)
    reseeded = [f"{c.n_components} {c.covariance_type}" for c in selection.candidates
                if c.estimator.reseeds_]
    if reseeded:
        warnings.warn(f"collapsed components were re-seeded in {len(reseeded)} candidate(s) "
                      f"({', '.join(reseeded)}; see each estimator's reseeds_)",
                      ClusterPolicyWarning, stacklevel=4)
