"""Lower bounds on a differential-privacy claim from one training run (pure, vectorised, float64).

The auditor trains once on data where each of ``m`` canaries is included independently
with probability 1/2, guesses IN or OUT for ``r`` of them (abstaining on the rest) and
gets ``v`` right. Every function takes numbers or arrays (broadcast together) and returns
float64 arrays of the broadcast shape.

- :func:`one_run_p_value`, :func:`one_run_epsilon`: Steinke, Nasr & Jagielski, "Privacy
  auditing with one (1) training run" (NeurIPS 2023; arXiv:2305.08846), Section 5 with
  approximate DP and the p-value procedure of their Appendix D.
- :func:`gaussian_rejects`, :func:`gaussian_mu`: the f-DP one-run test of Mahloujifar,
  Melis & Chaudhuri, "Auditing f-differential privacy in one run" (ICML 2025;
  arXiv:2410.22235; its recursion with abstentions for an alphabet of k = 2) for the
  Gaussian trade-off function G_mu of Dong, Roth & Su.
- :func:`gdp_delta`, :func:`gdp_epsilon`: the (epsilon, delta) curve of mu-GDP, Dong, Roth
  & Su, "Gaussian differential privacy" (JRSS-B 2022; arXiv:1905.02383), Corollary 2.13,
  the conversion Nasr et al., "Tight auditing of differentially private machine learning"
  (USENIX Security 2023) use to state a Gaussian-DP audit as an epsilon.
- :func:`required_correct`: the fewest correct guesses that reject a given epsilon.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit, log_ndtr, ndtr, ndtri
from scipy.stats import binom

__all__ = ["gaussian_mu", "gaussian_rejects", "gdp_delta", "gdp_epsilon", "one_run_epsilon", "one_run_p_value",
           "required_correct"]

#: Bits of the search: the bracket shrinks by 2^-64, below float64's resolution of the answer.
_BITS = 64
#: The largest epsilon (and mu) the searches consider: beyond every bound a run can show.
_CEILING = 128.0
#: Entries of the binomial table that :func:`_delta_weight` holds at once.
_CHUNK = 1 << 20


def _counts(m: Any, r: Any, v: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``m``, ``r``, ``v`` broadcast as float64 arrays, checked to be integers with 0 <= v <= r <= m, m >= 1."""
    arrays = np.broadcast_arrays(*(np.asarray(x, dtype=np.float64) for x in (m, r, v)))
    for name, a in zip(("m", "r", "v"), arrays):
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise ValueError(f"{name} must hold whole numbers, got {a}")
    m, r, v = (np.array(a) for a in arrays)
    if np.any(m < 1) or np.any(v < 0) or np.any(v > r) or np.any(r > m):
        raise ValueError("need 0 <= v (correct) <= r (guesses) <= m (canaries) and m >= 1")
    return m, r, v


def _check_delta(delta: Any) -> np.ndarray:
    d = np.asarray(delta, dtype=np.float64)
    if np.any(~(d >= 0)) or np.any(d >= 1):
        raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
    return d


def _significance(confidence: float) -> float:
    if isinstance(confidence, bool) or not 0.0 < float(confidence) < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    return 1.0 - float(confidence)


