"""The exceptions and warnings daskem raises.

Every error is a ``ValueError`` (or a ``RuntimeError`` for a failed fit), so callers can
catch either daskem's own classes or the standard category, as in zarr-python's
``zarr.errors``. ``NotFittedError`` and ``ConvergenceWarning`` are also scikit-learn's
classes of the same names (subclasses of them).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator


class DaskemError(Exception):
    """Base class of every daskem error.

    ``remedy``, where set, is what the user can do about it; ``daskem`` prints it after the
    message instead of the generic advice for the error's exit code.
    """

    remedy: str | None = None


class ConfigError(DaskemError, ValueError):
    """The job's settings are wrong: a config file that is missing, not valid YAML or does not
    validate, or a setting that does not fit the data (``data.variable`` names no array)."""


class RunStoreError(DaskemError, ValueError):
    """The run store cannot be used for this run (another config, another data source),
    or holds nothing to read (no model yet)."""


class DataError(DaskemError, ValueError):
    """The data cannot be used: wrong shape or dtype, non-finite values, too few samples."""


class ParameterError(DaskemError, ValueError):
    """An estimator argument or an initial parameter array is invalid."""


class FitError(DaskemError, RuntimeError):
    """The fit failed numerically (for example a covariance that is not positive definite)."""


class CovarianceError(FitError, ValueError):
    """A mixture component's covariance is not positive definite: its rows collapsed onto
    too few distinct points. A ``ValueError`` as in scikit-learn; the message names the
    components and what to do (raise ``reg_covar``, fewer components, scale the data)."""


class StorageError(DaskemError, RuntimeError):
    """Writing to a run store or an output store failed: the disk is full, a quota is
    reached, or the location is not writable. The message names the path."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.errno = code


# The errors of a full or unwritable location, and how daskem names them.
_STORAGE_ERRNOS = {
    errno.ENOSPC: ("no space left on device", "free space"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota"),
    errno.EACCES: ("permission denied", "make it writable"),
    errno.EPERM: ("operation not permitted", "make it writable"),
    errno.EROFS: ("read-only file system", "choose a writable location"),
}


@contextlib.contextmanager
def storage_errors(what: str, path: str) -> Iterator[None]:
    """Turn a full disk, a quota or a permission error met while writing ``what`` to
    ``path`` into a :class:`StorageError` that names the path (``OSError`` from a write
    often carries none)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in _STORAGE_ERRNOS:
            raise
        phrase, remedy = _STORAGE_ERRNOS[exc.errno]
        where = exc.filename or path
        error = StorageError(f"{phrase} while writing {what} to {where}", exc.errno)
        error.remedy = f"{remedy} at {path}"
        raise error from exc


class DaskemWarning(UserWarning):
    """Base class of daskem's warnings."""


class DataWarning(DaskemWarning):
    """The data can be fitted but something about them deserves attention."""


class ClusterPolicyWarning(DaskemWarning):
    """An empty cluster or a collapsed component was re-seeded (see the estimator's docs)."""


# Two classes subclass scikit-learn's, so that code catching or filtering scikit-learn's
# ``NotFittedError`` and ``ConvergenceWarning`` catches daskem's too. They are made on
# first use (PEP 562): the engine and the kernels import this module on every worker, and
# they never need scikit-learn.
_SKLEARN_SUBCLASSES = {
    "NotFittedError": (DaskemError, "NotFittedError",
                       "A method that needs a fitted model was called before ``fit``."),
    "ConvergenceWarning": (DaskemWarning, "ConvergenceWarning",
                           "A fit stopped at ``max_iter`` before meeting its tolerance."),
}


def __getattr__(name: str):
    if name not in _SKLEARN_SUBCLASSES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sklearn import exceptions

    base, sklearn_name, doc = _SKLEARN_SUBCLASSES[name]
    cls = type(name, (base, getattr(exceptions, sklearn_name)),
               {"__doc__": doc, "__module__": __name__})
    globals()[name] = cls
    return cls
