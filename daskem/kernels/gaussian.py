"""Gaussian components parameterised by the Cholesky factor of their precision.

Shapes of ``covariances`` / ``precisions_cholesky`` per covariance type (scikit-learn's):

============  ========================  =====================================
type          covariances               meaning
============  ========================  =====================================
full          (n_components, d, d)      one full matrix per component
tied          (d, d)                    one full matrix shared by all
diag          (n_components, d)         one diagonal per component
spherical     (n_components,)           one variance per component
fixed         (n_components,)           σ²·I for every component, never updated
============  ========================  =====================================

``precisions_cholesky`` is the upper-triangular ``U`` with ``precision = U Uᵀ`` for
full/tied, and the square root of the precision for diag/spherical/fixed, so that the
Mahalanobis term is ``‖(x − μ) U‖²``.
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from daskem.errors import FitError

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical", "fixed")

LOG_2PI = float(np.log(2.0 * np.pi))


def covariance_shape(covariance_type: str, n_components: int, n_features: int) -> tuple:
    """Shape of ``covariances_`` (and of ``precisions_cholesky_``) for a covariance type."""
    return {
        "full": (n_components, n_features, n_features),
        "tied": (n_features, n_features),
        "diag": (n_components, n_features),
        "spherical": (n_components,),
        "fixed": (n_components,),
    }[covariance_type]


_ILL_DEFINED = (
    "Fitting the mixture model failed because component(s) {which} have an ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar, or scale the input data."
)


def compute_precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor of the precision of each component, in float64.

    Raises :class:`~daskem.errors.FitError` naming the components whose covariance is not
    positive definite.
    """
    covariances = np.asarray(covariances, dtype=np.float64)
    if covariance_type in ("full", "tied"):
        stack = covariances[None] if covariance_type == "tied" else covariances
        out = np.empty_like(stack)
        bad = []
        for k, cov in enumerate(stack):
            try:
                cov_chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                bad.append(k)
                continue
            # precision = cov⁻¹ = L⁻ᵀ L⁻¹, so U = L⁻ᵀ is an upper factor with U Uᵀ = cov⁻¹.
            out[k] = linalg.solve_triangular(
                cov_chol, np.eye(cov.shape[0]), lower=True
            ).T
        if bad:
            raise FitError(_ILL_DEFINED.format(which="the tied covariance" if
                                               covariance_type == "tied" else bad))
        return out[0] if covariance_type == "tied" else out
    bad = np.flatnonzero(~(covariances > 0.0)).tolist()
    if bad:
        if covariance_type == "diag":
            bad = sorted({int(i) for i in np.unique(np.nonzero(~(covariances > 0.0))[0])})
        raise FitError(_ILL_DEFINED.format(which=bad))
    return 1.0 / np.sqrt(covariances)


def covariances_from_precision_cholesky(prec_chol: np.ndarray, covariance_type: str) -> np.ndarray:
    """Inverse of :func:`compute_precision_cholesky`."""
    prec_chol = np.asarray(prec_chol, dtype=np.float64)
    if covariance_type == "full":
        return np.stack([np.linalg.inv(u @ u.T) for u in prec_chol])
    if covariance_type == "tied":
        return np.linalg.inv(prec_chol @ prec_chol.T)
    return 1.0 / prec_chol**2


def precision_cholesky_from_precisions(precisions: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor of user-given precisions (scikit-learn's ``precisions_init``)."""
    precisions = np.asarray(precisions, dtype=np.float64)
    if covariance_type == "full":
        return np.stack([linalg.cholesky(p, lower=True) for p in precisions])
    if covariance_type == "tied":
        return linalg.cholesky(precisions, lower=True)
    return np.sqrt(precisions)


def log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, n_features: int) -> np.ndarray:
    """log det of the precision's Cholesky factor, per component (a scalar for tied).

    '- 0.5 * log det(covariance)' in the Gaussian density equals
    '+ log det(precision_cholesky)', which is what this returns.
    """
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return n_features * np.log(prec_chol)


def log_gaussian_prob(
    x: np.ndarray, means: np.ndarray, prec_chol: np.ndarray, covariance_type: str
) -> np.ndarray:
    """log N(x | μ_k, Σ_k) for every sample and component, shape (n_samples, n_components).

    A direct, unblocked implementation used as the in-memory reference and for small data
    (the chunk kernels in :mod:`daskem.kernels.estep` compute the same quantity in blocks,
    together with the statistics).
    """
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    k = means.shape[0]
    maha = np.empty((n, k))
    for j in range(k):
        diff = x - means[j]
        if covariance_type == "full":
            y = diff @ prec_chol[j]
        elif covariance_type == "tied":
            y = diff @ prec_chol
        elif covariance_type == "diag":
            y = diff * prec_chol[j]
        else:
            y = diff * prec_chol[j]
        maha[:, j] = np.einsum("ij,ij->i", y, y)
    log_det = log_det_cholesky(prec_chol, covariance_type, d)
    return -0.5 * (d * LOG_2PI + maha) + log_det


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters, as used by BIC and AIC."""
    k, d = n_components, n_features
    cov = {
        "full": k * d * (d + 1) / 2.0,
        "tied": d * (d + 1) / 2.0,
        "diag": k * d,
        "spherical": k,
        "fixed": 0,
    }[covariance_type]
    return int(cov + k * d + k - 1)
