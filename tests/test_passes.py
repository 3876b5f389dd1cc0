"""Pass economy: initialisation and the choice among restarts on the sample, in memory.

The reads themselves are counted at the source in tests/test_rows.py; here: which passes a
fit makes, that the model is as good as scikit-learn's best of three, and that a fit whose
restarts were dropped on the sample resumes to the same parameters.
"""

from __future__ import annotations

import re
import warnings

import dask.array as da
import numpy as np
import pytest
from conftest import make_blobs

from daskem import ConvergenceWarning, GaussianMixture, KMeans
from daskem.store import RunStore

sklearn_mixture = pytest.importorskip("sklearn.mixture")
sklearn_cluster = pytest.importorskip("sklearn.cluster")


@pytest.fixture(scope="module")
def blobs6():
    X = make_blobs(30_000, n_features=6, n_centers=6, seed=4, spread=1.5)
    return X, da.from_array(X, chunks=(3_000, 6))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mixture_restarts_chosen_on_the_sample(sync_scheduler, blobs6, seed):
    X, x = blobs6
    gm = GaussianMixture(6, n_init=3, random_state=seed, sample_size=3_000, max_iter=300,
                         tol=1e-4).fit(x)
    ran = [r for r in gm.restarts_ if r["ran"]]
    dropped = [r for r in gm.restarts_ if not r["ran"]]
    assert len(ran) == 1 and len(dropped) == 2
    assert all(re.match(r"beaten on the sample \(\d,\d{3} rows\): mean log-likelihood",
                        r["dropped"]) for r in dropped)
    # Nothing but the summary and the EM passes of the one restart that ran.
    assert gm.passes_ == {"summary": 1, "em": gm.n_iter_}
    assert gm.n_passes_ == 1 + gm.n_iter_ <= 10
    sk = sklearn_mixture.GaussianMixture(6, n_init=3, random_state=seed, max_iter=300,
                                         tol=1e-4).fit(X)
    assert gm.score(X) >= sk.score(X) - 1e-3


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_kmeans_restarts_chosen_on_the_sample(sync_scheduler, blobs6, seed):
    X, x = blobs6
    km = KMeans(6, n_init=3, random_state=seed, sample_size=3_000).fit(x)
    assert sum(r["ran"] for r in km.restarts_) == 1
    assert km.passes_ == {"summary": 1, "em": km.n_iter_, "score": 1}
    assert km.n_passes_ <= 8
    sk = sklearn_cluster.KMeans(6, n_init=3, random_state=seed).fit(X)
    assert km.inertia_ <= sk.inertia_ * 1.01


def test_whole_data_initialisation_runs_every_restart(sync_scheduler, blobs6):
    _, x = blobs6
    gm = GaussianMixture(6, n_init=2, random_state=0, init_params="k-means||",
                         max_iter=300).fit(x)
    assert all(r["ran"] for r in gm.restarts_)
    assert gm.passes_["seeding"] == 6 and gm.passes_["initialisation"] >= 2
    km = KMeans(6, n_init=2, random_state=0, init="k-means||").fit(x)
    assert all(r["ran"] for r in km.restarts_) and km.passes_["seeding"] == 6


def test_dropped_restarts_survive_a_resume(tmp_path, sync_scheduler, blobs6):
    _, x = blobs6
    settings = dict(n_init=3, random_state=5, sample_size=3_000, tol=1e-6, max_iter=300)
    whole = GaussianMixture(6, **settings).fit(x)
    store = RunStore(str(tmp_path / "run.zarr"))
    with pytest.warns(ConvergenceWarning):  # stopped after its first pass
        GaussianMixture(6, **{**settings, "max_iter": 1}).fit(x, checkpoint=store)
    saved = store.load()
    assert sum(bool(s.dropped) for s in saved) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        resumed = GaussianMixture(6, **settings).fit(x, checkpoint=store)
    np.testing.assert_array_equal(resumed.means_, whole.means_)
    np.testing.assert_array_equal(resumed.covariances_, whole.covariances_)
    assert resumed.lower_bounds_ == whole.lower_bounds_
    assert resumed.restarts_ == whole.restarts_
