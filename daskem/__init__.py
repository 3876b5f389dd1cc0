"""daskem: k-means and Gaussian mixtures fitted by EM on Dask clusters.

>>> from daskem import KMeans, GaussianMixture
"""

from daskem.errors import (
    ClusterPolicyWarning,
    ConvergenceWarning,
    DaskemError,
    DataError,
    DataWarning,
    FitError,
    NotFittedError,
    ParameterError,
)
from daskem.estimators import GaussianMixture, KMeans, Selection, select_mixture

__version__ = "0.1.0"

__all__ = [
    "ClusterPolicyWarning",
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
    "select_mixture",
]
