"""The commands beyond one fit, through the real ``daskem`` command: ``select`` (a grid of
mixtures in shared passes), warm starts from an earlier run store, and ``report``."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from conftest import run_cli, synthetic_store
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from test_cli import write_config
from test_job_faults import error_line

from daskem import GaussianMixture, KMeans, select_mixture
from daskem.kernels.stats import unpack_stats
from daskem.model import load_estimator, read_history, read_model, read_selection, write_model
from daskem.store import RunStore

pytestmark = pytest.mark.distributed

SELECT_MODEL = {"kind": "gmm", "max_iter": 100, "tol": 1e-5, "random_state": 4}


@pytest.fixture(scope="module")
def select_run(tmp_path_factory, small_store):
    tmp = tmp_path_factory.mktemp("select")
    store = tmp / "select.zarr"
    cfg = write_config(tmp, "select", data={"path": str(small_store)}, model=SELECT_MODEL,
                       select={"n_components": [1, 2, 3, 4, 5],
                               "covariance_types": ["full", "diag"]},
                       run={"store": str(store)})
    result = run_cli("select", str(cfg))
    assert result.returncode == 0, result.stderr
    return store, result


def test_select_command_keeps_every_candidate_and_the_choice(select_run, small_store):
    store, result = select_run
    assert "selecting among 10 candidates (5 sizes x 2 covariance types" in result.stdout
    assert "chosen by BIC" in result.stdout
    x = da.from_zarr(str(small_store), component="X")
    with dask.config.set(scheduler="synchronous"):
        ref = select_mixture(x, [1, 2, 3, 4, 5], ["full", "diag"], max_iter=100, tol=1e-5,
                             random_state=4)
    saved = read_selection(RunStore(str(store)))
    assert saved["criterion"] == "bic" and saved["chosen"] == ref.best_index
    assert len(saved["candidates"]) == 10
    for (arrays, attrs), cand in zip(saved["candidates"], ref.candidates, strict=True):
        assert (attrs["n_components"], attrs["covariance_type"]) == (
            cand.n_components, cand.covariance_type)
        np.testing.assert_allclose(arrays["means"], cand.estimator.means_, rtol=1e-8,
                                   atol=1e-10)
        assert attrs["bic"] == pytest.approx(cand.bic, rel=1e-10)
        assert attrs["n_parameters"] == cand.n_parameters
        assert len(attrs["objectives"]) == attrs["n_iter"]
    # model/ is the chosen candidate; the outputs are its labels
    arrays = read_model(RunStore(str(store))).arrays
    chosen_arrays = saved["candidates"][saved["chosen"]][0]
    np.testing.assert_array_equal(arrays["means"], chosen_arrays["means"])
    labels = zarr.open_group(str(store), mode="r")["outputs"]["labels"][...]
    np.testing.assert_array_equal(labels, ref.best_estimator_.predict(x.compute()))
    shown = run_cli("inspect", str(store))
    assert re.search(r"\*\s+\d+ (full|diag)", shown.stdout), shown.stdout


def test_select_command_needs_a_select_section(tmp_path, small_store):
    cfg = write_config(tmp_path, "plain", data={"path": str(small_store)},
                       run={"store": str(tmp_path / "r.zarr")})
    result = run_cli("select", str(cfg))
    assert result.returncode == 2
    assert "no select section" in result.stderr and len(result.stderr.splitlines()) == 1
    bad = write_config(tmp_path, "bad", data={"path": str(small_store)},
                       model={"kind": "kmeans"}, select={"n_components": [2, 3]},
                       run={"store": str(tmp_path / "r.zarr")})
    result = run_cli("select", str(bad))
    assert result.returncode == 2 and "set model.kind: gmm" in result.stderr


# ------------------------------------------------------------------------ warm start


def _grown_store(path, n_rows, names=None, n_features=4):
    """The small store's generator with more rows (its first rows are the same)."""
    synthetic_store(path, n_rows, n_features, 3, chunk_rows=700, seed=5)
    if names is not None:
        zarr.open_group(str(path), mode="a").attrs["features"] = names
    return path


