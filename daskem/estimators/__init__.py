"""scikit-learn-style estimators over the engine: ``KMeans`` and ``GaussianMixture``, and
model selection over a grid of mixtures (``select_mixture``)."""

from daskem.estimators.kmeans import KMeans
from daskem.estimators.mixture import GaussianMixture
from daskem.estimators.selection import Candidate, Selection, select_mixture

__all__ = ["Candidate", "GaussianMixture", "KMeans", "Selection", "select_mixture"]
