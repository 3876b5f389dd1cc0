"""Compiled, fused chunk kernels (numba): the hot loops of the E-step.

Each kernel walks a chunk in blocks of ``BLOCK`` rows. For a block it makes one BLAS
product (``np.dot``: scores against every center, or log-densities of every component),
then, row by row and in the same pass, the arg-min or the log-sum-exp and the row's share
of the statistics, so a block is read from memory once while it sits in cache. Buffers are
allocated once per chunk. The statistics accumulate in float64; k-means data in float32
stay float32 in the product (the mixtures' quadratic features are float64 whatever the
data: they carry the digits the covariances need).

Their NumPy reference twins are :func:`daskem.kernels.estep.kmeans_chunk_stats_numpy` and
:func:`daskem.kernels.estep.gaussian_chunk_stats_numpy`, which tests compare them against.

The kernels are serial (``nogil``: a Dask worker's threads run them side by side; no
``parallel=True``, which would oversubscribe the cores under Dask and BLAS). They are
compiled on first use and cached on disk (``cache=True``): beside this module, or, when
the package directory is not writable, in numba's per-user cache directory (set
``NUMBA_CACHE_DIR`` to choose another); a worker process loads them from there once.
:func:`warm_up` compiles or loads every signature and says how long it took.
"""

from __future__ import annotations

import math
import time

import numba
import numpy as np

# Rows per block: a block's product (rows × K) and features stay within L2 (measured on
# the 2-core machines; scikit-learn's Lloyd uses 256 too).
BLOCK = 256

_JIT = dict(nogil=True, cache=True, error_model="numpy")
LOG_2PI = math.log(2.0 * math.pi)
# log(2⁻⁵³): a mixture term this far below the row's largest does not change its sum.
NEGLIGIBLE = -36.8
# k-means may assume no NaN (and ignore the sign of zero): that lets the arg-min over the
# centers vectorise (2–3x faster). Data with NaN or ±inf are refused before any statistic
# is used (every chunk counts them), so the assumption never decides a result. No
# reassociation: sums keep their order, results stay deterministic.
_JIT_KMEANS = dict(_JIT, fastmath={"nnan", "nsz"})


