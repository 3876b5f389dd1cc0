"""EM with missing values (missing="marginalize") against a naive implementation written
here: per row and per component, with explicit sub-matrices Σ_oo, Σ_mo (Ghahramani & Jordan
1994). Same initial parameters, several iterations, every covariance type, several
chunkings; with no NaN, exactly today's fit."""

from __future__ import annotations

import warnings

import dask.array as da
import numpy as np
import pytest

from daskem import GaussianMixture
from daskem.errors import DataError, ParameterError
from daskem.kernels import estep
from daskem.kernels.covariance import NAMES, covariance
from daskem.kernels.estep import GaussianKernelParams, gaussian_chunk_stats_numpy
from daskem.kernels.marginal import marginal_stats

REG = 1e-6


def mixture_data(n=900, d=4, k=3, seed=0, frac=0.2, empty=3):
    rng = np.random.default_rng(seed)
    means = rng.normal(scale=3.0, size=(k, d))
    a = rng.normal(size=(k, d, d)) * 0.5
    covs = a @ np.swapaxes(a, 1, 2) + np.eye(d) * 0.5
    labels = rng.integers(0, k, n)
    x = np.stack([rng.multivariate_normal(means[j], covs[j]) for j in labels])
    full = x.copy()
    x[rng.uniform(size=x.shape) < frac] = np.nan
    x[:empty] = np.nan  # rows with nothing observed
    return x, full, means, covs


def naive_em(x, weights, means, covs, kind, n_iter, fixed_variance=1.0):
    """EM over the observed part of each row, written from the formulas, row by row."""
    n, d = x.shape
    k = len(weights)
    lls = []
    for _ in range(n_iter):
        resp = np.zeros((n, k))
        xhat = np.zeros((n, k, d))
        cond = np.zeros((n, k, d, d))
        total = 0.0
        used = 0
        for i in range(n):
            o = ~np.isnan(x[i])
            m = ~o
            if not o.any():
                continue
            used += 1
            logp = np.empty(k)
            for j in range(k):
                s_oo = covs[j][np.ix_(o, o)]
                diff = x[i, o] - means[j, o]
                sol = np.linalg.solve(s_oo, diff)
                _, logdet = np.linalg.slogdet(s_oo)
                logp[j] = (np.log(weights[j]) - 0.5 * (o.sum() * np.log(2 * np.pi) + logdet
                                                       + diff @ sol))
                xhat[i, j] = x[i]
                if m.any():
                    s_mo = covs[j][np.ix_(m, o)]
                    xhat[i, j, m] = means[j, m] + s_mo @ sol
                    cm = covs[j][np.ix_(m, m)] - s_mo @ np.linalg.solve(s_oo, s_mo.T)
                    cond[i, j][np.ix_(m, m)] = cm
            top = logp.max()
            lse = top + np.log(np.exp(logp - top).sum())
            total += lse
            resp[i] = np.exp(logp - lse)
        lls.append(total / used)
        nk = resp.sum(axis=0) + 10 * np.finfo(float).eps
        means = np.einsum("nk,nkd->kd", resp, xhat) / nk[:, None]
        scatter = np.zeros((k, d, d))
        for j in range(k):
            diff = xhat[:, j] - means[j]
            scatter[j] = (resp[:, j, None] * diff).T @ diff + np.einsum("n,nab->ab",
                                                                       resp[:, j], cond[:, j])
        weights = nk / nk.sum()
        if kind == "full":
            covs = scatter / nk[:, None, None] + REG * np.eye(d)
        elif kind == "tied":
            covs = np.broadcast_to(scatter.sum(0) / nk.sum() + REG * np.eye(d), (k, d, d))
        elif kind == "diag":
            covs = np.stack([np.diag(np.diag(s) / nj + REG)
                             for s, nj in zip(scatter, nk, strict=True)])
        elif kind == "spherical":
            covs = np.stack([np.eye(d) * (np.trace(s) / (nj * d) + REG)
                             for s, nj in zip(scatter, nk, strict=True)])
        else:
            covs = np.broadcast_to(np.eye(d) * fixed_variance, (k, d, d))
        covs = np.array(covs)
    return weights, means, covs, lls


