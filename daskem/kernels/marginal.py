"""EM with missing values: the E-step on the observed part of each row (Ghahramani & Jordan
1994, "Supervised learning from incomplete data via an EM approach").

For a row with observed features ``o`` and missing ``m`` and a component with mean ``μ`` and
precision ``Λ = Σ⁻¹`` (both known for every covariance type), write ``δ`` for ``x − μ`` on
``o`` and 0 on ``m``, and ``v = (Λδ)_m``. Then, from the partitioned inverse::

    (x_o − μ_o)ᵀ Σ_oo⁻¹ (x_o − μ_o) = δᵀΛδ − vᵀ Λ_mm⁻¹ v
    log det Σ_oo                    = log det Σ + log det Λ_mm
    E[x_m | x_o]   = μ_m − Λ_mm⁻¹ v           (= μ_m + Σ_mo Σ_oo⁻¹ (x_o − μ_o))
    Cov[x_m | x_o] = Λ_mm⁻¹                    (= Σ_mm − Σ_mo Σ_oo⁻¹ Σ_om)

so a row costs one product with ``Λ`` per component (as a complete row does) and each
(missingness pattern, component) factorises the small ``Λ_mm`` once. The M-step needs, per
component, ``Σ r``, ``Σ r x̂`` and ``Σ r (x̂ x̂ᵀ + C)`` with ``x̂`` the row completed by its
conditional expectation and ``C`` the conditional covariance on ``m × m``: the same
statistics as complete data (shifted by ``s``), so the reduction and the M-step do not
change. For ``diag``, ``spherical`` and ``fixed`` the conditionals are trivial (``Λ_mo = 0``:
``x̂_m = μ_m``, ``C = Σ_mm``); ``tied`` shares ``Λ``.

Rows with no observed value carry no information: they are left out of the statistics
(neither counted nor weighed). Per-row results for them are NaN (labels −1).

This module is the NumPy reference; :func:`daskem.kernels.compiled.marginal_fused` is its
compiled twin.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from daskem.kernels.covariance import LOG_2PI, QUAD_OUTER, QUAD_SQUARE, pack_symmetric

# Rows × components × features held at once by one sub-block (4 MiB of float64).
SUBBLOCK_ELEMENTS = 1 << 19


@dataclass(frozen=True)
class MarginalParams:
    """A mixture's parameters as the missing-value E-step uses them (all float64)."""

    means: np.ndarray  # (K, d)
    precisions: np.ndarray  # (K, d, d) dense, every covariance type
    log_weights: np.ndarray  # (K,)
    log_det: np.ndarray  # (K,) log det U = ½ log det Λ
    # The complete-data form (see daskem.kernels.estep): log π_k N(x | μ_k, Σ_k) =
    # weights_t[k] · F(x − shift); the compiled kernel corrects it for the missing part.
    shift: np.ndarray | None = None
    weights_t: np.ndarray | None = None

    @classmethod
    def build(cls, weights, means, prec_chol, kind, shift=None,
              weights_t=None) -> MarginalParams:
        means = np.asarray(means, dtype=np.float64)
        k, d = means.shape
        prec_chol = np.asarray(prec_chol, dtype=np.float64)
        precisions = kind.dense(kind.precisions(prec_chol), k, d)
        with np.errstate(divide="ignore"):
            log_w = np.log(np.asarray(weights, dtype=np.float64))
        return cls(means=means, precisions=np.ascontiguousarray(precisions),
                   log_weights=log_w,
                   log_det=np.broadcast_to(kind.log_det(prec_chol, d), (k,)).astype(np.float64),
                   shift=shift, weights_t=weights_t)

    @property
    def n_components(self) -> int:
        return self.means.shape[0]


