"""The report's figures, drawn from a real fitted model: what their axes, legends and cells
say (the rendered pages are checked in test_workflows and test_object_store)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from daskem.estimators import GaussianMixture, KMeans  # noqa: E402
from daskem.model import ModelRecord  # noqa: E402
from daskem.report import RunSummary, default_output, draw_means, draw_objective  # noqa: E402


def summary(estimator, objectives, features=None) -> RunSummary:
    record = ModelRecord.of(estimator, features=features)
    return RunSummary("runs/x.zarr", {}, record, objectives, None, record.estimator())


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    x = np.vstack([rng.normal(m, 1.0, size=(200, 3)) for m in (0.0, 6.0, 12.0)])
    x[:, 2] *= 1000.0  # a feature on another scale
    return GaussianMixture(3, random_state=0).fit(x)


def test_objective_scale_follows_the_chosen_line_and_every_line_has_a_legend_entry(fitted):
    chosen = [-9.0, -4.0, -3.5, -3.4, -3.39]
    losing = [-400.0, -300.0, -250.0]
    flat = [-3.6, -3.6]
    run = summary(fitted, [("restart 0", losing, False), ("restart 1", chosen, True),
                           ("restart 2", flat, False)])
    fig = draw_objective(run)
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["restart 0: -250", "restart 1 (chosen): -3.39", "restart 2: -3.6"]
    lo, hi = ax.get_ylim()
    assert lo < -4.0 < -3.39 < hi  # the chosen line from its second iteration
    assert hi - lo < 1.0  # not stretched by the losing restart (-400 .. -250) ...
    assert lo > -9.0  # ... nor by the chosen line's far first iteration
    assert "lower bound" in ax.get_ylabel()
    plt.close(fig)


def test_kmeans_objective_is_inertia_and_scaled_by_the_chosen_restart():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(300, 2))
    km = KMeans(2, n_init=1, random_state=0).fit(x)
    run = summary(km, [("restart 0", [50.0, 40.0, 39.0], True),
                       ("restart 1", [900.0, 800.0], False)])
    fig = draw_objective(run)
    ax = fig.axes[0]
    assert ax.get_ylabel() == "inertia"
    assert ax.get_ylim()[1] < 100.0
    assert len(ax.get_legend().get_texts()) == 2
    plt.close(fig)


def test_means_heat_map_prints_the_values_its_colours_show(fitted):
    run = summary(fitted, [], features=["a", "b", "c"])
    fig = draw_means(run, run.estimator)
    ax = fig.axes[0]
    shown = ax.images[0].get_array()
    means = fitted.means_
    expected = (means - means.mean(axis=0)) / means.std(axis=0)
    np.testing.assert_allclose(shown, expected)
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text()
             for t in ax.texts}
    assert len(cells) == means.size
    for (i, j), text in cells.items():
        assert float(text) == pytest.approx(expected[i, j], abs=0.051), (i, j)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]
    assert "standard score" in fig.axes[1].get_ylabel()  # the colour bar says what it shows
    plt.close(fig)


@pytest.mark.parametrize(("store", "out"), [
    ("runs/gmm.zarr", "runs/gmm-report"),
    ("runs/gmm.zarr/", "runs/gmm-report"),
    ("gmm.zarr", "gmm-report"),
    ("/data/runs/gmm.zarr", "/data/runs/gmm-report"),
    ("s3://bucket/runs/gmm.zarr", "s3://bucket/runs/gmm-report"),
    ("s3://bucket/gmm", "s3://bucket/gmm-report"),
])
def test_the_report_goes_beside_the_run_store_on_its_filesystem(store, out):
    assert default_output(store) == out