def in_type(kind_name, covs):
    """Dense (K, d, d) covariances in a covariance type's own shape."""
    if kind_name == "full":
        return covs
    if kind_name == "tied":
        return covs[0]
    if kind_name == "diag":
        return np.diagonal(covs, axis1=1, axis2=2).copy()
    return np.diagonal(covs, axis1=1, axis2=2).mean(axis=1)


def start_params(x_full, means, covs, kind_name, k):
    weights = np.full(k, 1.0 / k)
    start = covs.copy()
    if kind_name in ("diag", "spherical", "fixed"):
        start = np.stack([np.eye(covs.shape[1]) * np.diag(c).mean() for c in covs])
        if kind_name == "diag":
            start = np.stack([np.diag(np.diag(c)) for c in covs])
    if kind_name == "tied":
        start = np.broadcast_to(covs.mean(axis=0), covs.shape).copy()
    if kind_name == "fixed":
        start = np.broadcast_to(np.eye(covs.shape[1]), covs.shape).copy()
    return weights, means + 0.3, start


def fit_marginal(x, kind_name, weights, means, covs, n_iter, **kwargs):
    kind = covariance(kind_name)
    init = dict(weights_init=weights, means_init=means)
    if kind.updated:
        init["precisions_init"] = in_type(kind_name, np.linalg.inv(covs))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return GaussianMixture(len(weights), covariance_type=kind_name, tol=0.0,
                               max_iter=n_iter, missing="marginalize", reg_covar=REG,
                               **init, **kwargs).fit(x)


def dense_covariances(gm):
    kind = covariance(gm.covariance_type)
    return kind.dense(gm.covariances_, gm.n_components, gm.n_features_in_)