@numba.njit(**_JIT_KMEANS)
def _kmeans(x, w, shift, scorer, centers, eps, block, labels, dist_sq, nk, s1):
    n, d = x.shape
    k = centers.shape[0]
    weighted = w.shape[0] > 0
    coef_t = np.ascontiguousarray(scorer[:d].T)  # (K, d): −2 (c − s)
    norms = scorer[d]  # (K,): ‖c − s‖²
    reach = 0.0
    for c in range(k):
        reach = max(reach, np.float64(norms[c]))
    # Scores are held transposed (components × rows), so that the arg-min runs along
    # contiguous rows for every center: it vectorises.
    z_buf = np.empty(d * block, dtype=x.dtype)
    s_buf = np.empty(k * block, dtype=x.dtype)
    first = np.empty(block)
    second = np.empty(block)
    best = np.empty(block, dtype=np.int64)
    objective = 0.0
    weight_sum = 0.0
    margin = np.inf
    for start in range(0, n, block):
        b = min(start + block, n) - start
        zb = z_buf[:b * d].reshape((b, d))
        for i in range(b):
            for j in range(d):
                zb[i, j] = x[start + i, j] - shift[j]
        st = s_buf[:k * b].reshape((k, b))
        np.dot(coef_t, zb.T, st)  # ‖x − c‖² − ‖x − s‖², less ‖c − s‖²
        for i in range(b):
            first[i] = np.inf
            second[i] = np.inf
            best[i] = 0
        # The smallest and second-smallest score of every row and the first index of the
        # smallest (np.argmin's), branch-free.
        for c in range(k):
            nc = norms[c]
            for i in range(b):
                v = np.float64(st[c, i] + nc)
                second[i] = min(second[i], max(first[i], v))
                best[i] = c if v < first[i] else best[i]
                first[i] = min(first[i], v)
        for i in range(b):
            row = start + i
            label = best[i]
            wi = w[row] if weighted else 1.0
            # The exact residual x − c (in the data's dtype), its squared norm in four
            # partial sums (a short dependency chain, a fixed order), and Σ w r.
            p0 = 0.0
            p1 = 0.0
            p2 = 0.0
            p3 = 0.0
            j = 0
            while j + 4 <= d:
                r0 = np.float64(x[row, j] - centers[label, j])
                r1 = np.float64(x[row, j + 1] - centers[label, j + 1])
                r2 = np.float64(x[row, j + 2] - centers[label, j + 2])
                r3 = np.float64(x[row, j + 3] - centers[label, j + 3])
                p0 += r0 * r0
                p1 += r1 * r1
                p2 += r2 * r2
                p3 += r3 * r3
                s1[label, j] += wi * r0
                s1[label, j + 1] += wi * r1
                s1[label, j + 2] += wi * r2
                s1[label, j + 3] += wi * r3
                j += 4
            while j < d:
                r0 = np.float64(x[row, j] - centers[label, j])
                p0 += r0 * r0
                s1[label, j] += wi * r0
                j += 1
            ds = (p0 + p1) + (p2 + p3)
            labels[row] = label
            dist_sq[row] = ds
            nk[label] += wi
            objective += wi * ds
            weight_sum += wi
            if k > 1:
                # The gap of the two smallest scores is d₂² − d₁², less a bound on the
                # product's rounding, which grows with ‖x − s‖² ≤ (d₁ + ‖c − s‖)²;
                # d₂ − d₁ = gap / (d₂ + d₁).
                d1 = math.sqrt(ds)
                z_norm = (d1 + math.sqrt(max(np.float64(norms[label]), 0.0))) ** 2
                gap = (second[i] - first[i]) - 4.0 * (d + 2) * eps * (z_norm + reach) * 1.01
                m = gap / (math.sqrt(ds + max(gap, 0.0)) + d1 + 1e-300)
                margin = min(margin, m)
    return objective, weight_sum, margin


def kmeans_fused(x, w, shift, scorer, centers, block=BLOCK):
    """Assign every row of ``x`` to its nearest center and sum the k-means statistics.

    ``scorer`` is ``[−2 (c − s)ᵀ ; ‖c − s‖²]`` (d + 1, K) and ``shift`` is ``s``, both in
    ``x``'s dtype (see :class:`~daskem.kernels.estep.KMeansKernelParams`). Returns
    ``(labels, dist_sq, nk, s1, objective, weight_sum, margin)``: ``s1`` = Σ w (x − c_label)
    per cluster, ``dist_sq`` = ‖x − c_label‖² per row (float64), and ``margin`` a lower
    bound over the rows of ‖x − c_2nd‖ − ‖x − c_label‖ (+inf for one center or no rows).
    """
    x = np.ascontiguousarray(x)
    n, d = x.shape
    k = centers.shape[0]
    w = np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    labels = np.empty(n, dtype=np.int64)
    dist_sq = np.empty(n)
    nk = np.zeros(k)
    s1 = np.zeros((k, d))
    eps = float(np.finfo(x.dtype).eps)
    objective, weight_sum, margin = _kmeans(
        x, w, np.ascontiguousarray(shift, dtype=x.dtype),
        np.ascontiguousarray(scorer, dtype=x.dtype),
        np.ascontiguousarray(centers, dtype=x.dtype), eps, max(1, min(block, n)), labels,
        dist_sq, nk, s1)
    return labels, dist_sq, nk, s1, objective, weight_sum, margin


