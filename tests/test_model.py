"""The model record: every model kind and covariance type through a real run store and back."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from conftest import make_blobs

from daskem import ClusterPolicyWarning, GaussianMixture, KMeans
from daskem.model import (
    GMM,
    KINDS,
    KMEANS,
    ModelRecord,
    ModelRecordError,
    kind_of,
    load_estimator,
    read_model,
    write_model,
)
from daskem.store import RunStore


def fitted_attributes(est) -> dict:
    """Every fitted attribute (name ending in ``_``) except the per-sample ``labels_``."""
    return {k: v for k, v in vars(est).items()
            if k.endswith("_") and not k.startswith("_") and k != "labels_"}


def assert_same_fit(a, b) -> None:
    fa, fb = fitted_attributes(a), fitted_attributes(b)
    assert sorted(fa) == sorted(fb)
    for name, value in fa.items():
        other = fb[name]
        if isinstance(value, np.ndarray):
            assert value.dtype == other.dtype, name
            np.testing.assert_array_equal(value, other, err_msg=name)
        else:
            assert value == other, name
    assert np.array_equal(a._fit_stats[1].nk, b._fit_stats[1].nk)
    scalar = {k: v for k, v in a.get_params().items()
              if isinstance(v, (int, float, str, bool, type(None)))}
    assert {k: b.get_params()[k] for k in scalar} == scalar


def round_trip(tmp_path, est, **record):
    store = RunStore(str(tmp_path / "run.zarr"))
    store.create({}, "hash", {})
    write_model(store, ModelRecord.of(est, **record))
    return load_estimator(RunStore(str(tmp_path / "run.zarr")))


@pytest.mark.parametrize("ctype", ["full", "tied", "diag", "spherical", "fixed"])
def test_mixture_round_trip_every_covariance_type(tmp_path, ctype):
    X = make_blobs(600, 3, 3, seed=1)
    est = GaussianMixture(3, covariance_type=ctype, n_init=2, random_state=0).fit(X)
    back, attrs = round_trip(tmp_path, est, features=["a", "b", "c"], rows_end=600)
    assert_same_fit(est, back)
    assert attrs["features"] == ["a", "b", "c"] and attrs["rows_end"] == 600
    # The model behaves as the one written.
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    np.testing.assert_allclose(back.score_samples(X), est.score_samples(X), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_kmeans_round_trip(tmp_path, dtype):
    X = make_blobs(500, 4, 3, seed=2, dtype=dtype)
    est = KMeans(3, n_init=3, random_state=0).fit(X)
    back, _ = round_trip(tmp_path, est)
    assert_same_fit(est, back)
    assert back.cluster_centers_.dtype == dtype
    np.testing.assert_array_equal(back.predict(X), est.predict(X))


def test_reseeds_survive_the_round_trip(tmp_path):
    X = make_blobs(1500, 2, 3, seed=4, spread=0.5)
    means = np.array([X[0], X[1], [1e4, 1e4]])
    with pytest.warns(ClusterPolicyWarning, match="re-seeded"):
        est = GaussianMixture(3, covariance_type="diag", means_init=means, random_state=0,
                              max_iter=200).fit(X)
    assert est.reseeds_
    back, _ = round_trip(tmp_path, est)
    assert back.reseeds_ == est.reseeds_
    assert_same_fit(est, back)


def test_one_set_of_array_names_in_checkpoints_and_model(tmp_path):
    """Checkpoints and ``model/`` name a kind's parameters alike (the registry's names)."""
    X = make_blobs(400, 2, 2, seed=3)
    for est, kind in ((KMeans(2, random_state=0), KMEANS),
                      (GaussianMixture(2, random_state=0), GMM)):
        path = tmp_path / f"{kind.name}.zarr"
        store = RunStore(str(path), keep_checkpoints=2)
        est.fit(X, checkpoint=store)
        write_model(store, ModelRecord.of(est))
        root = zarr.open_group(str(path), mode="r")
        newest = store.read_pointer().group
        layout = root[newest].attrs["states"][0]["arrays"]
        assert [name for name, _, _ in layout][:len(kind.arrays)] == list(kind.arrays)
        assert set(kind.arrays) <= {n for n, _ in root["model"].arrays()}
        assert read_model(store).kind is kind_of(est) is kind


def test_run_store_of_an_earlier_daskem_resumes(tmp_path):
    """Checkpoints written by an earlier daskem: a group per restart, k-means' parameters
    named ``centers``. They still resume."""
    from daskem.store import Pointer, _checksum

    centers = np.arange(6.0).reshape(3, 2)
    store = RunStore(str(tmp_path / "old.zarr"))
    store.create({}, "hash", {})
    group = zarr.open_group(str(tmp_path / "old.zarr"), mode="a")
    old = group.require_group("checkpoints").create_group("iter_000004")
    sub = old.create_group("model_0")
    sub.create_array("centers", data=centers)
    sub.attrs.update({"n_iter": 4, "converged": False, "objectives": [4.0, 3.0, 2.0, 1.0],
                      "events": [[2, 1, 17, "empty cluster"]], "dropped": ""})
    old.attrs.update({"step": 4, "n_models": 1, "checksum": _checksum([centers])})
    store._write_pointer(Pointer("checkpoints/iter_000004", _checksum([centers]), 4))
    (state,) = RunStore(str(tmp_path / "old.zarr")).load()
    np.testing.assert_array_equal(state.params.cluster_centers, centers)
    assert state.n_iter == 4 and state.events[0][1].row == 17


def test_registry_names_each_kind_once():
    assert set(KINDS) == {"gmm", "kmeans"}
    assert GMM.best([1.0, 3.0, np.nan, 2.0]) == 1 and KMEANS.best([1.0, 3.0, np.nan]) == 0
    assert GMM.estimator_class() is GaussianMixture and KMEANS.estimator_class() is KMeans


def test_no_model_yet_is_a_clear_error(tmp_path):
    store = RunStore(str(tmp_path / "empty.zarr"))
    store.create({}, "hash", {})
    with pytest.raises(ModelRecordError, match="holds no fitted model yet"):
        read_model(store)


# ------------------------------------------------------------------ daskem.save / daskem.load


@pytest.mark.parametrize("make", [lambda: GaussianMixture(3, covariance_type="tied",
                                                          random_state=0),
                                  lambda: KMeans(3, n_init=2, random_state=0)])
def test_save_then_load_gives_the_same_estimator(tmp_path, make):
    import pickle

    import daskem

    X = make_blobs(500, 3, 3, seed=6)
    est = make().fit(X)
    daskem.save(est, str(tmp_path / "m.zarr"))
    back = daskem.load(str(tmp_path / "m.zarr"))
    assert type(back) is type(est)
    assert_same_fit(est, back)
    np.testing.assert_array_equal(back.predict(X), est.predict(X))
    again = pickle.loads(pickle.dumps(back))  # picklable, as scikit-learn's are
    assert_same_fit(est, again)
    # The format is the run store's: its reader sees the model.
    assert read_model(RunStore(str(tmp_path / "m.zarr"))).kind is kind_of(est)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        daskem.save(est, str(tmp_path / "m.zarr"))
    other = make().fit(X[:250])
    daskem.save(other, str(tmp_path / "m.zarr"), overwrite=True)
    assert_same_fit(other, daskem.load(str(tmp_path / "m.zarr")))
    with pytest.raises(daskem.DaskemError, match="no run store at"):
        daskem.load(str(tmp_path / "none.zarr"))


def test_save_refuses_an_unfitted_or_foreign_estimator(tmp_path):
    from sklearn.cluster import KMeans as SkKMeans

    import daskem

    with pytest.raises(ModelRecordError, match="not a daskem estimator"):
        daskem.save(SkKMeans(2).fit(make_blobs(50, 2, 2)), str(tmp_path / "x.zarr"))
    with pytest.raises(daskem.NotFittedError):
        daskem.save(KMeans(2), str(tmp_path / "y.zarr"))