def split_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(missing mask, complete rows, incomplete rows with an observed value, empty rows)."""
    missing = np.isnan(x)
    n_missing = missing.sum(axis=1)
    d = x.shape[1]
    return (missing, np.flatnonzero(n_missing == 0),
            np.flatnonzero((n_missing > 0) & (n_missing < d)), np.flatnonzero(n_missing == d))


def pattern_order(missing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(pattern, order)``: the rows sorted by missingness pattern (``order``, rows ascending
    within a pattern) and, for each of them, its pattern's number (0, 1, ...; ascending)."""
    n, d = missing.shape
    if n == 0:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
    if d <= 62:  # one integer per pattern: a 1-D sort
        keys = missing.astype(np.int64) @ (np.int64(1) << np.arange(d, dtype=np.int64))
    else:
        packed = np.ascontiguousarray(np.packbits(missing, axis=1))
        keys = packed.view(np.dtype((np.void, packed.shape[1]))).ravel()
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pattern = np.concatenate([[0], np.cumsum(sorted_keys[1:] != sorted_keys[:-1])])
    return pattern.astype(np.int64), order.astype(np.int64)


def group_patterns(missing: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The rows of each missingness pattern: ``[(missing features, rows), ...]`` (rows
    ascending within a pattern)."""
    pattern, order = pattern_order(missing)
    if not len(order):
        return []
    bounds = np.searchsorted(pattern, np.arange(pattern[-1] + 2))
    return [(np.flatnonzero(missing[order[bounds[g]]]), order[bounds[g]:bounds[g + 1]])
            for g in range(len(bounds) - 1)]


def pattern_factors(mp: MarginalParams, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(Λ_mm⁻¹, log det Λ_mm)`` of every component for missing features ``m``."""
    lmm = mp.precisions[:, m[:, None], m[None, :]]
    chol = np.linalg.cholesky(lmm)
    eye = np.broadcast_to(np.eye(len(m)), lmm.shape)
    inv_chol = np.linalg.solve(chol, eye)
    cond_cov = np.swapaxes(inv_chol, 1, 2) @ inv_chol
    return cond_cov, 2.0 * np.log(np.diagonal(chol, axis1=1, axis2=2)).sum(axis=1)


def _pattern_blocks(x: np.ndarray, mp: MarginalParams, rows: np.ndarray | None = None):
    """For the ``rows`` of ``x`` (each with a missing and an observed value; default all),
    grouped by missingness pattern in sub-blocks: ``(sub, m, cond_cov, log_prob, diff)``,
    with ``sub`` row indices into ``x``, ``m`` the pattern's missing features, ``cond_cov``
    its Λ_mm⁻¹ and the rest as :func:`conditional_block` gives them."""
    k, d = mp.means.shape
    step = max(1, SUBBLOCK_ELEMENTS // max(k * d, 1))
    missing = np.isnan(x if rows is None else x[rows])
    for m, group in group_patterns(missing):
        group = group if rows is None else rows[group]
        o = np.setdiff1d(np.arange(d), m)
        cond_cov, logdet_mm = pattern_factors(mp, m)
        for start in range(0, len(group), step):
            sub = group[start:start + step]
            yield (sub, m, cond_cov) + conditional_block(x[sub], o, m, mp, cond_cov,
                                                          logdet_mm)


def conditional_block(xb: np.ndarray, o: np.ndarray, m: np.ndarray, mp: MarginalParams,
                      cond_cov: np.ndarray, logdet_mm: np.ndarray) -> tuple:
    """For rows ``xb`` of one pattern: ``(log π_k N(x_o | μ_k,o, Σ_k,oo)`` (K × b),
    ``x̂_k − μ_k`` (K × b × d))."""
    k, d = mp.means.shape
    b = xb.shape[0]
    diff = np.zeros((k, b, d))
    diff[:, :, o] = xb[None, :, o] - mp.means[:, None, o]
    product = diff @ mp.precisions  # Λ symmetric: rows of (Λδ)ᵀ
    maha = np.einsum("kbd,kbd->kb", diff, product)
    v = product[:, :, m]
    cv = v @ cond_cov  # Λ_mm⁻¹ v (symmetric)
    maha -= np.einsum("kbm,kbm->kb", v, cv)
    log_prob = (mp.log_weights + mp.log_det - 0.5 * logdet_mm - 0.5 * len(o) * LOG_2PI)[:, None]
    log_prob = log_prob - 0.5 * maha
    diff[:, :, m] = -cv
    return log_prob, diff


def _normalise(log_prob: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(responsibilities, log-sum-exp) of (K × b) log-probabilities."""
    top = log_prob.max(axis=0)
    top = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.exp(log_prob - top)
        total = e.sum(axis=0)
        return e / total, np.log(total) + top


def marginal_log_prob(x: np.ndarray, mp: MarginalParams) -> np.ndarray:
    """log π_k N(x_o | μ_k,o, Σ_k,oo) for rows that each have a missing and an observed
    value, shape (n, K)."""
    x = np.asarray(x, dtype=np.float64)
    out = np.empty((x.shape[0], mp.n_components))
    for sub, _, _, log_prob, _ in _pattern_blocks(x, mp):
        out[sub] = log_prob.T
    return out


def conditional_mean(x: np.ndarray, mp: MarginalParams) -> np.ndarray:
    """Every NaN of rows ``x`` replaced by Σ_k r_k(x_o) E_k[x_m | x_o] (observed values kept;
    a row with nothing observed has nothing to condition on and stays NaN)."""
    x = np.array(x, dtype=np.float64)
    _, _, partial, _ = split_rows(x)
    # Each row is in one block: filling a block's rows leaves the later blocks' as read.
    for sub, m, _, log_prob, diff in _pattern_blocks(x, mp, partial):
        resp, _ = _normalise(log_prob)
        filled = diff[:, :, m] + mp.means[:, None, m]
        x[np.ix_(sub, m)] = np.einsum("kb,kbm->bm", resp, filled)
    return x


def marginal_stats(x: np.ndarray, w: np.ndarray | None, mp: MarginalParams, shift: np.ndarray,
                   quad: int, keeps_s2: bool, hard: bool) -> tuple:
    """Statistics of rows that each have a missing and an observed value.

    Returns ``(nk, s1, quad_sums, objective, weight_sum)`` as the complete-data kernels do:
    ``quad_sums`` is Σ r q(x̂ − s) plus the conditional covariances, in the layout of the
    feature map ``quad`` (``None`` when the type keeps no ``s2``).
    """
    x = np.asarray(x, dtype=np.float64)
    k, d = mp.means.shape
    nk = np.zeros(k)
    s1 = np.zeros((k, d))
    dense = np.zeros((k, d, d)) if keeps_s2 and quad == QUAD_OUTER else None
    squares = np.zeros((k, d)) if keeps_s2 and quad != QUAD_OUTER else None
    objective = 0.0
    weight_sum = 0.0
    centred = mp.means - shift
    for sub, m, cond_cov, log_prob, diff in _pattern_blocks(x, mp):
        b = len(sub)
        resp, lse = _normalise(log_prob)
        if hard:
            labels = np.argmax(log_prob, axis=0)
            per_row = log_prob[labels, np.arange(b)]
            resp = np.zeros_like(resp)
            resp[labels, np.arange(b)] = 1.0
        else:
            per_row = lse
        if w is None:
            objective += float(per_row.sum())
            weight_sum += float(b)
        else:
            wb = np.asarray(w[sub], dtype=np.float64)
            resp = resp * wb
            objective += float(per_row @ wb)
            weight_sum += float(wb.sum())
        z = diff + centred[:, None, :]  # x̂ − s
        mass = resp.sum(axis=1)
        nk += mass
        s1 += np.einsum("kb,kbd->kd", resp, z)
        if dense is not None:
            dense += np.swapaxes(z * resp[:, :, None], 1, 2) @ z
            dense[:, m[:, None], m[None, :]] += mass[:, None, None] * cond_cov
        elif squares is not None:
            squares += np.einsum("kb,kbd->kd", resp, z * z)
            squares[:, m] += mass[:, None] * np.diagonal(cond_cov, axis1=1, axis2=2)
    quad_sums = None
    if dense is not None:
        quad_sums = pack_symmetric(dense)
    elif squares is not None:
        quad_sums = squares if quad == QUAD_SQUARE else squares.sum(axis=1)[:, None]
    return nk, s1, quad_sums, objective, weight_sum