@numba.njit(inline="always", **_JIT)
def _responsibilities(values, wi, hard):
    """One row, in place: its log π_k N_k (``values``) become its responsibilities times
    the row's weight ``wi`` (``hard``: all of ``wi`` on the most probable component).
    Returns (the row's term of the objective, its log p(x)).

    exp(v − top) is taken for the components within NEGLIGIBLE of the best; the others'
    terms are below 2⁻⁵³ of the largest (1), do not change the sum, and skipping their exp
    (the costly part: it does not vectorise) leaves them at zero.
    """
    k = values.shape[0]
    top = -np.inf
    best = 0
    for c in range(k):
        if values[c] > top:
            top = values[c]
            best = c
    best_log = top
    if not np.isfinite(top):
        top = 0.0  # no component explains the row (all −inf): zero responsibility
    total = 0.0
    for c in range(k):
        e = values[c] - top
        e = math.exp(e) if e > NEGLIGIBLE else 0.0
        values[c] = e
        total += e
    row_lse = math.log(total) + top if total > 0.0 else -np.inf
    if hard:  # classification EM: the objective is log π_k N_k of the best
        for c in range(k):
            values[c] = 0.0
        values[best] = wi
        return wi * best_log, row_lse
    scale = wi / total if total > 0.0 else 0.0
    for c in range(k):
        values[c] *= scale
    return wi * row_lse, row_lse


@numba.njit(**_JIT)
def _mixture(x, w, shift, weights_t, quad, hard, want_lse, block, gram, lse, index, indexed):
    d = x.shape[1]
    n = index.shape[0] if indexed else x.shape[0]
    k, m = weights_t.shape
    q = m - d - 1
    weighted = w.shape[0] > 0
    wt = np.ascontiguousarray(weights_t.T)  # (m, K)
    feats = np.empty((block, m))
    resp = np.empty((block, k))
    part = np.empty((k, m))
    z = np.empty(d)
    objective = 0.0
    weight_sum = 0.0
    for start in range(0, n, block):
        stop = min(start + block, n)
        b = stop - start
        fb = feats[:b]
        for i in range(b):
            row = index[start + i] if indexed else start + i
            for j in range(d):
                z[j] = x[row, j] - shift[j]
                fb[i, q + j] = z[j]
            fb[i, m - 1] = 1.0
            if quad == 0:  # z_i z_j, i ≤ j, row-major upper triangle
                p = 0
                for a in range(d):
                    za = z[a]
                    for c in range(a, d):
                        fb[i, p] = za * z[c]
                        p += 1
            elif quad == 1:  # z_j²
                for j in range(d):
                    fb[i, j] = z[j] * z[j]
            else:  # ‖z‖²
                t = 0.0
                for j in range(d):
                    t += z[j] * z[j]
                fb[i, 0] = t
        rb = resp[:b]
        np.dot(fb, wt, rb)  # log π_k N(x | μ_k, Σ_k)
        for i in range(b):
            row = index[start + i] if indexed else start + i
            wi = w[row] if weighted else 1.0
            term, row_lse = _responsibilities(rb[i], wi, hard)
            objective += term
            weight_sum += wi
            if want_lse:
                lse[row] = row_lse
        np.dot(rb.T, fb, part)
        for c in range(k):
            for j in range(m):
                gram[c, j] += part[c, j]
    return objective, weight_sum


def mixture_fused(x, w, shift, weights_t, quad, hard=False, want_lse=False, block=BLOCK,
                  rows=None):
    """E-step of a chunk and the mixture's statistics, never holding more than a block.

    ``weights_t`` (K, m) gives ``log π_k N(x | μ_k, Σ_k) = weights_t[k] · F(x − shift)``
    with ``F(z) = [q(z), z, 1]`` and ``q`` the quadratic map ``quad`` (see
    :mod:`daskem.kernels.covariance`). Returns ``(nk, s1, quad_sums, objective,
    weight_sum, lse)``: Σ r, Σ r z, Σ r q(z) per component, Σ w·log p(x) (or, ``hard``,
    the classification log-likelihood), Σ w, and every row's log p(x) when ``want_lse``
    (else an empty array). ``rows``: only these rows are read (the others' log p(x) is
    +inf).
    """
    x = np.ascontiguousarray(x)
    n, d = x.shape
    k, m = weights_t.shape
    w = np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    gram = np.zeros((k, m))
    lse = np.empty(n if want_lse else 0)
    if rows is not None:
        lse[:] = np.inf
    objective, weight_sum = _mixture(
        x, w, np.ascontiguousarray(shift, dtype=np.float64),
        np.ascontiguousarray(weights_t, dtype=np.float64), int(quad), bool(hard),
        bool(want_lse), max(1, min(block, n)), gram, lse,
        np.empty(0, dtype=np.int64) if rows is None else np.ascontiguousarray(rows,
                                                                               dtype=np.int64),
        rows is not None)
    q = m - d - 1
    return gram[:, -1].copy(), gram[:, q:q + d].copy(), gram[:, :q].copy(), objective, \
        weight_sum, lse