def test_warm_start_equals_passing_the_parameters_by_hand(tmp_path, small_store):
    first = tmp_path / "day1.zarr"
    model = {"kind": "gmm", "n_components": 3, "covariance_type": "full", "max_iter": 30,
             "tol": 1e-6, "random_state": 0}
    cfg1 = write_config(tmp_path, "day1", data={"path": str(small_store)}, model=model,
                        run={"store": str(first)})
    assert run_cli("run", str(cfg1)).returncode == 0
    grown = _grown_store(tmp_path / "grown.zarr", 4200)
    second = tmp_path / "day2.zarr"
    cfg2 = write_config(tmp_path, "day2", data={"path": str(grown)},
                        model={"kind": "gmm", "init": {"from_run": str(first)}, "tol": 1e-6,
                               "max_iter": 30},
                        run={"store": str(second)})
    result = run_cli("run", str(cfg2))
    assert result.returncode == 0, result.stderr
    assert f"warm start from the model in {first}" in result.stdout

    day1 = read_model(RunStore(str(first))).arrays
    prec = np.einsum("kij,klj->kil", day1["precisions_cholesky"], day1["precisions_cholesky"])
    x = da.from_zarr(str(grown), component="X")
    with dask.config.set(scheduler="synchronous"):
        by_hand = GaussianMixture(3, weights_init=day1["weights"], means_init=day1["means"],
                                  precisions_init=prec, tol=1e-6, max_iter=30,
                                  random_state=0).fit(x)
    record = read_model(RunStore(str(second)))
    warm, attrs = record.arrays, record.attrs
    np.testing.assert_allclose(warm["means"], by_hand.means_, rtol=1e-9)
    np.testing.assert_allclose(warm["covariances"], by_hand.covariances_, rtol=1e-9)
    np.testing.assert_allclose(warm["weights"], by_hand.weights_, rtol=1e-9)
    assert attrs["n_iter"] == by_hand.n_iter_

    # Resuming today's run after yesterday's model changed under it is refused.
    RunStore(str(second)).set_status("running")
    yesterday = RunStore(str(first))
    record = read_model(yesterday)
    record.arrays["means"] = record.arrays["means"] + 0.5
    write_model(yesterday, record)
    result = run_cli("run", str(cfg2))
    assert result.returncode == 2, result.stderr
    assert "the model it starts from (model.init.from_run) changed" in result.stderr

    # k-means too: the centers of the first run are the init of the second
    km1, km2 = tmp_path / "km1.zarr", tmp_path / "km2.zarr"
    kcfg1 = write_config(tmp_path, "km1", data={"path": str(small_store)},
                         model={"kind": "kmeans", "n_components": 3, "random_state": 2},
                         run={"store": str(km1)})
    assert run_cli("run", str(kcfg1)).returncode == 0
    kcfg2 = write_config(tmp_path, "km2", data={"path": str(grown)},
                         model={"kind": "kmeans", "init": {"from_run": str(km1)}},
                         run={"store": str(km2)})
    assert run_cli("run", str(kcfg2)).returncode == 0
    centers = read_model(RunStore(str(km1))).arrays["cluster_centers"]
    with dask.config.set(scheduler="synchronous"):
        ref = KMeans(3, init=centers, n_init=1).fit(x)
    np.testing.assert_allclose(read_model(RunStore(str(km2))).arrays["cluster_centers"],
                               ref.cluster_centers_, rtol=1e-9)


