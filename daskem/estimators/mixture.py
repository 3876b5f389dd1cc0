"""Gaussian mixture models fitted by EM on data of any size."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import DensityMixin

from daskem.engine.data import as_chunked
from daskem.engine.em import EMState, GaussianFamily, best_index, evaluate, fit_states
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, in_span
from daskem.engine.seeding import MixtureStart, choose_on_sample, initial_mixtures
from daskem.engine.stepwise import Running, mixture_step
from daskem.errors import ClusterPolicyWarning, ConvergenceWarning, DataError, ParameterError
from daskem.estimators.base import (
    DEFAULT_BLOCKS,
    UPDATES,
    DaskemEstimator,
    batch_rows,
    blocks_of,
    check_array_shape,
    check_choice,
    check_float,
    check_input,
    check_int,
    master_rng,
    per_sample,
    restart_records,
    start_fit,
    with_fixed,
)
from daskem.kernels.covariance import COVARIANCE_TYPES, covariance, n_parameters
from daskem.kernels.estep import (
    GaussianKernelParams,
    gaussian_log_prob,
    gaussian_loglik_chunk,
    responsibilities,
)
from daskem.kernels.marginal import conditional_mean
from daskem.kernels.mstep import GaussianParams
from daskem.kernels.random import spawn_seeds

INIT_PARAMS = ("kmeans", "k-means||", "k-means++", "random", "random_from_data")
ASSIGNMENTS = ("soft", "hard")


def _kernel_params(params: GaussianParams, marginalize: bool = False) -> GaussianKernelParams:
    return GaussianKernelParams.build(params.weights, params.means, params.precisions_cholesky,
                                      params.covariance_type, marginalize=marginalize)


def _predict(x, params, marginalize=False):
    log_prob = gaussian_log_prob(x, _kernel_params(params, marginalize))
    labels = np.argmax(log_prob, axis=1)
    if marginalize:
        labels[np.isnan(log_prob[:, 0])] = -1  # nothing observed
    return labels


def _predict_proba(x, params, marginalize=False):
    return responsibilities(x, _kernel_params(params, marginalize))[0]


def _score_samples(x, params, marginalize=False):
    return responsibilities(x, _kernel_params(params, marginalize))[1]


def _impute(x, params):
    return conditional_mean(x, _kernel_params(params, True).marginal)


class GaussianMixture(DensityMixin, DaskemEstimator):
    """Gaussian mixture fitted by expectation–maximisation, on NumPy, Dask or xarray data.

    Parameters follow scikit-learn's ``GaussianMixture``; what daskem adds:

    covariance_type : {"full", "tied", "diag", "spherical", "fixed"}, default "full"
        ``"fixed"`` is EM with every covariance held at ``fixed_variance``·I ("soft
        k-means"): only the means and weights are updated.
    fixed_variance : float, default 1.0
        σ² of the ``"fixed"`` covariance type.
    assignment : {"soft", "hard"}, default "soft"
        ``"hard"`` is classification EM: the E-step gives every row wholly to its most
        probable component, and ``lower_bound_`` is the classification log-likelihood.
    init_params : {"kmeans", "k-means||", "k-means++", "random", "random_from_data"}, \
default "kmeans"
        Every init but ``"k-means||"`` works on the uniform sample of rows drawn by the
        first pass, in memory: ``"kmeans"`` runs k-means there (k-means++, then Lloyd),
        ``"k-means++"`` and ``"random_from_data"`` pick means from it, and each takes the
        weights and covariances of the sample's hard clusters around those means;
        ``"random"`` draws random responsibilities for it. Then every restart runs EM on
        the sample, and only the best (highest sample log-likelihood) goes on to the passes
        over the data; the others are recorded in ``restarts_``. ``"k-means||"`` seeds
        over the whole data (k-means|| and Lloyd in passes, then the hard clusters of all
        rows) and runs every restart to the end, as scikit-learn does.
    sample_size, split_every, chunk_rows, update, n_blocks
        As for :class:`daskem.KMeans` (``update="incremental"``: incremental EM, an
        M-step after every block of chunks).

    As in scikit-learn: ``max_iter=0`` keeps the initial parameters (``n_iter_`` 0,
    ``lower_bound_`` −inf, no warning); ``warm_start=True`` makes a second ``fit`` one run
    (``n_init`` ignored) from the fitted parameters; ``verbose`` prints the best lower
    bound every ``verbose_interval`` passes. Fitted arrays are float32 for float32 data.

    missing : {"error", "marginalize"}, default "error"
        ``"error"``: a NaN is refused, naming its row. ``"marginalize"``: a NaN is a missing
        value, treated as latent (Ghahramani & Jordan 1994): the E-step uses the density of
        each row's observed features, the M-step the conditional expectations of the
        missing ones and their conditional covariances, for every covariance type (see
        :mod:`daskem.kernels.marginal`). ``lower_bound_``, ``score``, ``score_samples``,
        ``predict`` and ``predict_proba`` use the observed part of each row, and ``impute``
        fills the holes. A row with no observed value carries no information: it is left
        out of the fit and of ``score`` (counted in ``n_empty_rows_``; the missing values
        in ``n_missing_values_``), its ``predict`` is −1, its ``predict_proba`` and
        ``score_samples`` NaN. Re-seeding candidates are complete rows;
        ``init_params="k-means||"`` is not available.

    A component whose total responsibility falls below one average sample's weight has
    collapsed: it is re-seeded at the row the model explains worst, with the average
    covariance of the others (recorded in ``reseeds_``, reported with a
    :class:`~daskem.errors.ClusterPolicyWarning`).

    ``tol`` applies to the change of the mean per-sample log-likelihood between
    iterations, as in scikit-learn. For a Dask input, every per-sample result
    (``predict``, ``predict_proba``, ``score_samples``) is a lazy Dask array.
    """

    def __init__(self, n_components=1, *, covariance_type="full", tol=1e-3, reg_covar=1e-6,
                 max_iter=100, n_init=1, init_params="kmeans", weights_init=None,
                 means_init=None, precisions_init=None, random_state=None,
                 assignment="soft", fixed_variance=1.0, sample_size=None,
                 split_every=DEFAULT_SPLIT_EVERY, chunk_rows=None, warm_start=False,
                 verbose=0, verbose_interval=10, update="batch", n_blocks=DEFAULT_BLOCKS,
                 missing="error"):
        self.n_components = n_components
        self.covariance_type = covariance_type
        self.tol = tol
        self.reg_covar = reg_covar
        self.max_iter = max_iter
        self.n_init = n_init
        self.init_params = init_params
        self.weights_init = weights_init
        self.means_init = means_init
        self.precisions_init = precisions_init
        self.random_state = random_state
        self.assignment = assignment
        self.fixed_variance = fixed_variance
        self.sample_size = sample_size
        self.split_every = split_every
        self.chunk_rows = chunk_rows
        self.update = update
        self.n_blocks = n_blocks
        self.warm_start = warm_start
        self.verbose = verbose
        self.verbose_interval = verbose_interval
        self.missing = missing

    # ------------------------------------------------------------------ checks

    def _check_params(self) -> None:
        check_int("n_components", self.n_components, 1)
        check_choice("covariance_type", self.covariance_type, COVARIANCE_TYPES)
        check_float("tol", self.tol, 0.0)
        check_float("reg_covar", self.reg_covar, 0.0)
        check_int("max_iter", self.max_iter, 0)
        check_int("n_init", self.n_init, 1)
        check_int("verbose_interval", self.verbose_interval, 1)
        check_int("split_every", self.split_every, 2)
        check_choice("init_params", self.init_params, INIT_PARAMS)
        check_choice("assignment", self.assignment, ASSIGNMENTS)
        check_float("fixed_variance", self.fixed_variance, 0.0, strict=True)
        check_choice("update", self.update, UPDATES)
        check_int("n_blocks", self.n_blocks, 1)
        self._check_missing("init_params", self.init_params, "kmeans")

    def _user_init(self, n_features: int) -> dict:
        k, ctype = self.n_components, self.covariance_type
        out = {}
        if self.weights_init is not None:
            w = check_array_shape("weights_init", self.weights_init, (k,))
            if np.any(w < 0) or not np.isclose(w.sum(), 1.0, rtol=0, atol=1e-6):
                raise ParameterError("The parameter 'weights_init' should be non-negative and "
                                     f"sum to 1; got sum {w.sum():.6g}")
            out["weights"] = w
        if self.means_init is not None:
            out["means"] = check_array_shape("means_init", self.means_init, (k, n_features))
        if self.precisions_init is not None:
            kind = covariance(ctype)
            if not kind.updated:
                raise ParameterError(f"precisions_init does not apply to covariance_type="
                                     f"{ctype!r}; set fixed_variance instead")
            shape = kind.shape(k, n_features)
            prec = check_array_shape("precisions_init", self.precisions_init, shape)
            try:
                out["prec_chol"] = kind.cholesky_from_precisions(prec)
            except ValueError as e:
                raise ParameterError(f"'precisions_init' of covariance_type={ctype!r} {e}"
                                     ) from None
        return out

    # ------------------------------------------------------------------ fit

    @in_span("daskem GaussianMixture.fit")
    def fit(self, X, y=None, sample_weight=None, *, checkpoint=None, callback=None):
        """Estimate the parameters by EM (the best of ``n_init`` restarts; see ``init_params``).

        ``checkpoint`` (a :class:`~daskem.engine.em.Checkpointer`, such as a run store)
        makes the fit resumable; ``callback(n_pass, states)`` is called after every pass.
        """
        self._check_params()
        # warm_start: one run from the fitted parameters, as in scikit-learn.
        warm = bool(self.warm_start) and hasattr(self, "converged_")
        X = check_input(self, X, reset=not warm)
        n_init = 1 if warm else self.n_init
        self._running = None  # a stream of partial_fit calls starts again from this fit
        rng = master_rng(self.random_state)
        data, summary = start_fit(X, sample_weight, n_components=self.n_components,
                                  what="n_components", chunk_rows=self.chunk_rows,
                                  sample_size=self.sample_size, rng=rng,
                                  split_every=self.split_every, missing=self.missing)
        self.n_empty_rows_, self.n_missing_values_ = summary.n_empty, summary.n_missing
        user = self._user_init(data.n_features)
        self.passes_ = data.passes  # counted live during the fit (progress reads it)

        def initial():
            if warm:
                return [EMState(self._params)]
            seeds = spawn_seeds(rng, n_init)
            if len(user) == (3 if covariance(self.covariance_type).updated else 2):
                return [EMState(self._from_user(user, None))] * len(seeds)
            computed = initial_mixtures(data, summary, self._starts(seeds),
                                        split_every=self.split_every)
            states = [EMState(self._from_user(user, p)) for p in computed]
            if user or self.init_params == "k-means||":
                return states  # every restart runs over the data, as given
            return choose_on_sample(summary, [self._family()] * len(states), states,
                                    [0] * len(states), maximise=True)

        states = fit_states(data, [with_fixed(self, self._family())] * n_init, initial,
                            max_iter=self.max_iter,
                            split_every=self.split_every, checkpoint=checkpoint,
                            n_blocks=blocks_of(self.update, self.n_blocks),
                            callback=callback or (self._report if self.verbose else None))
        # scikit-learn keeps the first restart with the highest final lower bound; with
        # max_iter=0, the initial parameters (lower_bound_ is then -inf).
        best = (best_index(states, maximise=True) if self.max_iter else
                next(i for i, s in enumerate(states) if not s.dropped))
        self._set_state(states[best], data.n_features, data.dtype)
        self.restarts_ = restart_records(states)
        self._set_passes(data.passes)
        if not self.converged_ and self.max_iter:
            warnings.warn("Best performing initialization did not converge. Try different "
                          "init parameters, or increase max_iter, tol, or check for "
                          "degenerate data.", ConvergenceWarning, stacklevel=3)
        if self.reseeds_:
            warnings.warn(f"{len(self.reseeds_)} collapsed component(s) were re-seeded during "
                          "the fit (see reseeds_)", ClusterPolicyWarning, stacklevel=3)
        distinct = len(np.unique(self.means_, axis=0))
        if distinct < self.n_components:
            warnings.warn(f"Number of distinct components ({distinct}) found smaller than "
                          f"n_components ({self.n_components}). Possibly due to duplicate "
                          "points in X.", ConvergenceWarning, stacklevel=3)
        return self

    def _starts(self, seeds) -> list[MixtureStart]:
        return [MixtureStart(self.n_components, self.covariance_type, self.init_params,
                             int(seed), self.reg_covar, self.fixed_variance) for seed in seeds]

    def _family(self) -> GaussianFamily:
        return GaussianFamily(self.covariance_type, self.reg_covar, self.tol,
                              hard=self.assignment == "hard",
                              fixed_variance=self.fixed_variance,
                              marginalize=self._marginalize)

    def _from_user(self, user: dict, computed: GaussianParams | None) -> GaussianParams:
        ctype = self.covariance_type
        kind = covariance(ctype)
        weights = user.get("weights", computed.weights if computed else None)
        means = user.get("means", computed.means if computed else None)
        if not kind.updated:
            cov = kind.held(self.n_components, self.fixed_variance)
            prec_chol = kind.precision_cholesky(cov)
        elif "prec_chol" in user:
            prec_chol = user["prec_chol"]
            cov = kind.covariances_from_cholesky(prec_chol)
        else:
            cov, prec_chol = computed.covariances, computed.precisions_cholesky
        return GaussianParams(ctype, np.asarray(weights), np.asarray(means), cov, prec_chol)

    def _set_state(self, state: EMState, n_features: int, dtype=np.float64) -> None:
        """The fitted attributes; arrays in the data's ``dtype`` (float32 data give
        float32 parameters, as in scikit-learn; the fit itself runs in float64)."""
        p: GaussianParams = state.params
        precisions = covariance(self.covariance_type).precisions(p.precisions_cholesky)
        self.weights_, self.means_, self.covariances_, self.precisions_cholesky_, \
            self.precisions_ = (np.asarray(a, dtype=dtype) for a in (
                p.weights, p.means, p.covariances, p.precisions_cholesky, precisions))
        self.converged_ = state.converged
        self.n_iter_ = state.n_iter
        self.lower_bound_ = state.objectives[-1] if state.objectives else -np.inf
        self.lower_bounds_ = list(state.objectives)
        self.reseeds_ = list(state.events)
        self._fit_stats = state.last
        self.n_features_in_ = n_features

    def _report(self, n_pass: int, states) -> None:
        if n_pass % self.verbose_interval and n_pass > 1:
            return
        best = max(s.objectives[-1] for s in states if s.objectives)
        print(f"[daskem GaussianMixture] pass {n_pass}: best lower bound {best:.10g}",
              flush=True)

    @property
    def _params(self) -> GaussianParams:
        self._check_fitted("means_")
        return GaussianParams(self.covariance_type, *(
            np.asarray(a, dtype=np.float64) for a in (
                self.weights_, self.means_, self.covariances_, self.precisions_cholesky_)))

    # ------------------------------------------------------------------ per sample

    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the model with one batch of rows by stepwise EM (one pass over the batch).

        The first call on an unfitted model fits that batch (``fit``); a call on a model
        fitted by ``fit`` (or loaded from a run store) continues from it, its running
        statistics starting as those of the fit's last M-step. Each later batch's
        statistics, under the current parameters and per unit of weight, are mixed into
        the running ones with weight η_t = (t + 2)^−0.6 (t = 0, 1, ... for the batches
        after the fit; :mod:`daskem.engine.stepwise`), and the M-step runs on the mix:
        recent batches count more, and on a stationary stream the model settles on the
        batch fit's optimum. After a call: ``n_steps_`` (batches, the fitted one
        included), ``lower_bound_`` (the batch's mean log-likelihood before its step,
        also appended to ``lower_bounds_``), ``passes_`` (of the batch); ``n_iter_`` and
        ``converged_`` stay those of the fit that began the stream.
        """
        if not hasattr(self, "means_"):
            self.fit(X, sample_weight=sample_weight)
            self.n_steps_ = 1
            return self
        self._check_params()
        X = check_input(self, X, reset=False)
        data = batch_rows(self, X, sample_weight, self.n_features_in_)
        family = self._family()
        kparams = family.kernel_params(self._params, data.dtype)
        (stats,) = evaluate(data, [family.kernel], [kparams], label="partial",
                            split_every=self.split_every)
        if not stats.weight_sum > 0:
            raise DataError("the batch has no row with an observed value and a positive "
                            "weight: nothing to update the model with")
        lower_bound = family.objective(stats, self.n_iter_)
        running = getattr(self, "_running", None)
        if running is None:
            fitted = getattr(self, "_fit_stats", ()) or (family.stats_shift(kparams), stats)
            running = Running.start(*fitted)
        self._running, params, events = mixture_step(family, running, stats, kparams)
        self.n_steps_ = self._running.n_steps
        state = EMState(params, self.n_iter_, self.converged_,
                        tuple(self.lower_bounds_) + (lower_bound,),
                        tuple(self.reseeds_) + tuple((self.n_iter_, e) for e in events),
                        last=getattr(self, "_fit_stats", ()))
        self._set_state(state, self.n_features_in_, data.dtype)
        self._set_passes(data.passes)
        if events:
            warnings.warn(f"{len(events)} collapsed component(s) were re-seeded by this "
                          "batch (see reseeds_)", ClusterPolicyWarning, stacklevel=2)
        return self

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).predict(X)

    def predict(self, X):
        """Most probable component of every row (lazy for a Dask input)."""
        return self._per_sample(X, _predict, dtype=np.int64)

    def predict_proba(self, X):
        """Responsibilities, shape (n_samples, n_components)."""
        return self._per_sample(X, _predict_proba, dtype=np.float64,
                                n_columns=self.n_components)

    def score_samples(self, X):
        """log p(x) of every row under the mixture (of its observed part, with
        ``missing="marginalize"``)."""
        return self._per_sample(X, _score_samples, dtype=np.float64)

    def impute(self, X):
        """``X`` with every NaN replaced by its conditional expectation under the fitted
        mixture, Σ_k r_k(x_o) E_k[x_m | x_o] (observed values unchanged; a row with nothing
        observed has nothing to condition on and stays NaN: its expectation would be the
        mixture's mean, ``weights_ @ means_``). Lazy for a Dask input. Any ``missing`` setting:
        the model need not have been fitted with missing values."""
        self._check_fitted("means_")
        return per_sample(check_input(self, X, reset=False), self.n_features_in_, _impute,
                          self._params, dtype=np.float64, n_columns="same", allow_nan=True)

    def _per_sample(self, X, func, **kwargs):
        return per_sample(self._checked(X), self.n_features_in_, func, self._params,
                          self._marginalize, allow_nan=self._marginalize, **kwargs)

    def _checked(self, X):
        """``X`` checked against the fitted model (which must exist)."""
        self._check_fitted("means_")
        return check_input(self, X, reset=False)

    def _n_features(self) -> int:
        self._check_fitted("means_")
        return self.n_features_in_

    # ------------------------------------------------------------------ reductions

    def _log_likelihood(self, X, sample_weight=None):
        """(Σ w log p(x), Σ w, n_samples) in one pass."""
        data = as_chunked(self._checked(X), sample_weight, chunk_rows=self.chunk_rows)
        if data.n_features != self._n_features():
            raise DataError(f"X has {data.n_features} features, but the model was fitted "
                            f"with {self.n_features_in_} features")
        p = self._params
        (ll,) = evaluate(data, [gaussian_loglik_chunk], [_kernel_params(p, self._marginalize)],
                         label="score", split_every=self.split_every)
        return ll.total, ll.weight_sum, data.n_samples

    def score(self, X, y=None, sample_weight=None) -> float:
        """Mean per-sample log-likelihood of ``X`` (one pass)."""
        total, weight, _ = self._log_likelihood(X, sample_weight)
        return total / weight

    def _n_parameters(self) -> int:
        return n_parameters(self.covariance_type, self.n_components, self._n_features())

    def bic(self, X) -> float:
        """Bayesian information criterion of ``X`` (lower is better); n counts the rows
        with an observed value (all rows but for ``missing="marginalize"``)."""
        total, n, _ = self._log_likelihood(X)
        return -2.0 * total + self._n_parameters() * np.log(n)

    def aic(self, X) -> float:
        """Akaike information criterion of ``X`` (lower is better)."""
        total, _, _ = self._log_likelihood(X)
        return -2.0 * total + 2.0 * self._n_parameters()

    def sample(self, n_samples=1):
        """Ancestral sampling: a component by its weight, then a row from that Gaussian.

        Returns ``(X, y)``: the rows (n_samples, n_features), grouped by component, and
        the component of each.
        """
        p = self._params
        check_int("n_samples", n_samples, 1)
        rng = master_rng(self.random_state)
        counts = rng.multinomial(n_samples, p.weights)
        dense = covariance(self.covariance_type).dense(p.covariances, self.n_components,
                                                       self.n_features_in_)
        xs, ys = [], []
        for k, count in enumerate(counts):
            xs.append(rng.multivariate_normal(p.means[k], dense[k], int(count)))
            ys.append(np.full(int(count), k, dtype=np.int64))
        return np.vstack(xs), np.concatenate(ys)
