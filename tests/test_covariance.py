"""Covariance types as objects: each type against independent references, the two routes
to its M-step against each other, and a new type written as one class and fitted."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from daskem import GaussianMixture
from daskem.errors import ParameterError
from daskem.kernels.covariance import (
    COVARIANCE_TYPES,
    NAMES,
    QUAD_NORM,
    Spherical,
    covariance,
    n_parameters,
    register,
)
from daskem.kernels.estep import GaussianKernelParams, gaussian_chunk_stats, responsibilities

K, D = 3, 4


def random_covariances(name, rng):
    """Valid covariances of a type, with their dense (K, d, d) form built by hand."""
    if name in ("full", "tied"):
        a = rng.normal(size=(K, D, D))
        dense = a @ np.swapaxes(a, 1, 2) + D * np.eye(D)
        if name == "tied":
            return dense[0], np.stack([dense[0]] * K)
        return dense, dense
    if name == "diag":
        cov = rng.uniform(0.5, 3.0, size=(K, D))
        return cov, np.stack([np.diag(c) for c in cov])
    cov = rng.uniform(0.5, 3.0, size=K)
    return cov, np.stack([c * np.eye(D) for c in cov])


@pytest.mark.parametrize("name", NAMES)
def test_shapes_dense_and_precisions_against_numpy(name):
    kind = covariance(name)
    cov, dense = random_covariances(name, np.random.default_rng(0))
    assert cov.shape == kind.shape(K, D)
    np.testing.assert_allclose(kind.dense(cov, K, D), dense)
    chol = kind.precision_cholesky(cov)
    assert chol.shape == cov.shape
    prec = kind.precisions(chol)
    # scikit-learn's precisions_: the inverse, in the type's own shape
    inv = np.linalg.inv(dense)
    expected = {"full": inv, "tied": inv[0], "diag": np.diagonal(inv, axis1=1, axis2=2)}.get(
        name, inv[:, 0, 0])
    np.testing.assert_allclose(prec, expected, rtol=1e-10)
    np.testing.assert_allclose(kind.covariances_from_cholesky(chol), cov, rtol=1e-10)
    np.testing.assert_allclose(np.broadcast_to(kind.log_det(chol, D), (K,)),
                               -0.5 * np.linalg.slogdet(dense)[1], rtol=1e-12)
    if kind.updated:  # precisions_init → the same factor's precision
        np.testing.assert_allclose(kind.precisions(kind.cholesky_from_precisions(prec)), prec,
                                   rtol=1e-10)


@pytest.mark.parametrize("name", NAMES[:4])
def test_parameter_count_equals_scikit_learn(name):
    from sklearn.mixture import GaussianMixture as SkGMM

    x = np.random.default_rng(1).normal(size=(60, D))
    sk = SkGMM(K, covariance_type=name, max_iter=200, random_state=0).fit(x)
    assert n_parameters(name, K, D) == sk._n_parameters()


def test_fixed_counts_no_covariance_parameters():
    assert n_parameters("fixed", K, D) == K * D + K - 1


@pytest.mark.parametrize("name", [n for n in NAMES if covariance(n).updated])
def test_m_step_from_statistics_equals_from_rows(name):
    """The M-step's two routes: shifted statistics summed by the E-step kernel, and the
    weighted rows in memory (far from the origin, so the shift matters)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, D)) * [1, 2, 3, 0.5] + 1e3
    kind = covariance(name)
    cov, _ = random_covariances(name, rng)
    means = x[:K] + 0.1
    kp = GaussianKernelParams.build(np.full(K, 1 / K), means, kind.precision_cholesky(cov),
                                    name)
    w = rng.uniform(0.2, 2.0, size=300)
    stats = gaussian_chunk_stats(x, w, 0, kp)
    resp = responsibilities(x, kp)[0]
    rw = resp * w[:, None]
    nk = rw.sum(axis=0)
    new_means = rw.T @ x / nk[:, None]
    from_rows = kind.from_responsibilities(x, rw, nk, new_means, 1e-6, 1.0)
    delta = stats.s1 / stats.nk[:, None]
    np.testing.assert_allclose(kp.shift + delta, new_means, rtol=1e-12)
    from_stats = kind.covariances(stats.s2, stats.nk, delta, 1e-6, 1.0)
    np.testing.assert_allclose(from_stats, from_rows, rtol=1e-8)


