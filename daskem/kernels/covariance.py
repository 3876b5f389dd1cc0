"""Covariance types as objects: all that differs between ``full``, ``tied``, ``diag``,
``spherical`` and ``fixed`` lives here, one class per type, looked up by name in
:data:`COVARIANCE_TYPES`. No other module compares covariance-type names.

Shapes of ``covariances`` / ``precisions_cholesky`` per type (scikit-learn's):

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

The E-step sees a type through its quadratic feature map (see :mod:`daskem.kernels.estep`):
with ``z = x − s``, every type's log-density is linear in ``[q(z), z, 1]``, where ``q(z)``
is one of three maps (:data:`QUAD_OUTER`, :data:`QUAD_SQUARE`, :data:`QUAD_NORM`, integers so
that compiled kernels can take them). The statistic ``s2`` a type keeps is ``Σ r q(z)`` as
the kernel sums it (the spherical trace as a vector), or nothing.

A new covariance type is one subclass of :class:`CovarianceType`, given to :func:`register`
(or added to :data:`COVARIANCE_TYPES` here, which also makes it a config value); it provides

* ``name``, ``quad`` (its feature map), ``shared`` (one matrix for all components),
  ``updated`` (re-estimated by the M-step; ``fixed`` is not, and provides ``held``),
  ``keeps_s2``;
* ``shape`` (of its parameters), ``n_parameters`` (free covariance parameters, for BIC);
* ``linear_form`` (precision → the weights of ``q(z)`` and ``z`` in the log-density);
* ``covariances`` (M-step: shifted statistics → covariances, with ``reg_covar``) and
  ``from_responsibilities`` (the same from in-memory rows);
* ``precision_cholesky``, ``covariances_from_cholesky``, ``cholesky_from_precisions``,
  ``precisions``, ``log_det``, ``whiten`` (one component's ``(x − μ) U``);
* ``dense`` (every component's d × d covariance: sampling, the report) and ``blend``
  (a collapsed component's covariance when it is re-seeded).
"""

from __future__ import annotations

import numpy as np
from scipy import linalg

from daskem.errors import CovarianceError

LOG_2PI = float(np.log(2.0 * np.pi))

# Quadratic feature maps q(z) of the E-step (integers: compiled kernels take them).
QUAD_OUTER = 0  # z_i z_j for i ≤ j, row-major upper triangle: d(d+1)/2 features
QUAD_SQUARE = 1  # z_j²: d features
QUAD_NORM = 2  # ‖z‖²: one feature

def _above_rounding(second_moment: np.ndarray, mean_square: np.ndarray) -> np.ndarray:
    """Variance as second moment − squared mean, 0 where it is within rounding of zero.

    The difference of two sums cancels: what is left below a few ulps of the second
    moment is rounding, not spread, so a component collapsed onto one point gets variance
    0 (then an error when ``reg_covar`` is 0) rather than 1e-16.
    """
    var = second_moment - mean_square
    return np.where(var > 16 * np.finfo(np.float64).eps * second_moment, var, 0.0)


def _components(bad: list) -> str:
    return f"component {bad[0]} has" if len(bad) == 1 else f"components {bad} have"


_ILL_DEFINED = (
    "Fitting the mixture model failed because {which} an ill-defined "
    "empirical covariance (for instance caused by singleton or collapsed samples). "
    "Try to decrease the number of components, increase reg_covar, or scale the input data."
)