@numba.njit(**_JIT)
def _spd_inverse(a, r, inv, low, low_inv):
    """``inv[:r, :r]`` ← a⁻¹ of the small symmetric positive definite ``a[:r, :r]``
    (Cholesky; ``low`` and ``low_inv`` are scratch of at least r × r); returns log det a
    (NaN when ``a`` is not positive definite)."""
    logdet = 0.0
    for j in range(r):
        s = a[j, j]
        for t in range(j):
            s -= low[j, t] * low[j, t]
        if not s > 0.0:
            return np.nan
        low[j, j] = math.sqrt(s)
        logdet += 2.0 * math.log(low[j, j])
        for i in range(j + 1, r):
            s = a[i, j]
            for t in range(j):
                s -= low[i, t] * low[j, t]
            low[i, j] = s / low[j, j]
    for c in range(r):
        for i in range(c, r):
            s = 1.0 if i == c else 0.0
            for t in range(c, i):
                s -= low[i, t] * low_inv[t, c]
            low_inv[i, c] = s / low[i, i]
    for i in range(r):
        for j in range(r):
            s = 0.0
            for t in range(max(i, j), r):
                s += low_inv[t, i] * low_inv[t, j]
            inv[i, j] = s
    return logdet


@numba.njit(**_JIT)
def _pattern_factors(prec, missing_row, mi, cond, ld_mm, scratch):
    """For the missingness pattern ``missing_row``: the missing features' indices into
    ``mi``, and per component Λ_mm⁻¹ into ``cond[c, :nm, :nm]`` and log det Λ_mm into
    ``ld_mm``; returns nm, the number of missing features (``scratch``: (3, d, d))."""
    nm = 0
    for j in range(missing_row.shape[0]):
        if missing_row[j]:
            mi[nm] = j
            nm += 1
    lmm = scratch[0]
    for c in range(prec.shape[0]):
        for a in range(nm):
            for b2 in range(nm):
                lmm[a, b2] = prec[c, mi[a], mi[b2]]
        ld_mm[c] = _spd_inverse(lmm, nm, cond[c], scratch[1], scratch[2])
    return nm


