"""k-means (Lloyd's algorithm) on data of any size."""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.base import ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin

from daskem.engine.data import as_chunked
from daskem.engine.em import EMState, KMeansFamily, evaluate, fit_states
from daskem.engine.reduce import DEFAULT_SPLIT_EVERY, in_span
from daskem.engine.seeding import choose_on_sample, kmeans_centers
from daskem.engine.stepwise import kmeans_step
from daskem.errors import ClusterPolicyWarning, ConvergenceWarning, ParameterError
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
from daskem.kernels.estep import (
    KMeansKernelParams,
    has_nan,
    kmeans_labels,
    partial_squared_distances,
    squared_distances,
)
from daskem.kernels.mstep import KMeansParams, kmeans_inertia_after, kmeans_labels_stable
from daskem.kernels.random import spawn_seeds

INITS = ("k-means||", "k-means++", "random")
# "elkan" is accepted and runs Lloyd's algorithm: the same centers (both are exact), and
# Elkan's per-row bounds, (n_samples × n_clusters) of state kept between passes, do not
# pay for themselves when a pass is bound by reading the data.
ALGORITHMS = ("lloyd", "elkan")


def _labels(x: np.ndarray, centers: np.ndarray, marginalize: bool = False) -> np.ndarray:
    return kmeans_labels(x, KMeansKernelParams.build(centers, x.dtype,
                                                     marginalize=marginalize))


def _distances(x: np.ndarray, centers: np.ndarray, marginalize: bool = False) -> np.ndarray:
    if marginalize and has_nan(x):
        return np.sqrt(partial_squared_distances(x, centers))
    return np.sqrt(squared_distances(x, centers))