def _delta_weight(r: np.ndarray, v: np.ndarray, q: np.ndarray) -> np.ndarray:
    """``max_{1<=i<=v} P[v - i <= W < v] / i`` for ``W ~ Binomial(r, q)`` (0 where ``v = 0``), elementwise."""
    flat_r, flat_v, flat_q = (a.ravel() for a in (r, v, q))
    top = int(flat_v.max(initial=0))
    out = np.zeros(flat_r.shape)
    if top == 0:
        return out.reshape(r.shape)
    i = np.arange(1, top + 1, dtype=np.float64)
    rows = max(1, _CHUNK // top)  # rows of the [cells, top] table held at once
    for start in range(0, len(out), rows):
        part = slice(start, start + rows)
        pmf = binom.pmf(flat_v[part, None] - i[None, :], flat_r[part, None], flat_q[part, None])  # 0 below 0
        out[part] = (np.cumsum(pmf, axis=1) / i[None, :]).max(axis=1)
    return out.reshape(r.shape)


def one_run_p_value(m: Any, r: Any, v: Any, epsilon: Any, delta: Any = 0.0) -> np.ndarray:
    """Probability of at least ``v`` correct of ``r`` guesses among ``m`` canaries under (epsilon, delta)-DP.

    Steinke, Nasr & Jagielski (2023), Section 5 (and ``p_value_DP_audit``, Appendix D):
    with ``W ~ Binomial(r, e^eps / (1 + e^eps))``, the number correct is stochastically
    dominated up to delta's share,

        p = P[W >= v] + 2 m delta max_{1 <= i <= v} P[v - i <= W < v] / i,

    capped at 1. A p-value below ``1 - confidence`` rejects the claim.
    """
    m, r, v = _counts(m, r, v)
    eps = np.asarray(epsilon, dtype=np.float64)
    delta = _check_delta(delta)
    m, r, v, eps, delta = np.broadcast_arrays(m, r, v, eps, delta)
    q = expit(eps)
    tail = binom.sf(v - 1, r, q)
    if np.any(delta > 0):
        tail = tail + 2.0 * m * delta * _delta_weight(r, v, q)
    return np.minimum(tail, 1.0)


def _largest_rejected(rejects, shape: tuple[int, ...], *, ways: int = 1) -> np.ndarray:
    """Largest x in [0, _CEILING] with ``rejects(x)`` true, where ``rejects`` holds on an interval [0, x*);
    0 where ``rejects(0)`` is false.

    ``rejects`` takes and returns arrays of ``shape + (k,)`` (k trial points per cell). The
    bracket is found among the powers of two up to ``_CEILING``, then cut into ``ways + 1``
    parts per pass (bisection for ``ways = 1``) until float64 resolution: several points per
    pass save passes where each call has a fixed cost (a recursion over the guesses).
    """
    powers = 2.0 ** np.arange(int(np.log2(_CEILING)) + 1)
    count = rejects(np.broadcast_to(powers, shape + powers.shape)).sum(axis=-1)
    lo = np.where(count > 0, 2.0 ** (count - 1), 0.0)
    hi = np.where(count < len(powers), 2.0 ** count, _CEILING)
    fractions = np.arange(1, ways + 1) / (ways + 1)
    for _ in range(-(-_BITS // int(np.log2(ways + 1)))):
        points = lo[..., None] + (hi - lo)[..., None] * fractions
        below = rejects(points).sum(axis=-1)[..., None]
        lo = np.where(below > 0, np.take_along_axis(points, np.maximum(below - 1, 0), -1), lo[..., None])[..., 0]
        hi = np.where(below < ways, np.take_along_axis(points, np.minimum(below, ways - 1), -1), hi[..., None])[..., 0]
    return np.where(rejects(np.zeros(shape + (1,)))[..., 0], lo, 0.0)


def one_run_epsilon(m: Any, r: Any, v: Any, *, delta: Any = 0.0, confidence: float = 0.95) -> np.ndarray:
    """Largest epsilon that ``v`` correct of ``r`` guesses among ``m`` canaries reject at ``confidence``.

    The one-run lower bound of Steinke, Nasr & Jagielski (2023): with probability at least
    ``confidence`` over the canaries' inclusion, the training algorithm is not
    (epsilon', ``delta``)-DP for any epsilon' below the result (0 when nothing is rejected).
    The largest epsilon whose :func:`one_run_p_value` is below ``1 - confidence``, by
    bisection to float64 resolution. With ``delta = 0`` and ``v = r`` it is
    ``log(p / (1 - p))`` for ``p = (1 - confidence)^(1/r)``.
    """
    alpha = _significance(confidence)
    m, r, v = _counts(m, r, v)
    delta = _check_delta(delta)
    m, r, v, delta = (np.array(a) for a in np.broadcast_arrays(m, r, v, delta))
    m, r, v, delta = (a[..., None] for a in (m, r, v, delta))
    return _largest_rejected(lambda eps: one_run_p_value(m, r, v, eps, delta) < alpha, m.shape[:-1])


def gaussian_rejects(m: Any, r: Any, v: Any, mu: Any, *, confidence: float = 0.95) -> np.ndarray:
    """Whether ``v`` correct of ``r`` guesses among ``m`` canaries rule out mu-GDP at ``confidence``.

    Mahloujifar, Melis & Chaudhuri's one-run test for an f-DP mechanism (their recursion
    with abstentions, alphabet k = 2), with the Gaussian trade-off f = G_mu whose inverse
    blow-up is ``fbar^-1(x) = Phi(Phi^-1(x) - mu)``. With tau = ``1 - confidence``, start
    from ``r_v = tau v / m`` and ``h_v = tau (r - v) / m`` and for ``i = v-1, ..., 0``

        h_i = max(h_{i+1}, fbar^-1(r_{i+1})),   r_i = min(r_{i+1} + i / (r - i) (h_i - h_{i+1}), 1);

    the claim is rejected when ``r_0 + h_0 > r / m``.
    """
    tau = _significance(confidence)
    m, r, v = _counts(m, r, v)
    m, r, v, mu = (np.array(a) for a in np.broadcast_arrays(m, r, v, np.asarray(mu, dtype=np.float64)))
    recall, hits = (tau * v / m).ravel(), (tau * (r - v) / m).ravel()
    flat_r, flat_v, flat_mu = r.ravel(), v.ravel(), mu.ravel()
    live = np.arange(recall.size)  # cells still moving: once h_i = h_{i+1}, neither changes again
    for i in range(int(flat_v.max(initial=0)) - 1, -1, -1):
        cells = live[flat_v[live] > i]
        if cells.size == 0:
            continue
        h_old = hits[cells]
        h_new = np.maximum(h_old, ndtr(ndtri(recall[cells]) - flat_mu[cells]))
        recall[cells] = np.minimum(recall[cells] + i / (flat_r[cells] - i) * (h_new - h_old), 1.0)
        hits[cells] = h_new
        live = np.setdiff1d(live, cells[h_new == h_old], assume_unique=True)
        if live.size == 0:
            break
    recall, hits = recall.reshape(m.shape), hits.reshape(m.shape)
    return recall + hits > r / m


def gaussian_mu(m: Any, r: Any, v: Any, *, confidence: float = 0.95) -> np.ndarray:
    """Largest mu such that ``v`` correct of ``r`` guesses among ``m`` canaries rule out mu-GDP (0 if none).

    The Gaussian-DP lower bound in one run: :func:`gaussian_rejects` holds for every mu
    below it. By bisection to float64 resolution; :func:`gdp_epsilon` states it as an
    epsilon at a delta.
    """
    _significance(confidence)
    m, r, v = _counts(m, r, v)
    m, r, v = (np.array(a) for a in np.broadcast_arrays(m, r, v))
    m, r, v = (a[..., None] for a in (m, r, v))
    return _largest_rejected(lambda mu: gaussian_rejects(m, r, v, mu, confidence=confidence), m.shape[:-1],
                             ways=31)


def gdp_delta(mu: Any, epsilon: Any) -> np.ndarray:
    """The delta at which mu-GDP is (epsilon, delta)-DP (Dong, Roth & Su 2022, Corollary 2.13).

        delta(eps) = Phi(-eps / mu + mu / 2) - e^eps Phi(-eps / mu - mu / 2),

    computed in log space; 0 for ``mu = 0``.
    """
    mu, eps = np.broadcast_arrays(np.asarray(mu, dtype=np.float64), np.asarray(epsilon, dtype=np.float64))
    safe = np.where(mu > 0, mu, 1.0)
    upper = log_ndtr(-eps / safe + safe / 2)
    lower = eps + log_ndtr(-eps / safe - safe / 2)
    with np.errstate(divide="ignore"):
        out = np.exp(upper + np.log1p(-np.exp(np.minimum(lower - upper, 0.0))))
    return np.where(mu > 0, out, 0.0)


def gdp_epsilon(mu: Any, delta: Any) -> np.ndarray:
    """The smallest epsilon >= 0 at which mu-GDP is (epsilon, ``delta``)-DP: the inverse of :func:`gdp_delta`.

    ``delta`` must lie in (0, 1). A lower bound on mu is thereby a lower bound on epsilon at
    that delta (every (epsilon, delta)-DP mechanism's trade-off dominates G_mu only for mu
    with gdp_delta(mu, epsilon) <= delta). By bisection to float64 resolution.
    """
    d = np.asarray(delta, dtype=np.float64)
    if np.any(~(d > 0)) or np.any(d >= 1):
        raise ValueError(f"delta must lie in (0, 1), got {delta!r}")
    mu, d = (np.array(a) for a in np.broadcast_arrays(np.asarray(mu, dtype=np.float64), d))
    if np.any(~(mu >= 0)):
        raise ValueError(f"mu must be >= 0, got {mu}")
    return _largest_rejected(lambda eps: gdp_delta(mu[..., None], eps) > d[..., None], mu.shape, ways=15)


def required_correct(m: Any, r: Any, epsilon: Any, *, delta: Any = 0.0, confidence: float = 0.95) -> np.ndarray:
    """Fewest correct of ``r`` guesses among ``m`` canaries whose one-run bound exceeds ``epsilon``.

    The smallest ``v`` with :func:`one_run_p_value` below ``1 - confidence`` (the p-value
    falls as ``v`` grows); ``r + 1`` where even ``r`` correct guesses do not reject
    ``epsilon``. As float64 (whole numbers), for plotting ``v / r`` against ``r``.
    """
    alpha = _significance(confidence)
    m, r, _ = _counts(m, r, 0)
    m, r, eps, delta = (np.array(a) for a in np.broadcast_arrays(m, r, np.asarray(epsilon, float), _check_delta(delta)))
    rejects = one_run_p_value(m, r, r, eps, delta) < alpha
    lo, hi = np.full(m.shape, -1.0), r.copy()  # p(lo) >= alpha (v = -1 stands for "none"), p(hi) < alpha
    while np.any(hi - lo > 1):
        mid = np.floor(0.5 * (lo + hi))
        mid = np.where(hi - lo > 1, np.maximum(mid, 0.0), lo)
        below = one_run_p_value(m, r, mid, eps, delta) < alpha
        moving = hi - lo > 1
        hi = np.where(moving & below, mid, hi)
        lo = np.where(moving & ~below, mid, lo)
    return np.where(rejects, hi, r + 1)