@numba.njit(**_JIT)
def _marginal_shared(x, w, order, pattern, missing, shift, weights_t, means, prec, log_w,
                     hard, block, gram, extra, s1_extra, pattern_mass):
    """Full and tied: the E-step of rows with missing values through the complete-data
    feature map. With x̃ the row less the shift, 0 on the missing features, and
    c = μ − s, δ = x̃ − c on the observed features::

        δᵀΛδ = (x̃ − c)ᵀΛ(x̃ − c) + 2 Σ_m c_a (Λx̃)_a − 2 Σ_m c_a (Λc)_a + c_mᵀ Λ_mm c_m
        v    = (Λδ)_m = (Λx̃)_m − (Λc)_m + Λ_mm c_m

    The first term is the complete-data log-density of x̃ (one product of the block's
    features F(x̃) with every component's weights: BLAS), the terms in c alone are
    constants of (pattern, component), and (Λx̃)_m costs |m|·d per row and component. The
    statistics likewise: Σ r F(x̃) is one product, and x̂ − s = x̃ + e with e = c_m − Λ_mm⁻¹ v
    on the missing features adds Σ r e (``s1_extra``) and Σ r (x̃ eᵀ + e x̃ᵀ + e eᵀ)
    (``extra``, upper triangle); the conditional covariances come from ``pattern_mass``.
    """
    n, d = x.shape
    k, m_width = weights_t.shape
    q = m_width - d - 1
    weighted = w.shape[0] > 0
    wt = np.ascontiguousarray(weights_t.T)
    feats = np.empty((block, m_width))
    resp = np.empty((block, k))
    part = np.empty((k, m_width))
    xt = np.empty((block, d))  # x̃
    e = np.empty((k, block, d))  # e on the missing features (first nm entries)
    lam_c = np.empty((k, d))  # Λ c
    centred = np.empty((k, d))
    for c in range(k):
        for j in range(d):
            centred[c, j] = means[c, j] - shift[j]
        for j in range(d):
            acc = 0.0
            for t in range(d):
                acc += prec[c, j, t] * centred[c, t]
            lam_c[c, j] = acc
    mi = np.empty(d, dtype=np.int64)
    cond = np.empty((k, d, d))
    ld_mm = np.empty(k)
    kappa = np.empty((k, d))
    adjust = np.empty(k)
    scratch = np.zeros((3, d, d))
    g = np.empty(d)
    v = np.empty(d)
    cv = np.empty(d)
    row_nm = np.empty(block, dtype=np.int64)
    row_mi = np.empty((block, d), dtype=np.int64)
    objective = 0.0
    weight_sum = 0.0
    current = -1
    nm = 0
    for start in range(0, n, block):
        b = min(start + block, n) - start
        fb = feats[:b]
        for i in range(b):
            row = order[start + i]
            for j in range(d):
                xt[i, j] = 0.0 if missing[row, j] else x[row, j] - shift[j]
                fb[i, q + j] = xt[i, j]
            fb[i, m_width - 1] = 1.0
            p = 0
            for a in range(d):
                za = xt[i, a]
                for c2 in range(a, d):
                    fb[i, p] = za * xt[i, c2]
                    p += 1
        rb = resp[:b]
        np.dot(fb, wt, rb)  # the complete-data log π_k N(x̃ + s | μ_k, Σ_k)
        for i in range(b):
            row = order[start + i]
            if pattern[start + i] != current:
                current = pattern[start + i]
                nm = _pattern_factors(prec, missing[row], mi, cond, ld_mm, scratch)
                for c in range(k):
                    const = 0.0
                    for a in range(nm):
                        ca = centred[c, mi[a]]
                        acc = 0.0
                        for b2 in range(nm):
                            acc += prec[c, mi[a], mi[b2]] * centred[c, mi[b2]]
                        kappa[c, a] = acc - lam_c[c, mi[a]]
                        const += ca * (acc - 2.0 * lam_c[c, mi[a]])
                    adjust[c] = 0.5 * nm * LOG_2PI - 0.5 * ld_mm[c] - 0.5 * const
            row_nm[i] = nm
            for a in range(nm):
                row_mi[i, a] = mi[a]
            for c in range(k):
                corr = 0.0
                for a in range(nm):
                    acc = 0.0
                    for j in range(d):
                        acc += prec[c, mi[a], j] * xt[i, j]
                    g[a] = acc
                    v[a] = acc + kappa[c, a]
                    corr -= centred[c, mi[a]] * acc
                quad = 0.0
                for a in range(nm):
                    acc = 0.0
                    for b2 in range(nm):
                        acc += cond[c, a, b2] * v[b2]
                    cv[a] = acc
                    quad += v[a] * acc
                    e[c, i, a] = centred[c, mi[a]] - acc  # E[x_m | x_o] − s_m
                rb[i, c] += adjust[c] + corr + 0.5 * quad
        for i in range(b):
            row = order[start + i]
            wi = w[row] if weighted else 1.0
            term, _ = _responsibilities(rb[i], wi, hard)
            objective += term
            weight_sum += wi
        np.dot(rb.T, fb, part)
        for c in range(k):
            for j in range(m_width):
                gram[c, j] += part[c, j]
        for i in range(b):
            nmi = row_nm[i]
            gi = pattern[start + i]
            for c in range(k):
                r = rb[i, c]
                if r == 0.0:
                    continue
                pattern_mass[gi, c] += r
                for a in range(nmi):
                    ra = r * e[c, i, a]
                    ma = row_mi[i, a]
                    s1_extra[c, ma] += ra
                    for j in range(d):  # x̃ eᵀ (x̃ is 0 on the missing features)
                        extra[c, j, ma] += ra * xt[i, j]
                    for b2 in range(a, nmi):
                        extra[c, ma, row_mi[i, b2]] += ra * e[c, i, b2]
    return objective, weight_sum


