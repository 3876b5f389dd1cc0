"""The exceptions and warnings daskem raises.

Every error is a ``ValueError`` (or a ``RuntimeError`` for a failed fit), so callers can
catch either daskem's own classes or the standard category, as in zarr-python's
``zarr.errors``.
"""

from __future__ import annotations


class DaskemError(Exception):
    """Base class of every daskem error."""


class DataError(DaskemError, ValueError):
    """The data cannot be used: wrong shape or dtype, non-finite values, too few samples."""


class ParameterError(DaskemError, ValueError):
    """An estimator argument or an initial parameter array is invalid."""


class FitError(DaskemError, RuntimeError):
    """The fit failed numerically (for example a covariance that is not positive definite)."""


class NotFittedError(DaskemError, ValueError, AttributeError):
    """A method that needs a fitted model was called before ``fit``."""


class DaskemWarning(UserWarning):
    """Base class of daskem's warnings."""


class DataWarning(DaskemWarning):
    """The data can be fitted but something about them deserves attention."""


class ConvergenceWarning(DaskemWarning):
    """A fit stopped at ``max_iter`` before meeting its tolerance."""


class ClusterPolicyWarning(DaskemWarning):
    """An empty cluster or a collapsed component was re-seeded (see the estimator's docs)."""