@pytest.mark.parametrize("kind_name", NAMES)
@pytest.mark.parametrize("chunks", [None, 1000, 128, 37])
def test_matches_naive_em_from_the_same_start(kind_name, chunks):
    x, full, means, covs = mixture_data()
    k = len(means)
    weights, means0, covs0 = start_params(full, means, covs, kind_name, k)
    n_iter = 4
    w_ref, m_ref, c_ref, lls = naive_em(x, weights, means0, covs0, kind_name, n_iter)
    data = x if chunks is None else da.from_array(x, chunks=(chunks, -1))
    gm = fit_marginal(data, kind_name, weights, means0, covs0, n_iter)
    assert gm.n_iter_ == n_iter
    np.testing.assert_allclose(gm.weights_, w_ref, rtol=1e-8)
    np.testing.assert_allclose(gm.means_, m_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(dense_covariances(gm), c_ref, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(gm.lower_bounds_, lls, rtol=1e-10)
    # score: the mean log-likelihood of the observed parts at the fitted parameters.
    _, _, _, ll_after = naive_em(x, gm.weights_, gm.means_, dense_covariances(gm),
                                 kind_name, 1)
    np.testing.assert_allclose(gm.score(data), ll_after[0], rtol=1e-10)
    assert gm.n_empty_rows_ == 3


def test_every_covariance_type_on_a_two_worker_cluster():
    distributed = pytest.importorskip("distributed")
    x, full, means, covs = mixture_data(n=1200, seed=3)
    data = da.from_array(x, chunks=(100, -1))
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        for kind_name in ("full", "diag"):
            weights, means0, covs0 = start_params(full, means, covs, kind_name, 3)
            gm = fit_marginal(data, kind_name, weights, means0, covs0, 3)
            w_ref, m_ref, c_ref, _ = naive_em(x, weights, means0, covs0, kind_name, 3)
            np.testing.assert_allclose(gm.means_, m_ref, rtol=1e-8, atol=1e-10)
            np.testing.assert_allclose(dense_covariances(gm), c_ref, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("kind_name", NAMES)
def test_without_nan_marginalize_is_todays_fit(kind_name):
    _, full, _, _ = mixture_data(empty=0)
    kwargs = dict(covariance_type=kind_name, random_state=0, n_init=2)
    a = GaussianMixture(3, **kwargs).fit(full)
    b = GaussianMixture(3, missing="marginalize", **kwargs).fit(full)
    for name in ("weights_", "means_", "covariances_", "lower_bounds_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("kind_name", NAMES)
@pytest.mark.parametrize("hard", [False, True])
def test_compiled_marginal_kernel_matches_the_numpy_reference(kind_name, hard, monkeypatch):
    x, full, means, covs = mixture_data(n=700, d=5, seed=2, frac=0.3)
    kind = covariance(kind_name)
    weights, means0, covs0 = start_params(full, means, covs, kind_name, 3)
    prec_chol = kind.precision_cholesky(in_type(kind_name, covs0)) if kind.updated else \
        kind.precision_cholesky(np.ones(3))
    p = GaussianKernelParams.build(weights, means0, prec_chol, kind_name, hard=hard,
                                   marginalize=True, far_capacity=3)
    w = np.random.default_rng(0).uniform(0.5, 2.0, len(x))
    ref = gaussian_chunk_stats_numpy(x, w, 10, p)
    monkeypatch.setattr(estep, "KERNELS", "compiled")
    got = estep.gaussian_chunk_stats(x, w, 10, p)
    for name in ("nk", "s1", "s2"):
        if getattr(ref, name) is not None:
            np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-11)
    assert got.objective == pytest.approx(ref.objective, rel=1e-12)
    assert got.weight_sum == pytest.approx(ref.weight_sum, rel=1e-13)
    assert got.n_samples == ref.n_samples == len(x) - 3
    np.testing.assert_array_equal(got.far.index, ref.far.index)
    # far points are complete rows, named by their global index
    assert not np.isnan(x[got.far.index - 10]).any()
    # and the statistics of the rows with NaN alone agree with marginal_stats
    rows = np.isnan(x).any(axis=1) & ~np.isnan(x).all(axis=1)
    nk, *_ = marginal_stats(x[rows], w[rows], p.marginal, p.shift, kind.quad, kind.keeps_s2,
                            hard)
    assert nk.sum() == pytest.approx(w[rows].sum(), rel=1e-12)


def test_per_sample_results_use_the_observed_part():
    x, full, means, covs = mixture_data(n=600, seed=4)
    gm = fit_marginal(x, "full", np.full(3, 1 / 3), means, covs, 5)
    dense = dense_covariances(gm)
    scores = gm.score_samples(x)
    proba = gm.predict_proba(x)
    labels = gm.predict(x)
    assert np.isnan(scores[:3]).all() and np.isnan(proba[:3]).all()
    assert (labels[:3] == -1).all()
    for i in range(3, 60):
        o = ~np.isnan(x[i])
        if not o.any():  # a row emptied at random
            assert np.isnan(scores[i]) and labels[i] == -1
            continue
        logp = np.array([np.log(gm.weights_[j]) + _log_normal(x[i, o], gm.means_[j, o],
                                                              dense[j][np.ix_(o, o)])
                         for j in range(3)])
        lse = np.logaddexp.reduce(logp)
        assert scores[i] == pytest.approx(lse, rel=1e-10)
        np.testing.assert_allclose(proba[i], np.exp(logp - lse), rtol=1e-9, atol=1e-14)
        assert labels[i] == np.argmax(logp)
    # lazy for dask input, the same values
    lazy = gm.score_samples(da.from_array(x, chunks=(64, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), scores, rtol=1e-12)
    # bic and aic as usual, from the observed-part log-likelihood
    n_param = gm._n_parameters()
    total = np.nansum(scores)
    n_rows = int((~np.isnan(x).all(axis=1)).sum())  # rows with something observed
    assert gm.bic(x) == pytest.approx(-2 * total + n_param * np.log(n_rows), rel=1e-10)
    assert gm.aic(x) == pytest.approx(-2 * total + 2 * n_param, rel=1e-10)


def _log_normal(x, mean, cov):
    diff = x - mean
    _, logdet = np.linalg.slogdet(cov)
    return -0.5 * (len(x) * np.log(2 * np.pi) + logdet + diff @ np.linalg.solve(cov, diff))


def test_impute_is_the_conditional_expectation():
    x, full, means, covs = mixture_data(n=500, seed=5)
    gm = fit_marginal(x, "full", np.full(3, 1 / 3), means, covs, 5)
    dense = dense_covariances(gm)
    filled = gm.impute(x)
    observed = ~np.isnan(x)
    np.testing.assert_array_equal(filled[observed], x[observed])
    assert np.isnan(filled[np.isnan(x).all(axis=1)]).all()  # nothing observed: stays NaN
    for i in range(3, 80):
        o, m = observed[i], ~observed[i]
        if not m.any() or not o.any():
            continue
        logp = np.array([np.log(gm.weights_[j]) + _log_normal(x[i, o], gm.means_[j, o],
                                                              dense[j][np.ix_(o, o)])
                         for j in range(3)])
        r = np.exp(logp - np.logaddexp.reduce(logp))
        expect = sum(r[j] * (gm.means_[j, m] + dense[j][np.ix_(m, o)] @ np.linalg.solve(
            dense[j][np.ix_(o, o)], x[i, o] - gm.means_[j, o])) for j in range(3))
        np.testing.assert_allclose(filled[i, m], expect, rtol=1e-9)
    lazy = gm.impute(da.from_array(x, chunks=(77, -1)))
    assert isinstance(lazy, da.Array)
    np.testing.assert_allclose(lazy.compute(), filled, rtol=1e-12)


def test_recovery_and_imputation_on_a_known_mixture():
    """20% of values removed completely at random: the fit's parameters stay close to the
    complete-data fit's, and impute beats column means by a wide margin."""
    rng = np.random.default_rng(7)
    d, k = 6, 3
    means = rng.normal(scale=4.0, size=(k, d))
    a = rng.normal(size=(k, d, d))
    covs = a @ np.swapaxes(a, 1, 2) / d + np.eye(d) * 0.3
    labels = rng.integers(0, k, 20_000)
    full = np.concatenate([rng.multivariate_normal(means[j], covs[j], (labels == j).sum())
                           for j in range(k)])
    x = full.copy()
    removed = rng.uniform(size=x.shape) < 0.2
    x[removed] = np.nan
    complete = GaussianMixture(k, random_state=0, n_init=3).fit(full)
    gm = GaussianMixture(k, random_state=0, n_init=3, missing="marginalize").fit(x)
    order = [int(np.argmin(((complete.means_ - m) ** 2).sum(1))) for m in gm.means_]
    assert sorted(order) == list(range(k))
    # means within 0.05 pooled standard deviations, weights within 0.01, covariances
    # within 10% (Frobenius, relative) of the complete-data fit's
    sd = np.sqrt(np.mean(np.diagonal(covs, axis1=1, axis2=2)))
    assert np.abs(gm.means_ - complete.means_[order]).max() < 0.05 * sd
    assert np.abs(gm.weights_ - complete.weights_[order]).max() < 0.01
    rel = (np.linalg.norm(gm.covariances_ - complete.covariances_[order], axis=(1, 2))
           / np.linalg.norm(complete.covariances_[order], axis=(1, 2)))
    assert rel.max() < 0.10
    filled = gm.impute(x)
    assert not np.isnan(filled[~np.isnan(x).all(axis=1)]).any()
    removed &= ~np.isnan(x).all(axis=1)[:, None]  # rows with nothing observed stay NaN
    rmse = np.sqrt(np.mean((filled[removed] - full[removed]) ** 2))
    column = np.where(removed, np.nanmean(x, axis=0), x)
    rmse_mean = np.sqrt(np.mean((column[removed] - full[removed]) ** 2))
    assert rmse < 0.5 * rmse_mean, (rmse, rmse_mean)


def test_policies_and_refusals():
    x, full, _, _ = mixture_data(n=300)
    with pytest.raises(DataError, match=r"non-finite.*missing='marginalize'"):
        GaussianMixture(2).fit(x)
    with pytest.raises(ParameterError, match="missing must be one of"):
        GaussianMixture(2, missing="drop").fit(x)
    with pytest.raises(ParameterError, match="k-means\\|\\|"):
        GaussianMixture(2, missing="marginalize", init_params="k-means||").fit(x)
    y = x.copy()
    y[:, 2] = np.nan
    with pytest.raises(DataError, match="no observed value in feature.*2"):
        GaussianMixture(2, missing="marginalize").fit(y)
    y = x.copy()
    y[5, 1] = np.inf
    with pytest.raises(DataError, match="1 infinite value.*row 5"):
        GaussianMixture(2, missing="marginalize").fit(y)
    with pytest.raises(DataError, match="every row"):
        GaussianMixture(2, missing="marginalize").fit(np.full((10, 3), np.nan))
    # a model fitted without missing values still imputes
    gm = GaussianMixture(2, random_state=0).fit(full)
    empty = np.isnan(x).all(axis=1)
    np.testing.assert_array_equal(np.isnan(gm.impute(x)), empty[:, None] & np.ones_like(x,
                                                                                      bool))


def naive_partial_lloyd(x, centers, n_iter):
    """Lloyd's algorithm with the partial distance strategy, row by row."""
    n, d = x.shape
    for _ in range(n_iter):
        labels = np.full(n, -1)
        for i in range(n):
            o = ~np.isnan(x[i])
            if o.any():
                dist = ((x[i, o] - centers[:, o]) ** 2).sum(axis=1) * d / o.sum()
                labels[i] = int(np.argmin(dist))
        new = centers.copy()
        for j in range(len(centers)):
            rows = x[labels == j]
            for f in range(d):
                seen = rows[~np.isnan(rows[:, f]), f]
                if seen.size:
                    new[j, f] = seen.mean()
        centers = new
    inertia = 0.0
    for i in range(n):
        o = ~np.isnan(x[i])
        if o.any():
            inertia += (((x[i, o] - centers[:, o]) ** 2).sum(axis=1) * d / o.sum()).min()
    return centers, inertia


@pytest.mark.parametrize("chunks", [None, 97])
@pytest.mark.parametrize("update", ["batch", "incremental"])
def test_kmeans_partial_distances_match_naive_lloyd(chunks, update):
    from daskem import KMeans

    x, full, means, _ = mixture_data(n=800, seed=8)
    start = full[[10, 20, 30]]
    ref_centers, ref_inertia = naive_partial_lloyd(x, start, 3)
    data = x if chunks is None else da.from_array(x, chunks=(chunks, -1))
    if update == "incremental":
        # An M-step after every block: compare to batch on a fixed point instead.
        km = KMeans(3, init=start, max_iter=100, tol=0.0, missing="marginalize",
                    update="incremental", n_blocks=2, chunk_rows=97).fit(data)
        batch = KMeans(3, init=start, max_iter=100, tol=0.0, missing="marginalize").fit(x)
        np.testing.assert_allclose(km.cluster_centers_, batch.cluster_centers_, rtol=1e-8)
        return
    km = KMeans(3, init=start, max_iter=3, tol=0.0, missing="marginalize").fit(data)
    np.testing.assert_allclose(km.cluster_centers_, ref_centers, rtol=1e-10)
    assert km.inertia_ == pytest.approx(ref_inertia, rel=1e-10)
    assert km.score(x) == pytest.approx(-ref_inertia, rel=1e-10)
    labels = np.asarray(km.labels_)
    assert (labels[:3] == -1).all() and km.n_empty_rows_ >= 3
    dist = km.transform(x)
    assert np.isnan(dist[:3]).all()
    empty = np.isnan(x).all(axis=1)
    assert (labels[empty] == -1).all() and km.n_empty_rows_ == empty.sum()
    np.testing.assert_array_equal(labels[~empty], np.argmin(dist[~empty], axis=1))
    o = ~np.isnan(x[5])
    expect = np.sqrt(((x[5, o] - km.cluster_centers_[:, o]) ** 2).sum(axis=1) * 4 / o.sum())
    np.testing.assert_allclose(dist[5], expect, rtol=1e-10)


def test_kmeans_without_nan_marginalize_is_todays_fit():
    from daskem import KMeans

    _, full, _, _ = mixture_data(empty=0)
    a = KMeans(3, random_state=0, n_init=3).fit(full)
    b = KMeans(3, random_state=0, n_init=3, missing="marginalize").fit(full)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    assert (a.inertia_, a.n_iter_) == (b.inertia_, b.n_iter_)
    with pytest.raises(ParameterError, match="partial_fit"):
        b.partial_fit(full)


def test_job_marginalizes_an_xarray_grid_and_writes_the_imputed_features(tmp_path):
    """`daskem run` with data.missing: marginalize and output.imputed on a grid whose
    features miss values of their own (and whole cells on the land mask)."""
    import xarray as xr
    from conftest import feature_store_module, run_cli, write_config

    import daskem

    mfs = feature_store_module()
    grid = tmp_path / "grid.zarr"
    mfs.write_xarray(str(grid), (6, 10, 12), 3, 3, seed=2, gaps=0.15)
    store = tmp_path / "gmm.zarr"
    data = {"path": str(grid), "features": ["f0", "f1", "f2"], "missing": "marginalize",
            "sample_dims": ["time", "lat", "lon"], "chunk_rows": 200}
    cfg = write_config(tmp_path, "gmm", data=data, output={"imputed": True},
                       model={"kind": "gmm", "n_components": 3, "tol": 1e-6},
                       run={"store": str(store)})
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    source = xr.open_zarr(str(grid), consolidated=False)
    rows = np.stack([source[f].values for f in ("f0", "f1", "f2")], axis=-1).reshape(-1, 3)
    empty = np.isnan(rows).all(axis=1)
    n_missing = int(np.isnan(rows).sum())
    assert f"missing values: {n_missing:,} of {rows.size:,}" in result.stdout
    assert f"{empty.sum():,} row(s) with nothing observed left out" in result.stdout
    # The same fit in this process, from the same settings.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = GaussianMixture(3, tol=1e-6, random_state=0, missing="marginalize",
                              chunk_rows=200).fit(da.from_array(rows, chunks=(200, 3)))
    model = daskem.load(str(store))
    np.testing.assert_allclose(model.means_, ref.means_, rtol=1e-9)
    assert ref.n_empty_rows_ == empty.sum()
    out = xr.open_zarr(str(store), group="outputs")
    assert out.imputed.dims == ("time", "lat", "lon", "feature")
    assert list(out.feature.values) == ["f0", "f1", "f2"]
    imputed = out.imputed.values.reshape(-1, 3)
    observed = ~np.isnan(rows)
    np.testing.assert_array_equal(imputed[observed], rows[observed])
    np.testing.assert_allclose(imputed[~empty], ref.impute(rows)[~empty], rtol=1e-9)
    assert np.isnan(imputed[empty]).all()
    labels = out.labels.values.reshape(-1)
    assert (labels[empty] == -1).all() and (labels[~empty] >= 0).all()
    np.testing.assert_array_equal(labels[~empty], ref.predict(rows[~empty]))
    shown = run_cli("inspect", str(store)).stdout
    assert f"missing values: {n_missing:,} marginalized; {empty.sum():,} row(s)" in shown


def test_job_imputes_in_the_data_units_when_standardized(tmp_path):
    import zarr
    from conftest import run_cli, write_config

    x, _, _, _ = mixture_data(n=1200, seed=9, empty=2)
    x = x * np.array([1.0, 100.0, 0.01, 5.0]) + 50.0
    path = tmp_path / "x.zarr"
    zarr.open_group(str(path), mode="w").create_array("X", data=x, chunks=(300, 4))
    store = tmp_path / "run.zarr"
    cfg = write_config(tmp_path, "std", data={"path": str(path), "missing": "marginalize",
                                              "standardize": True},
                       model={"kind": "gmm", "n_components": 3}, output={"imputed": True},
                       run={"store": str(store)})
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    outputs = zarr.open_group(str(store), path="outputs", mode="r")
    imputed = outputs["imputed"][:]
    observed = ~np.isnan(x)
    np.testing.assert_array_equal(imputed[observed], x[observed])  # exactly unchanged
    empty = ~observed.any(axis=1)
    assert np.isnan(imputed[empty]).all() and not np.isnan(imputed[~empty]).any()
    # in the data's units: each feature's imputed values lie within its observed range
    for j in range(4):
        filled = imputed[~observed[:, j] & ~empty, j]
        lo, hi = np.nanmin(x[:, j]), np.nanmax(x[:, j])
        assert ((filled > lo) & (filled < hi)).all()
    assert list(outputs["imputed"].metadata.dimension_names) == ["sample", "feature"]


def test_model_selection_with_missing_values():
    from daskem.estimators.selection import select_mixture

    x, _, _, _ = mixture_data(n=900, seed=11)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sel = select_mixture(x, [2, 3], ["full", "diag"], missing="marginalize",
                             random_state=0)
    best = sel.best_estimator_
    assert best.missing == "marginalize" and best.n_empty_rows_ == np.isnan(x).all(1).sum()
    table = sel.table()
    chosen = min(table, key=lambda row: row["bic"])
    assert (chosen["n_components"], chosen["covariance_type"]) == (
        best.n_components, best.covariance_type)
    assert chosen["bic"] == pytest.approx(best.bic(x), rel=1e-9)


def test_kmeans_job_with_missing_values(tmp_path):
    import zarr
    from conftest import run_cli, write_config

    from daskem import KMeans

    x, _, _, _ = mixture_data(n=1500, seed=12, empty=4)
    path = tmp_path / "x.zarr"
    zarr.open_group(str(path), mode="w").create_array("X", data=x, chunks=(250, 4))
    store = tmp_path / "km.zarr"
    cfg = write_config(tmp_path, "km", data={"path": str(path), "missing": "marginalize"},
                       model={"kind": "kmeans", "n_components": 3, "n_init": 2},
                       run={"store": str(store)})
    result = run_cli("run", str(cfg))
    assert result.returncode == 0, result.stderr
    ref = KMeans(3, n_init=2, random_state=0, missing="marginalize").fit(
        da.from_array(x, chunks=(250, 4)))
    labels = zarr.open_group(str(store), path="outputs", mode="r")["labels"][:]
    np.testing.assert_array_equal(labels, np.asarray(ref.labels_))
    assert (labels[np.isnan(x).all(axis=1)] == -1).all()


def test_edges_of_the_empty_row_policy():
    from daskem.io.outputs import _masked

    x, full, means, covs = mixture_data(n=400, seed=13)
    gm = fit_marginal(x, "full", np.full(3, 1 / 3), means, covs, 3)
    # a partial_fit batch with nothing observed: a clear error, not a division by zero
    with pytest.raises(DataError, match="no row with an observed value"):
        gm.partial_fit(np.full((5, 4), np.nan))
    # every row with an observed value weighs nothing: refused as weights summing to zero
    y = x[:20].copy()
    y[:10] = np.nan
    with pytest.raises(DataError, match="sums to zero"):
        GaussianMixture(2, missing="marginalize").fit(
            y, sample_weight=np.r_[np.ones(10), np.zeros(10)])
    # the imputed output of a row holding an infinity (missing: drop keeps it there) is NaN
    z = x[3:8].copy()
    z[0, 1] = np.inf
    out = _masked(z, gm, "imputed")
    assert np.isnan(out[0]).all() and not np.isnan(out[1:][~np.isnan(z[1:]).all(1)]).any()
    assert out.dtype == np.float64