def quad_width(quad: int, n_features: int) -> int:
    """Number of quadratic features of a map."""
    d = n_features
    return {QUAD_OUTER: d * (d + 1) // 2, QUAD_SQUARE: d, QUAD_NORM: 1}[quad]


def pack_symmetric(matrices: np.ndarray) -> np.ndarray:
    """Upper triangles (row-major, i ≤ j) of (..., d, d) matrices, shape (..., d(d+1)/2)."""
    d = matrices.shape[-1]
    iu, ju = np.triu_indices(d)
    return matrices[..., iu, ju]


def unpack_symmetric(packed: np.ndarray, n_features: int) -> np.ndarray:
    """Inverse of :func:`pack_symmetric`."""
    iu, ju = np.triu_indices(n_features)
    out = np.empty(packed.shape[:-1] + (n_features, n_features))
    out[..., iu, ju] = packed
    out[..., ju, iu] = packed
    return out


def _weighted_scatter(x, rw, means) -> np.ndarray:
    """Σ_rows rw[:, k] (x − μ_k)(x − μ_k)ᵀ for every component, (K, d, d)."""
    return np.stack([(rw[:, k] * (x - means[k]).T) @ (x - means[k])
                     for k in range(means.shape[0])])


def _weighted_squares(x, rw, means) -> np.ndarray:
    """Σ_rows rw[:, k] (x − μ_k)² for every component, (K, d)."""
    return np.stack([rw[:, k] @ (x - means[k]) ** 2 for k in range(means.shape[0])])


class CovarianceType:
    """What one covariance type is; see the module's docstring for what a type provides."""

    name: str
    quad: int
    shared = False
    updated = True
    keeps_s2 = True

    def __repr__(self) -> str:
        return f"covariance({self.name!r})"

    # -------------------------------------------------------------- sizes

    def shape(self, n_components: int, n_features: int) -> tuple:
        """Shape of ``covariances_`` and ``precisions_cholesky_``."""
        raise NotImplementedError

    def n_parameters(self, n_components: int, n_features: int) -> float:
        raise NotImplementedError

    def s2_shape(self, n_components: int, n_features: int) -> tuple | None:
        """Shape of the statistic ``s2`` (``None`` when the type keeps none)."""
        if not self.keeps_s2:
            return None
        width = quad_width(self.quad, n_features)
        return (n_components,) if self.quad == QUAD_NORM else (n_components, width)

    def s2_from_quad(self, quad_sums: np.ndarray) -> np.ndarray | None:
        """``s2`` from the kernel's (K, q) sums of the quadratic features."""
        if not self.keeps_s2:
            return None
        return quad_sums[:, 0] if self.quad == QUAD_NORM else quad_sums

    # -------------------------------------------------------------- E-step

    def linear_form(self, prec_chol: np.ndarray, centred: np.ndarray) -> tuple:
        """``(Q, L)`` with ``(z − m)ᵀ P (z − m) = Q·q(z) − 2 L·z + const`` per component.

        ``centred`` are the means minus the shift (K, d); ``Q`` is (K, q), ``L`` (K, d).
        """
        raise NotImplementedError

    def whiten(self, diff: np.ndarray, prec_chol: np.ndarray, k: int) -> np.ndarray:
        """``(x − μ_k) U_k`` for rows ``diff = x − μ_k``."""
        return diff * prec_chol[k]

    # -------------------------------------------------------------- M-step

    def covariances(self, s2, nk, delta, reg_covar: float, fixed_variance: float):
        """Covariances around the new means from statistics shifted by ``s``.

        ``delta = s1 / nk`` is (new mean − s); Σ r (x−μ)(x−μ)ᵀ = s2 − nk δδᵀ.
        """
        raise NotImplementedError

    def from_responsibilities(self, x, rw, nk, means, reg_covar: float,
                              fixed_variance: float):
        """Covariances from in-memory rows ``x`` and weighted responsibilities ``rw``."""
        raise NotImplementedError

    def blend(self, share: np.ndarray, covariances: np.ndarray, alive: np.ndarray):
        """The covariance a re-seeded component gets: the ``share``-weighted average of
        the ``alive`` components' (``None``: it keeps its own)."""
        return np.tensordot(share, covariances[alive], axes=1)

    # -------------------------------------------------------------- parameters

    def precision_cholesky(self, covariances: np.ndarray) -> np.ndarray:
        """Cholesky factor of the precision of each component, in float64.

        Raises :class:`~daskem.errors.CovarianceError` naming the components whose covariance is
        not positive definite.
        """
        covariances = np.asarray(covariances, dtype=np.float64)
        bad = np.flatnonzero(~(covariances > 0.0)).tolist()
        if bad:
            raise CovarianceError(_ILL_DEFINED.format(which=_components(bad)))
        return 1.0 / np.sqrt(covariances)

    def covariances_from_cholesky(self, prec_chol: np.ndarray) -> np.ndarray:
        return 1.0 / np.asarray(prec_chol, dtype=np.float64) ** 2

    def cholesky_from_precisions(self, precisions: np.ndarray) -> np.ndarray:
        """Cholesky factor of user-given precisions (scikit-learn's ``precisions_init``);
        raises ``ValueError`` naming what is wrong with them."""
        precisions = np.asarray(precisions, dtype=np.float64)
        if np.any(~(precisions > 0)):
            raise ValueError("must be positive")
        return np.sqrt(precisions)

    def precisions(self, prec_chol: np.ndarray) -> np.ndarray:
        return prec_chol**2

    def log_det(self, prec_chol: np.ndarray, n_features: int) -> np.ndarray:
        """log det of the precision's Cholesky factor, per component (K,).

        '− ½ log det(covariance)' in the Gaussian density equals
        '+ log det(precision_cholesky)', which is what this returns.
        """
        raise NotImplementedError

    def dense(self, covariances: np.ndarray, n_components: int, n_features: int) -> np.ndarray:
        """Every component's covariance as a d × d matrix, (K, d, d)."""
        covariances = np.asarray(covariances, dtype=np.float64)
        return covariances[:, None, None] * np.eye(n_features)


class Full(CovarianceType):
    name = "full"
    quad = QUAD_OUTER

    def shape(self, n_components, n_features):
        return (n_components, n_features, n_features)

    def n_parameters(self, n_components, n_features):
        return n_components * n_features * (n_features + 1) / 2.0

    def _factors(self, prec_chol, n_components):
        return prec_chol

    def linear_form(self, prec_chol, centred):
        k, d = centred.shape
        chol = self._factors(prec_chol, k)
        precision = np.einsum("kij,klj->kil", chol, chol)
        # Each off-diagonal product z_i z_j (i < j) appears once in q(z), twice in zᵀPz.
        quad = pack_symmetric(precision * (2.0 - np.eye(d)))
        return quad, np.einsum("kij,kj->ki", precision, centred)

    def whiten(self, diff, prec_chol, k):
        return diff @ prec_chol[k]

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        d = delta.shape[1]
        cov = unpack_symmetric(s2, d) / nk[:, None, None]
        cov -= delta[:, :, None] * delta[:, None, :]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return cov

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        cov = _weighted_scatter(x, rw, means) / nk[:, None, None]
        d = x.shape[1]
        cov[:, np.arange(d), np.arange(d)] += reg_covar
        return cov

    def _stack(self, covariances):
        return covariances

    def precision_cholesky(self, covariances):
        stack = self._stack(np.asarray(covariances, dtype=np.float64))
        out = np.empty_like(stack)
        bad = []
        for k, cov in enumerate(stack):
            try:
                cov_chol = linalg.cholesky(cov, lower=True)
            except linalg.LinAlgError:
                bad.append(k)
                continue
            # precision = cov⁻¹ = L⁻ᵀ L⁻¹, so U = L⁻ᵀ is an upper factor with U Uᵀ = cov⁻¹.
            out[k] = linalg.solve_triangular(cov_chol, np.eye(cov.shape[0]), lower=True).T
        if bad:
            raise CovarianceError(_ILL_DEFINED.format(which=self._which(bad)))
        return out.reshape(np.shape(covariances))

    def _which(self, bad):
        return _components(bad)

    def covariances_from_cholesky(self, prec_chol):
        stack = self._stack(np.asarray(prec_chol, dtype=np.float64))
        return np.stack([np.linalg.inv(u @ u.T) for u in stack]).reshape(prec_chol.shape)

    def cholesky_from_precisions(self, precisions):
        precisions = np.asarray(precisions, dtype=np.float64)
        if not np.allclose(precisions, np.swapaxes(precisions, -1, -2)):
            raise ValueError("must be symmetric, positive-definite")
        try:
            return np.stack([linalg.cholesky(p, lower=True) for p in self._stack(precisions)]
                            ).reshape(precisions.shape)
        except np.linalg.LinAlgError:
            raise ValueError("must be symmetric, positive-definite") from None

    def precisions(self, prec_chol):
        return prec_chol @ np.swapaxes(prec_chol, -1, -2)

    def log_det(self, prec_chol, n_features):
        return np.log(np.diagonal(self._stack(prec_chol), axis1=1, axis2=2)).sum(axis=1)

    def dense(self, covariances, n_components, n_features):
        return np.asarray(covariances, dtype=np.float64)


class Tied(Full):
    name = "tied"
    shared = True

    def shape(self, n_components, n_features):
        return (n_features, n_features)

    def n_parameters(self, n_components, n_features):
        return n_features * (n_features + 1) / 2.0

    def _factors(self, prec_chol, n_components):
        return np.broadcast_to(prec_chol, (n_components,) + prec_chol.shape)

    def whiten(self, diff, prec_chol, k):
        return diff @ prec_chol

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        d = delta.shape[1]
        cov = unpack_symmetric(s2.sum(axis=0), d)
        cov -= np.einsum("k,ki,kj->ij", nk, delta, delta)
        cov /= nk.sum()
        cov.flat[:: d + 1] += reg_covar
        return cov

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        cov = _weighted_scatter(x, rw, means).sum(axis=0) / nk.sum()
        cov.flat[:: x.shape[1] + 1] += reg_covar
        return cov

    def blend(self, share, covariances, alive):
        return None

    def _stack(self, covariances):
        return covariances[None]

    def _which(self, bad):
        return "the tied covariance (shared by all components) has"

    def log_det(self, prec_chol, n_features):
        return super().log_det(prec_chol, n_features)[0]

    def dense(self, covariances, n_components, n_features):
        return np.broadcast_to(np.asarray(covariances, np.float64),
                               (n_components,) + np.shape(covariances))


class Diag(CovarianceType):
    name = "diag"
    quad = QUAD_SQUARE

    def shape(self, n_components, n_features):
        return (n_components, n_features)

    def n_parameters(self, n_components, n_features):
        return n_components * n_features

    def linear_form(self, prec_chol, centred):
        precision = prec_chol**2
        return precision, precision * centred

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        return _above_rounding(s2 / nk[:, None], delta**2) + reg_covar

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        return _weighted_squares(x, rw, means) / nk[:, None] + reg_covar

    def precision_cholesky(self, covariances):
        covariances = np.asarray(covariances, dtype=np.float64)
        bad = np.unique(np.nonzero(~(covariances > 0.0))[0]).tolist()
        if bad:
            raise CovarianceError(_ILL_DEFINED.format(which=_components(bad)))
        return 1.0 / np.sqrt(covariances)

    def log_det(self, prec_chol, n_features):
        return np.log(prec_chol).sum(axis=1)

    def dense(self, covariances, n_components, n_features):
        covariances = np.asarray(covariances, dtype=np.float64)
        return covariances[:, :, None] * np.eye(n_features)


class Spherical(CovarianceType):
    name = "spherical"
    quad = QUAD_NORM

    def shape(self, n_components, n_features):
        return (n_components,)

    def n_parameters(self, n_components, n_features):
        return n_components

    def linear_form(self, prec_chol, centred):
        precision = np.broadcast_to(prec_chol, (centred.shape[0],)) ** 2
        return precision[:, None], precision[:, None] * centred

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        d = delta.shape[1]  # the mean of the diagonal
        return _above_rounding(s2 / (nk * d), (delta**2).mean(axis=1)) + reg_covar

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        return (_weighted_squares(x, rw, means) / nk[:, None] + reg_covar).mean(axis=1)

    def log_det(self, prec_chol, n_features):
        return n_features * np.log(prec_chol)


class Fixed(Spherical):
    """σ²·I for every component, σ² = ``fixed_variance``, never re-estimated ("soft
    k-means", EM with the covariance known)."""

    name = "fixed"
    updated = False
    keeps_s2 = False

    def n_parameters(self, n_components, n_features):
        return 0

    def held(self, n_components: int, fixed_variance: float) -> np.ndarray:
        """The covariances of a type that the M-step does not update."""
        return np.full(n_components, float(fixed_variance))

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        return self.held(nk.shape[0], fixed_variance)

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        return self.held(nk.shape[0], fixed_variance)

    def blend(self, share, covariances, alive):
        return None

    def cholesky_from_precisions(self, precisions):
        raise ValueError("does not apply: the covariances stay fixed_variance·I; set "
                         "fixed_variance instead")


COVARIANCE_TYPES: dict[str, CovarianceType] = {
    kind.name: kind for kind in (Full(), Tied(), Diag(), Spherical(), Fixed())
}
# The built-in types (the config's allowed values).
NAMES = tuple(COVARIANCE_TYPES)


def register(kind: CovarianceType) -> CovarianceType:
    """Make a new covariance type known to the estimators under ``kind.name``."""
    if kind.name in COVARIANCE_TYPES:
        raise ValueError(f"covariance type {kind.name!r} exists already")
    COVARIANCE_TYPES[kind.name] = kind
    return kind


def covariance(name: str) -> CovarianceType:
    """The covariance type called ``name``."""
    try:
        return COVARIANCE_TYPES[name]
    except (KeyError, TypeError):
        raise ValueError(f"covariance_type: expected one of {', '.join(COVARIANCE_TYPES)}; "
                         f"got {name!r}") from None


def n_parameters(covariance_type: str, n_components: int, n_features: int) -> int:
    """Number of free parameters, as used by BIC and AIC."""
    k, d = n_components, n_features
    return int(covariance(covariance_type).n_parameters(k, d) + k * d + k - 1)


def log_gaussian_prob(x: np.ndarray, means: np.ndarray, prec_chol: np.ndarray,
                      covariance_type: str) -> np.ndarray:
    """log N(x | μ_k, Σ_k) for every sample and component, shape (n_samples, n_components).

    A direct, unblocked implementation: the in-memory reference of the chunk kernels in
    :mod:`daskem.kernels.estep`, which compute the same quantity in blocks.
    """
    kind = covariance(covariance_type)
    x = np.asarray(x, dtype=np.float64)
    n, d = x.shape
    maha = np.empty((n, means.shape[0]))
    for j in range(means.shape[0]):
        y = kind.whiten(x - means[j], prec_chol, j)
        maha[:, j] = np.einsum("ij,ij->i", y, y)
    return -0.5 * (d * LOG_2PI + maha) + kind.log_det(prec_chol, d)
