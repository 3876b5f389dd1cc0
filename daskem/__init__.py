"""daskem: k-means and Gaussian mixtures fitted by EM on Dask clusters.

>>> from daskem import KMeans, GaussianMixture
"""

from daskem.errors import (
    ClusterPolicyWarning,
    CovarianceError,
    DaskemError,
    DataError,
    DataWarning,
    FitError,
    ParameterError,
)

# The estimators (and the two errors that subclass scikit-learn's) are imported on first
# use (PEP 562): a worker process unpickling a kernel imports this package, and should not
# pay for scikit-learn, the estimators or the engine it never runs.
_LAZY = {"GaussianMixture": "daskem.estimators", "KMeans": "daskem.estimators",
         "Selection": "daskem.estimators", "select_mixture": "daskem.estimators",
         "ConvergenceWarning": "daskem.errors", "NotFittedError": "daskem.errors",
         "load": "daskem.model", "save": "daskem.model"}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"

__all__ = [
    "ClusterPolicyWarning",
    "CovarianceError",
    "ConvergenceWarning",
    "DaskemError",
    "DataError",
    "DataWarning",
    "FitError",
    "GaussianMixture",
    "KMeans",
    "NotFittedError",
    "ParameterError",
    "Selection",
    "__version__",
    "load",
    "save",
    "select_mixture",
]