def test_unknown_name_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="expected one of full, tied, diag, spherical, fixed"):
        covariance("ful")
    with pytest.raises(ParameterError, match="covariance_type must be one of"):
        GaussianMixture(2, covariance_type="ful").fit(np.zeros((10, 2)))


def test_no_module_but_the_registry_compares_covariance_type_names():
    package = Path(__file__).resolve().parents[1] / "daskem"
    names = "|".join(NAMES)
    compare = re.compile(rf"""(==|!=|\bin)\s*\(?\s*["']({names})["']|["']({names})["']\s*(==|!=)""")
    found = [f"{path.relative_to(package)}:{i}: {line.strip()}"
             for path in package.rglob("*.py") if path.name != "covariance.py"
             for i, line in enumerate(path.read_text().splitlines(), 1)
             if compare.search(line)]
    assert found == []


# ------------------------------------------------------------------ a new type


class TiedSpherical(Spherical):
    """One variance σ² shared by all components (σ²·I for each): one class, nothing else."""

    name = "tied_spherical"
    shared = True

    def shape(self, n_components, n_features):
        return ()

    def n_parameters(self, n_components, n_features):
        return 1

    def covariances(self, s2, nk, delta, reg_covar, fixed_variance):
        d = delta.shape[1]
        scatter = s2.sum() - nk @ (delta**2).sum(axis=1)
        return np.asarray(max(scatter, 0.0) / (nk.sum() * d) + reg_covar)

    def from_responsibilities(self, x, rw, nk, means, reg_covar, fixed_variance):
        sq = sum(rw[:, k] @ ((x - means[k]) ** 2).sum(axis=1) for k in range(len(nk)))
        return np.asarray(sq / (nk.sum() * x.shape[1]) + reg_covar)

    def blend(self, share, covariances, alive):
        return None

    def log_det(self, prec_chol, n_features):
        return np.full(1, n_features * np.log(prec_chol))

    def dense(self, covariances, n_components, n_features):
        return np.broadcast_to(float(covariances) * np.eye(n_features),
                               (n_components, n_features, n_features))


@pytest.fixture
def tied_spherical():
    kind = register(TiedSpherical())
    yield kind
    del COVARIANCE_TYPES[kind.name]


def naive_em(x, weights, means, var, n_iter):
    """EM for σ²·I shared by all components, written from the formulas, one loop."""
    n, d = x.shape
    for _ in range(n_iter):
        sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        logp = np.log(weights) - 0.5 * d * np.log(2 * np.pi * var) - 0.5 * sq / var
        top = logp.max(axis=1, keepdims=True)
        resp = np.exp(logp - top)
        resp /= resp.sum(axis=1, keepdims=True)
        nk = resp.sum(axis=0)
        weights = nk / n
        means = resp.T @ x / nk[:, None]
        sq = ((x[:, None, :] - means[None]) ** 2).sum(-1)
        var = (resp * sq).sum() / (n * d) + 1e-6
    return weights, means, var


def test_a_new_type_is_one_class_and_fits_like_its_formulas(tied_spherical):
    assert tied_spherical.quad == QUAD_NORM
    rng = np.random.default_rng(5)
    truth = rng.normal(scale=6.0, size=(3, 2))
    x = np.vstack([t + rng.normal(scale=1.5, size=(400, 2)) for t in truth])
    means0 = truth + 0.5
    gm = GaussianMixture(3, covariance_type="tied_spherical", max_iter=7, tol=0.0,
                         weights_init=np.full(3, 1 / 3), means_init=means0,
                         precisions_init=np.asarray(0.5), chunk_rows=250)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # not converged at tol=0: wanted, 7 iterations
        gm.fit(x)
    assert gm.n_iter_ == 7
    w, m, v = naive_em(x, np.full(3, 1 / 3), means0, 2.0, 7)
    np.testing.assert_allclose(gm.weights_, w, rtol=1e-10)
    np.testing.assert_allclose(gm.means_, m, rtol=1e-10)
    np.testing.assert_allclose(gm.covariances_, v, rtol=1e-10)
    assert abs(v - 1.5**2) < 0.2
    assert gm._n_parameters() == 1 + 3 * 2 + 2
    sample, labels = gm.sample(50)
    assert sample.shape == (50, 2)