@numba.njit(**_JIT)
def _add_conditional_covariances(extra, pattern_mass, order, pattern, missing, prec):
    """``extra`` (upper triangles) += Σ r per (pattern, component) times Λ_mm⁻¹."""
    k, d = prec.shape[0], prec.shape[1]
    mi = np.empty(d, dtype=np.int64)
    scratch = np.zeros((3, d, d))
    cond = np.empty((k, d, d))
    ld_mm = np.empty(k)
    start = 0
    for g in range(pattern_mass.shape[0]):
        while pattern[start] != g:
            start += 1
        nm = _pattern_factors(prec, missing[order[start]], mi, cond, ld_mm, scratch)
        for c in range(k):
            mass = pattern_mass[g, c]
            for a in range(nm):
                for b2 in range(a, nm):
                    extra[c, mi[a], mi[b2]] += mass * cond[c, a, b2]


@numba.njit(**_JIT)
def _marginal_diagonal(x, w, means, prec, log_w, log_det, shift, hard, nk, s1, squares):
    """:func:`_marginal` for a diagonal Λ (diag, spherical, fixed), row by row: the
    conditionals are the component's own mean and variance, nothing to factorise."""
    n, d = x.shape
    k = means.shape[0]
    weighted = w.shape[0] > 0
    lam = np.empty((k, d))
    half_log = np.empty((k, d))
    for c in range(k):
        for j in range(d):
            lam[c, j] = prec[c, j, j]
            half_log[c, j] = 0.5 * math.log(prec[c, j, j])
    logp = np.empty(k)
    objective = 0.0
    weight_sum = 0.0
    for row in range(n):
        n_obs = 0
        for j in range(d):
            if not math.isnan(x[row, j]):
                n_obs += 1
        for c in range(k):
            acc = log_w[c] + log_det[c] - 0.5 * n_obs * LOG_2PI
            for j in range(d):
                v = x[row, j]
                if math.isnan(v):
                    acc -= half_log[c, j]  # − ½ log det Λ_mm
                else:
                    t = v - means[c, j]
                    acc -= 0.5 * lam[c, j] * t * t
            logp[c] = acc
        wi = w[row] if weighted else 1.0
        term, _ = _responsibilities(logp, wi, hard)
        objective += term
        weight_sum += wi
        for c in range(k):
            r = logp[c]
            if r == 0.0:
                continue
            nk[c] += r
            for j in range(d):
                v = x[row, j]
                if math.isnan(v):
                    z = means[c, j] - shift[j]
                    squares[c, j] += r * (z * z + 1.0 / lam[c, j])
                else:
                    z = v - shift[j]
                    squares[c, j] += r * z * z
                s1[c, j] += r * z
    return objective, weight_sum


@numba.njit(**_JIT)
def _scan_missing(x, per_row):
    n, d = x.shape
    n_inf = 0
    for i in range(n):
        count = 0
        for j in range(d):
            v = x[i, j]
            if math.isnan(v):
                count += 1
            elif math.isinf(v):
                n_inf += 1
        per_row[i] = count
    return n_inf