def test_warm_start_on_new_rows_reads_only_them_and_fits_all(tmp_path, small_store):
    """``init: {from_run, rows: new}``: only the rows added since day 1 are read; day 1's
    statistics are held fixed, so the model stays a fit of every row."""
    first = tmp_path / "day1.zarr"
    model = {"kind": "gmm", "n_components": 3, "max_iter": 200, "tol": 1e-12,
             "random_state": 0}
    cfg1 = write_config(tmp_path, "day1", data={"path": str(small_store)}, model=model,
                        run={"store": str(first)})
    assert run_cli("run", str(cfg1)).returncode == 0
    grown = _grown_store(tmp_path / "grown.zarr", 4200)  # its first 3,000 rows are day 1's

    def day2(name, max_iter):
        store = tmp_path / f"{name}.zarr"
        cfg = write_config(tmp_path, name, data={"path": str(grown)},
                           model={"kind": "gmm", "max_iter": max_iter, "tol": 1e-12,
                                  "init": {"from_run": str(first), "rows": "new"}},
                           run={"store": str(store)})
        result = run_cli("run", str(cfg))
        assert result.returncode == 0, result.stderr
        return store, result

    one, result = day2("one", 1)
    assert "holding fixed the statistics of the 3,000 rows" in result.stdout
    assert "rows 3,000 to 4,200 only" in result.stdout
    attrs = RunStore(str(one)).attrs
    assert attrs["fingerprint"]["rows"] == [3000, 4200]
    assert attrs["outputs"]["first_row"] == 3000

    # One iteration by hand: day 1's stored statistics (raw sums, from their shift) plus
    # the new rows' sums under day 1's model (scipy densities), then the M-step.
    m1 = read_model(RunStore(str(first))).arrays
    ((shift, stored),) = unpack_stats(m1["stats"])
    nk0, s1, packed = stored.nk, stored.s1, stored.s2
    iu, ju = np.triu_indices(4)
    s2 = np.zeros((3, 4, 4))
    s2[:, iu, ju] = packed
    s2[:, ju, iu] = packed
    sum_x = s1 + nk0[:, None] * shift
    sum_xx = (s2 + np.einsum("ki,j->kij", s1, shift) + np.einsum("i,kj->kij", shift, s1)
              + nk0[:, None, None] * np.outer(shift, shift))
    x = zarr.open_array(str(grown), path="X", mode="r")[...]
    new = x[3000:]
    logp = np.stack([np.log(m1["weights"][k])
                     + multivariate_normal(m1["means"][k], m1["covariances"][k]).logpdf(new)
                     for k in range(3)], axis=1)
    resp = np.exp(logp - logsumexp(logp, axis=1, keepdims=True))
    nk = nk0 + resp.sum(0)
    means = (sum_x + resp.T @ new) / nk[:, None]
    covs = ((sum_xx + np.einsum("nk,ni,nj->kij", resp, new, new)) / nk[:, None, None]
            - np.einsum("ki,kj->kij", means, means) + 1e-6 * np.eye(4))
    m2 = read_model(RunStore(str(one))).arrays
    np.testing.assert_allclose(m2["means"], means, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m2["covariances"], covs, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(m2["weights"], nk / nk.sum(), rtol=1e-9)
    prec = np.einsum("kij,klj->kil", m1["precisions_cholesky"], m1["precisions_cholesky"])
    # The outputs cover the new rows, in order.
    est, _ = load_estimator(RunStore(str(one)))
    labels = zarr.open_array(str(one), path="outputs/labels", mode="r")[...]
    np.testing.assert_array_equal(labels, est.predict(x[3000:]))

    # Run to convergence: close on all rows to a warm start that reads them all (day 1's
    # rows keep day 1's responsibilities: an approximation, 5e-4 per sample here), and
    # better than fitting the new rows alone.
    done, _ = day2("done", 200)
    est_new, _ = load_estimator(RunStore(str(done)))
    with dask.config.set(scheduler="synchronous"):
        every = GaussianMixture(3, weights_init=m1["weights"], means_init=m1["means"],
                                precisions_init=prec, max_iter=200, tol=1e-12).fit(x)
        alone = GaussianMixture(3, weights_init=m1["weights"], means_init=m1["means"],
                                precisions_init=prec, max_iter=200, tol=1e-12).fit(x[3000:])
    assert est_new.score(x) == pytest.approx(every.score(x), abs=1e-3)
    assert est_new.score(x) > alone.score(x)

    # Nothing new: a clear refusal, not an empty fit.
    cfg = write_config(tmp_path, "same", data={"path": str(small_store)},
                       model={"kind": "gmm", "init": {"from_run": str(first), "rows": "new"}},
                       run={"store": str(tmp_path / "same.zarr")})
    result = run_cli("run", str(cfg))
    assert result.returncode == 3, result.stderr
    assert "no rows were added" in error_line(result.stderr)


def test_warm_start_refuses_a_model_that_does_not_fit_the_data(tmp_path, small_store):
    first = tmp_path / "day1.zarr"
    cfg1 = write_config(tmp_path, "day1", data={"path": str(small_store)},
                        model={"kind": "gmm", "n_components": 3, "max_iter": 5},
                        run={"store": str(first)})
    assert run_cli("run", str(cfg1)).returncode == 0

    def attempt(name, data_path, **model):
        cfg = write_config(tmp_path, name, data={"path": str(data_path)},
                           model={"init": {"from_run": str(first)}, **model},
                           run={"store": str(tmp_path / f"run_{name}.zarr")})
        result = run_cli("run", str(cfg))
        assert len(result.stderr.splitlines()) == 1, result.stderr
        assert not (tmp_path / f"run_{name}.zarr").exists()  # refused before any work
        return result

    wide = _grown_store(tmp_path / "wide.zarr", 2000, n_features=5)
    result = attempt("wide", wide, kind="gmm")
    assert result.returncode == 3
    assert "fitted on 4 features" in result.stderr and "has 5" in result.stderr

    renamed = _grown_store(tmp_path / "renamed.zarr", 2000, names=["a", "b", "c", "d"])
    result = attempt("renamed", renamed, kind="gmm")
    assert result.returncode == 3 and "['a', 'b', 'c', 'd']" in result.stderr

    result = attempt("size", small_store, kind="gmm", n_components=4)
    assert result.returncode == 2 and "differs from the 3 components" in result.stderr
    result = attempt("kind", small_store, kind="kmeans")
    assert result.returncode == 2 and "holds a gmm model" in result.stderr
    result = attempt("missing", small_store, kind="gmm",
                     init={"from_run": str(tmp_path / "nowhere.zarr")})
    assert result.returncode == 2 and "no run store at" in result.stderr


# ------------------------------------------------------------------------ report


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        found = shutil.which(name)
        if found:
            return found
    return None


CHECK_IMAGES = """
<script>
window.addEventListener("load", () => {
  const images = Array.from(document.images);
  const ok = images.filter(i => i.complete && i.naturalWidth > 100 && i.naturalHeight > 100);
  document.body.setAttribute("data-images", ok.length + "/" + images.length);
});
</script>
"""


def render_in_browser(page) -> tuple[int, int]:
    """Open the page in headless Chromium; (images drawn, images on the page)."""
    browser = _browser()
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs Chromium for the report test (.ci/run installs it)")
        pytest.skip("no Chromium here (apt-get install chromium)")
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", CHECK_IMAGES + "</body>"))
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=10000",
         "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'data-images="(\d+)/(\d+)"', result.stdout)
    assert found, f"the page did not finish loading: {result.stderr[-2000:]}"
    return int(found.group(1)), int(found.group(2))


def test_report_of_a_selection_renders_with_all_its_figures(select_run, tmp_path):
    store, _ = select_run
    out = tmp_path / "report"
    result = run_cli("report", str(store), "--out", str(out))
    assert result.returncode == 0, result.stderr
    page = out / "report.html"
    text = page.read_text()
    for name in ("objective", "weights", "projection", "means", "selection"):
        assert (out / f"{name}.png").stat().st_size > 5000
        assert f"id='{name}'" in text
    assert text.count("data:image/png;base64,") == 5  # self-contained
    assert "src='http" not in text and "<link" not in text
    assert "class='chosen'" in text
    n_passes = len(read_history(RunStore(str(store)))["seconds"]) - 1
    assert f"{n_passes} EM passes" in text
    drawn, total = render_in_browser(page)
    assert (drawn, total) == (5, 5)


def test_report_without_its_data_still_shows_the_model(tmp_path):
    data = synthetic_store(tmp_path / "gone.zarr", 1500, 3, 2, chunk_rows=500, seed=1)
    store = tmp_path / "km.zarr"
    cfg = write_config(tmp_path, "km", data={"path": str(data)},
                       model={"kind": "kmeans", "n_components": 2, "n_init": 2},
                       run={"store": str(store)})
    assert run_cli("run", str(cfg)).returncode == 0
    shutil.rmtree(data)
    result = run_cli("report", str(store))
    assert result.returncode == 0, result.stderr
    page = tmp_path / "km-report" / "report.html"
    text = page.read_text()
    assert "No data sample: the data could not be read" in text
    assert text.count("data:image/png;base64,") == 4
    assert render_in_browser(page) == (4, 4)
    missing = run_cli("report", str(tmp_path / "nothing.zarr"))
    assert missing.returncode == 2 and "no run store at" in missing.stderr
