"""scikit-learn-style estimators over the engine: ``KMeans`` and ``GaussianMixture``."""

from daskem.estimators.kmeans import KMeans
from daskem.estimators.mixture import GaussianMixture

__all__ = ["GaussianMixture", "KMeans"]