def scan_missing(x) -> tuple[np.ndarray, int]:
    """(NaN count of every row, number of ±inf values) in one pass."""
    x = np.ascontiguousarray(x)
    per_row = np.empty(x.shape[0], dtype=np.int64)
    return per_row, int(_scan_missing(x, per_row))


def marginal_fused(x, w, mp, shift, quad, keeps_s2, hard, block=BLOCK):
    """Compiled twin of :func:`daskem.kernels.marginal.marginal_stats` (same arguments and
    results). Full and tied (:func:`_marginal_shared`): rows sorted by missingness pattern,
    ``Λ_mm`` factorised once per (pattern, component), a block's log-densities and
    statistics through the complete-data feature map (BLAS) with corrections of |m|·d per
    row and component. Diagonal types (:func:`_marginal_diagonal`): row by row."""
    from daskem.kernels.covariance import QUAD_OUTER, QUAD_SQUARE
    from daskem.kernels.marginal import pattern_order

    x = np.ascontiguousarray(x, dtype=np.float64)
    n, d = x.shape
    k = mp.means.shape[0]
    nk, s1 = np.zeros(k), np.zeros((k, d))
    w = np.empty(0) if w is None else np.ascontiguousarray(w, dtype=np.float64)
    args = (mp.means, mp.precisions, mp.log_weights, np.ascontiguousarray(mp.log_det),
            np.ascontiguousarray(shift, dtype=np.float64), bool(hard))
    if quad == QUAD_OUTER:  # full, tied (both keep s2)
        missing = np.isnan(x)
        pattern, order = pattern_order(missing)
        n_patterns = int(pattern[-1]) + 1 if n else 0
        m_width = mp.weights_t.shape[1]
        gram = np.zeros((k, m_width))
        extra = np.zeros((k, d, d))
        s1_extra = np.zeros((k, d))
        pattern_mass = np.zeros((n_patterns, k))
        objective, weight_sum = _marginal_shared(
            x, w, order, pattern, missing, np.ascontiguousarray(mp.shift),
            np.ascontiguousarray(mp.weights_t), mp.means, mp.precisions, mp.log_weights,
            bool(hard), max(1, min(block, n)), gram, extra, s1_extra, pattern_mass)
        _add_conditional_covariances(extra, pattern_mass, order, pattern, missing,
                                     mp.precisions)
        q = m_width - d - 1
        iu, ju = np.triu_indices(d)
        # The upper triangle of x̃ eᵀ + e x̃ᵀ + e eᵀ + C: ``extra`` holds x̃ eᵀ wherever it
        # falls (rows of observed features, columns of missing ones: 0 on the diagonal)
        # and e eᵀ + C on and above the diagonal (rows and columns of missing features).
        upper = extra[:, iu, ju] + np.where(iu != ju, extra[:, ju, iu], 0.0)
        return (gram[:, -1] + 0.0, gram[:, q:q + d] + s1_extra, gram[:, :q] + upper,
                objective, weight_sum)
    squares = np.zeros((k, d))
    objective, weight_sum = _marginal_diagonal(x, w, *args, nk, s1, squares)
    quad_sums = None
    if keeps_s2:
        quad_sums = squares if quad == QUAD_SQUARE else squares.sum(axis=1)[:, None]
    return nk, s1, quad_sums, objective, weight_sum


_WARM: dict = {}


def warm_up() -> float:
    """Compile (or load from the cache) every kernel for float32 and float64 data; the
    seconds it took (0 after the first call in a process)."""
    if _WARM:
        return 0.0
    t0 = time.perf_counter()
    for dtype in (np.float32, np.float64):
        x = np.zeros((2, 2), dtype=dtype)
        centers = np.zeros((2, 2), dtype=dtype)
        scorer = np.zeros((3, 2), dtype=dtype)
        for w in (None, np.ones(2)):
            kmeans_fused(x, w, np.zeros(2, dtype), scorer, centers)
            mixture_fused(x, w, np.zeros(2), np.zeros((2, 6)), 0, want_lse=True)
    _WARM["seconds"] = time.perf_counter() - t0
    return _WARM["seconds"]