def _settled(state: EMState, dtype) -> tuple[float, np.ndarray] | None:
    """``(inertia, cluster weights)`` at the final centers without a pass, when the last
    pass proved that no label changes (its margin; no cluster re-seeded): the inertia then
    follows from that pass's statistics. ``None`` when a final pass is needed."""
    if not state.last or any(it == state.n_iter for it, _ in state.events):
        return None
    old, stats = state.last
    centers = state.params.cluster_centers
    if stats.margin == np.inf or not kmeans_labels_stable(stats, old, centers, dtype):
        return None
    return kmeans_inertia_after(stats, old, centers), stats.nk


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin,
             DaskemEstimator):
    """k-means clustering by Lloyd's algorithm, on NumPy, Dask or xarray data.

    Parameters
    ----------
    n_clusters : int, default 8
    init : {"k-means++", "k-means||", "random"}, callable or array of shape \
(n_clusters, n_features)
        ``"k-means++"`` (default) and ``"random"`` seed from the uniform sample of
        ``sample_size`` rows drawn by the first pass; every restart then runs Lloyd on
        that sample in memory, and only the best (lowest sample inertia) goes on to the
        passes over the data (the others are recorded in ``restarts_``). ``"k-means||"``
        seeds over the whole data in a few passes (Bahmani et al.) and runs every restart
        over the data: better when clusters are too small for the sample to hold more
        than a handful of their rows. A callable is called as scikit-learn calls it,
        ``init(X, n_clusters, random_state=RandomState)``, once per restart; the best on
        the sample goes on over the data.
    n_init : int or "auto", default "auto"
        Restarts; the one with the lowest inertia is kept. ``"auto"``: 1 for k-means||,
        k-means++ and an array, 10 for random and a callable.
    max_iter : int, default 300
    tol : float, default 1e-4
        Relative tolerance: stop when the squared movement of the centers, summed, is at
        most ``tol`` times the mean per-feature variance of the data (scikit-learn's rule),
        or when no label can change any more (below).
    random_state : int, Generator or None
    oversampling_factor : float, default 2
        k-means||: expected candidates per round, as a multiple of ``n_clusters``.
    init_max_rounds : int, default 5
        k-means||: number of rounds (passes over the data).
    sample_size : int, optional
        Rows sampled (uniformly, in the first pass) for k-means++ and random seeding;
        default ``max(30000, 100 * n_clusters)``.
    split_every : int, default 8
        Fan-in of the tree reduction of per-chunk statistics.
    chunk_rows : int, optional
        Rows per chunk (NumPy input is cut into ~32 MiB chunks; Dask input keeps its own).
    update : {"batch", "incremental"}, default "batch"
        When the M-step runs. ``"batch"``: after every pass over the data, as scikit-learn
        does. ``"incremental"``: after every block of chunks, that block's statistics from
        the previous pass replaced by its new ones (Neal & Hinton 1998): the same fixed
        points in fewer passes when convergence is slow (from a poor start, or on
        overlapping clusters), at ``n_blocks`` round trips to the scheduler per pass. An
        iteration is then a pass, its objective the sum of the blocks' objectives; data
        with too few chunks for two blocks are fitted in batch.
    n_blocks : int, default 16
        Blocks of chunks per pass for ``update="incremental"`` (each block at least 4
        chunks: a block's chunks are its parallelism).
    verbose : int, default 0
        Print the best inertia after every pass.
    copy_x : bool, default True
        Accepted for scikit-learn's API; daskem never modifies ``X`` (it does not centre
        the data in place), so both values behave the same.
    algorithm : {"lloyd", "elkan"}, default "lloyd"
        ``"elkan"`` is accepted and runs Lloyd's algorithm, which gives the same centers;
        Elkan's bounds (n_samples × n_clusters of state kept between passes) do not pay
        for themselves when a pass is bound by reading the data.

    Input is checked as scikit-learn checks it (lists, DataFrames, object arrays of numbers,
    sparse matrices: CSR, densified one chunk at a time; Dask arrays of ``scipy.sparse``
    chunks too); ``cluster_centers_`` and ``transform`` follow the data's dtype (float32
    in, float32 out).

    Empty clusters are moved onto the rows farthest from their own centers, which leave the
    clusters they were in (as scikit-learn does); each move is recorded in ``reseeds_`` and
    reported with a :class:`~daskem.errors.ClusterPolicyWarning`.

    A pass whose centers move by less than half the smallest gap between any row's
    nearest and second-nearest center (rounding bounded) cannot change a label: the fit
    stops there whatever ``tol`` is, and ``inertia_`` follows from that pass; otherwise
    one more pass computes ``inertia_`` at the final centers.

    For a Dask input, ``labels_`` and every per-sample result are lazy Dask arrays.
    ``inertia_history_`` holds the inertia of the centers each iteration started from.

    missing : {"error", "marginalize"}, default "error"
        ``"marginalize"``: a NaN is a missing value, handled by the partial distance
        strategy: a row's squared distance to a center is taken over its observed
        features and scaled by n_features / n_observed, and each feature of a center is
        the mean of the observed values of that feature in its cluster. ``predict``,
        ``transform`` and ``score`` use the same distances. A row with no observed value is
        left out of the fit and of ``score`` (counted in ``n_empty_rows_``; its label is −1,
        its distances NaN). Empty clusters move onto complete rows; the fit stops on
        ``tol`` (the label-stability stop needs complete rows); ``init="k-means||"`` and
        ``partial_fit`` are not available.
    """

    def __init__(self, n_clusters=8, *, init="k-means++", n_init="auto", max_iter=300,
                 tol=1e-4, random_state=None, oversampling_factor=2.0, init_max_rounds=5,
                 sample_size=None, split_every=DEFAULT_SPLIT_EVERY, chunk_rows=None,
                 verbose=0, copy_x=True, algorithm="lloyd",
                 update="batch", n_blocks=DEFAULT_BLOCKS, missing="error"):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state
        self.oversampling_factor = oversampling_factor
        self.init_max_rounds = init_max_rounds
        self.sample_size = sample_size
        self.split_every = split_every
        self.chunk_rows = chunk_rows
        self.update = update
        self.n_blocks = n_blocks
        self.verbose = verbose
        self.copy_x = copy_x
        self.algorithm = algorithm
        self.missing = missing

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags

    @property
    def _n_features_out(self) -> int:
        """Columns of ``transform``: one per center (``get_feature_names_out``)."""
        return self.cluster_centers_.shape[0]

    def _check_params(self) -> int:
        check_int("n_clusters", self.n_clusters, 1)
        check_int("max_iter", self.max_iter, 1)
        check_int("split_every", self.split_every, 2)
        check_int("init_max_rounds", self.init_max_rounds, 1)
        check_float("tol", self.tol, 0.0)
        check_float("oversampling_factor", self.oversampling_factor, 0.0, strict=True)
        check_choice("update", self.update, UPDATES)
        check_int("n_blocks", self.n_blocks, 1)
        check_choice("algorithm", self.algorithm, ALGORITHMS)
        self._check_missing("init", self.init, "k-means++")
        is_array = not isinstance(self.init, str) and not callable(self.init)
        if isinstance(self.init, str):
            check_choice("init", self.init, INITS)
        if self.n_init == "auto":
            return 10 if callable(self.init) or (not is_array and self.init == "random") else 1
        n_init = check_int("n_init", self.n_init, 1)
        if is_array and n_init != 1:
            warnings.warn(f"Explicit initial center position passed: performing only one init "
                          f"in {type(self).__name__} instead of n_init={n_init}.",
                          RuntimeWarning, stacklevel=4)
            return 1
        return n_init

    @in_span("daskem KMeans.fit")
    def fit(self, X, y=None, sample_weight=None, *, checkpoint=None, callback=None):
        """Compute k-means clustering of ``X`` (n_samples, n_features).

        ``checkpoint`` (a :class:`~daskem.engine.em.Checkpointer`, such as a run store)
        makes the fit resumable; ``callback(n_pass, states)`` is called after every pass.
        """
        n_init = self._check_params()
        X = check_input(self, X, reset=True, sparse=True)
        self._counts = None  # a stream of partial_fit calls starts again from this fit
        rng = master_rng(self.random_state)
        data, summary = start_fit(X, sample_weight, n_components=self.n_clusters,
                                  what="n_clusters", chunk_rows=self.chunk_rows,
                                  sample_size=self.sample_size, rng=rng,
                                  split_every=self.split_every, missing=self.missing)
        self.n_empty_rows_, self.n_missing_values_ = summary.n_empty, summary.n_missing
        family = with_fixed(self, KMeansFamily(self.tol * float(np.mean(summary.variance)),
                                               self._marginalize))
        self.passes_ = data.passes  # counted live during the fit (progress reads it)
        n_models = 1 if not isinstance(self.init, str) and not callable(self.init) else n_init

        def initial():
            if callable(self.init):
                return self._called_init(X, rng, n_init, data.n_features, summary, family)
            if not isinstance(self.init, str):
                return [EMState(KMeansParams(check_array_shape(
                    "init", self.init, (self.n_clusters, data.n_features))))]
            seeds = spawn_seeds(rng, n_init)
            centers = kmeans_centers(data, summary, self.n_clusters, seeds, self.init,
                                     split_every=self.split_every)
            states = [EMState(KMeansParams(c)) for c in centers]
            if self.init == "k-means||":
                return states  # every restart runs over the data
            # Lloyd on the sample for every restart; the best goes on over the data.
            return choose_on_sample(summary, [family] * len(states), states,
                                    [0] * len(states), maximise=False)

        states = fit_states(data, [family] * n_models, initial, max_iter=self.max_iter,
                            split_every=self.split_every, checkpoint=checkpoint,
                            n_blocks=blocks_of(self.update, self.n_blocks),
                            callback=callback or (self._report if self.verbose else None))
        ran = [i for i, s in enumerate(states) if not s.dropped]
        # (Holding earlier rows fixed, the last statistics count those rows too.)
        final = [None if getattr(self, "_fixed_stats", None) else
                 _settled(states[i], data.dtype) for i in ran]
        if any(f is None for f in final):
            # The inertia of the final centers (scikit-learn's inertia_): one more E-step
            # pass, for every restart that ran over the data.
            kparams = [family.kernel_params(states[i].params, data.dtype, far=False)
                       for i in ran]
            final = [(st.objective, st.nk) for st in evaluate(
                data, [family.kernel] * len(ran), kparams, phase="final", label="final",
                split_every=self.split_every)]
        chosen = int(np.argmin([inertia for inertia, _ in final]))
        state = states[ran[chosen]]
        self._set_state(state, float(final[chosen][0]), data.n_features, data.dtype)
        self._set_passes(data.passes)
        self.restarts_ = restart_records(states)
        self.labels_ = self._predict(X)
        if state.events:
            warnings.warn(f"{len(state.events)} empty cluster(s) were moved onto the farthest "
                          "rows during the fit (see reseeds_)", ClusterPolicyWarning,
                          stacklevel=3)
        distinct = int(np.count_nonzero(final[chosen][1] > 0))
        if distinct < self.n_clusters:
            warnings.warn(f"Number of distinct clusters ({distinct}) found smaller than "
                          f"n_clusters ({self.n_clusters}). Possibly due to duplicate points "
                          "in X.", ConvergenceWarning, stacklevel=3)
        return self

    def _called_init(self, X, rng, n_init: int, n_features: int, summary, family):
        """``init`` a callable: ``init(X, n_clusters, random_state)`` (a ``RandomState``)
        gives every restart's centers, as in scikit-learn; the best on the sample goes on
        over the data."""
        states = []
        for seed in spawn_seeds(rng, n_init):
            centers = self.init(X, self.n_clusters,
                                random_state=np.random.RandomState(seed % 2**32))
            states.append(EMState(KMeansParams(check_array_shape(
                "init", centers, (self.n_clusters, n_features)))))
        if len(states) == 1:
            return states
        return choose_on_sample(summary, [family] * len(states), states, [0] * len(states),
                                maximise=False)

    def _set_state(self, state: EMState, inertia: float, n_features: int,
                   dtype=np.float64) -> None:
        """The fitted attributes; arrays in the data's ``dtype`` (float32 data give
        float32 centers, as in scikit-learn; the fit itself runs in float64)."""
        self.cluster_centers_ = np.asarray(state.params.cluster_centers, dtype=dtype)
        self.inertia_ = inertia
        self.inertia_history_ = list(state.objectives)
        self.n_iter_ = state.n_iter
        self.converged_ = state.converged
        self.n_features_in_ = n_features
        self.reseeds_ = list(state.events)
        self._fit_stats = state.last

    def _report(self, n_pass: int, states) -> None:
        inertia = min(s.objectives[-1] for s in states if s.objectives)
        print(f"[daskem KMeans] pass {n_pass}: best inertia {inertia:.6g}", flush=True)

    def partial_fit(self, X, y=None, sample_weight=None):
        """Update the centers with one batch of rows: mini-batch k-means (one pass).

        As scikit-learn's ``MiniBatchKMeans.partial_fit`` (without its random
        reassignment of small clusters): every center keeps the weight of all rows
        assigned to it so far and moves to the weighted mean of its old position and its
        batch rows (:mod:`daskem.engine.stepwise`). The first call on an unfitted model
        seeds the centers from that batch (``init``; its sample for k-means++ and random)
        with weight zero; a model fitted by ``fit`` starts with its clusters' weights from
        the fit's last pass. ``inertia_`` is then the batch's inertia under the centers
        before its step; ``n_steps_`` counts the batches.
        """
        n_init = self._check_params()
        if self._marginalize:
            raise ParameterError("partial_fit is not available with missing='marginalize'")
        fitted = hasattr(self, "cluster_centers_")
        X = check_input(self, X, reset=not fitted, sparse=True)
        data = batch_rows(self, X, sample_weight, self.n_features_in_ if fitted else None)
        if not fitted:
            centers = self._batch_centers(X, sample_weight, n_init, data.n_features)
            counts = np.zeros(self.n_clusters)
            self.n_steps_ = 0
        else:
            centers = self.cluster_centers_
            counts = getattr(self, "_counts", None)
            if counts is None:
                last = getattr(self, "_fit_stats", ())
                counts = last[1].nk.copy() if last else np.zeros(self.n_clusters)
        kparams = KMeansKernelParams.build(centers, data.dtype)
        (stats,) = evaluate(data, [KMeansFamily.kernel], [kparams], label="partial",
                            split_every=self.split_every)
        centers, self._counts = kmeans_step(np.asarray(centers, dtype=np.float64), counts,
                                            stats, kparams.centers.astype(np.float64))
        self.cluster_centers_ = centers.astype(data.dtype)
        self.inertia_ = float(stats.objective)
        self.n_features_in_ = data.n_features
        self.n_steps_ = getattr(self, "n_steps_", 0) + 1
        self._set_passes(data.passes)
        return self

    def _batch_centers(self, X, sample_weight, n_init: int, n_features: int) -> np.ndarray:
        """The first batch's seeding, as ``fit`` seeds (the best of ``n_init`` on the
        batch's sample)."""
        if not isinstance(self.init, str):
            return check_array_shape("init", self.init, (self.n_clusters, n_features))
        rng = master_rng(self.random_state)
        data, summary = start_fit(X, sample_weight, n_components=self.n_clusters,
                                  what="n_clusters", chunk_rows=self.chunk_rows,
                                  sample_size=self.sample_size, rng=rng,
                                  split_every=self.split_every)
        family = KMeansFamily(self.tol * float(np.mean(summary.variance)))
        seeds = spawn_seeds(rng, n_init)
        centers = kmeans_centers(data, summary, self.n_clusters, seeds, self.init,
                                 split_every=self.split_every)
        states = choose_on_sample(summary, [family] * len(centers),
                                  [EMState(KMeansParams(c)) for c in centers],
                                  [0] * len(centers), maximise=False)
        return next(s.params.cluster_centers for s in states if not s.dropped)

    def fit_predict(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).labels_

    def predict(self, X):
        """Index of the nearest center for every row (lazy for a Dask input)."""
        self._check_fitted("cluster_centers_")
        return self._predict(check_input(self, X, reset=False, sparse=True))

    def _predict(self, X):
        return per_sample(X, self.n_features_in_, _labels, self.cluster_centers_,
                          self._marginalize, dtype=np.int64, allow_nan=self._marginalize)

    def transform(self, X):
        """Euclidean distance of every row to every center, (n_samples, n_clusters)."""
        self._check_fitted("cluster_centers_")
        X = check_input(self, X, reset=False, sparse=True)
        return per_sample(X, self.n_features_in_, _distances, self.cluster_centers_,
                          self._marginalize, dtype=np.float64, n_columns=self.n_clusters,
                          allow_nan=self._marginalize)

    def fit_transform(self, X, y=None, sample_weight=None):
        return self.fit(X, sample_weight=sample_weight).transform(X)

    def score(self, X, y=None, sample_weight=None) -> float:
        """Opposite of the inertia of ``X`` under the fitted centers (one pass)."""
        self._check_fitted("cluster_centers_")
        X = check_input(self, X, reset=False, sparse=True)
        data = as_chunked(X, sample_weight, chunk_rows=self.chunk_rows)
        if data.n_features != self.n_features_in_:
            raise ParameterError(f"X has {data.n_features} features, but the model was "
                                 f"fitted with {self.n_features_in_} features")
        params = KMeansKernelParams.build(self.cluster_centers_, data.dtype,
                                          marginalize=self._marginalize)
        (stats,) = evaluate(data, [KMeansFamily.kernel], [params], label="score",
                            split_every=self.split_every)
        return -float(stats.objective)
