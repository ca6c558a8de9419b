"""From canary scores to bounds: guess IN for the k+ highest scores, OUT for the k- lowest, abstain on the rest.

The auditor does not know beforehand which (k+, k-) works best, so it tries every pair of
a grid fixed before the scores are seen and keeps the best bound. Picking the best of G
tests on the same canaries would overstate the confidence; each test therefore runs at
significance ``(1 - confidence) / G`` (Bonferroni), and by the union bound the reported
maximum holds with probability at least ``confidence``.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from mia_torch.dp_audit.bounds import gaussian_mu, gdp_epsilon, one_run_epsilon, required_correct
from mia_torch.dp_audit.result import GuessBound, PrecisionCurve

__all__ = ["audit_scores", "correct_guesses", "guess_grid", "precision_curve"]

#: Points of the precision curve (guesses from 1 to m, spaced evenly on a log axis).
CURVE_POINTS = 40


def guess_grid(count: int, fractions: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Every (k+, k-) with k+ and k- in {0} and ``ceil(f * count)`` for the ``fractions`` f, both not 0 and
    together at most ``count``: the choices the audit searches (fixed before any score is seen)."""
    sizes = np.unique([0] + [min(count, math.ceil(f * count)) for f in fractions])
    k_plus, k_minus = (a.ravel() for a in np.meshgrid(sizes, sizes, indexing="ij"))
    keep = (k_plus + k_minus > 0) & (k_plus + k_minus <= count)
    return k_plus[keep].astype(np.int64), k_minus[keep].astype(np.int64)


def _ranked(scores: np.ndarray, included: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative counts of IN among the k highest scores and of OUT among the k lowest, for k = 0..m.

    Ties are broken by canary order (which carries no information about the bits); NaN
    scores count as the lowest.
    """
    s = np.nan_to_num(np.asarray(scores, dtype=np.float64), nan=-np.inf)
    bits = np.asarray(included, dtype=bool)[np.argsort(-s, kind="stable")]
    top_in = np.concatenate([[0], np.cumsum(bits)])
    bottom_out = np.concatenate([[0], np.cumsum(~bits[::-1])])
    return top_in, bottom_out


def correct_guesses(scores: np.ndarray, included: np.ndarray, k_plus: np.ndarray, k_minus: np.ndarray) -> np.ndarray:
    """How many guesses are right when the ``k_plus`` highest scores are guessed IN and the ``k_minus`` lowest OUT."""
    top_in, bottom_out = _ranked(scores, included)
    return top_in[k_plus] + bottom_out[k_minus]


def _best(bounds: np.ndarray, guesses: np.ndarray) -> int:
    """The cell with the largest bound; among ties the most guesses (with no bound above 0, the ceiling reported
    is then the most any choice of the grid could show)."""
    return int(np.lexsort((-guesses, -bounds))[0])


def audit_scores(scores: np.ndarray, included: np.ndarray, *, delta: float, confidence: float,
                 fractions: Sequence[float]) -> tuple[GuessBound, GuessBound, int]:
    """The one-run and Gaussian-DP bounds of canary ``scores`` (higher = member) against their bits ``included``.

    Returns ``(one_run, gaussian, grid_size)``: each bound the best over the
    :func:`guess_grid` of ``fractions``, every cell tested at the Bonferroni level.
    """
    scores, included = np.asarray(scores, dtype=np.float64), np.asarray(included, dtype=bool)
    if scores.shape != included.shape or scores.ndim != 1 or scores.size == 0:
        raise ValueError(f"scores {scores.shape} and inclusion bits {included.shape} must be matching 1-d arrays")
    m = len(scores)
    k_plus, k_minus = guess_grid(m, fractions)
    level = 1.0 - (1.0 - confidence) / len(k_plus)
    guesses = k_plus + k_minus
    correct = correct_guesses(scores, included, k_plus, k_minus)
    epsilon = one_run_epsilon(m, guesses, correct, delta=delta, confidence=level)
    i = _best(epsilon, guesses)
    one_run = GuessBound(epsilon=float(epsilon[i]), k_plus=int(k_plus[i]), k_minus=int(k_minus[i]),
                         correct=int(correct[i]),
                         ceiling=float(one_run_epsilon(m, guesses[i], guesses[i], delta=delta, confidence=level)))
    mu = gaussian_mu(m, guesses, correct, confidence=level)
    j = _best(mu, guesses)
    ceiling_mu = gaussian_mu(m, guesses[j], guesses[j], confidence=level)
    gaussian = GuessBound(epsilon=float(gdp_epsilon(mu[j], delta)), k_plus=int(k_plus[j]), k_minus=int(k_minus[j]),
                          correct=int(correct[j]), ceiling=float(gdp_epsilon(ceiling_mu, delta)), mu=float(mu[j]))
    return one_run, gaussian, len(k_plus)


def precision_curve(scores: np.ndarray, included: np.ndarray, *, delta: float, level: float,
                    epsilons: dict[str, float]) -> PrecisionCurve:
    """Precision of the r highest scores guessed IN (and of r/2 IN, r/2 OUT) against r, with the precision
    each of ``epsilons`` (label -> finite epsilon) needs for the one-run bound at ``level`` to exceed it."""
    m = len(scores)
    top_in, bottom_out = _ranked(scores, included)
    r = np.unique(np.geomspace(1, m, CURVE_POINTS).round().astype(np.int64))
    two_sided = (top_in[(r + 1) // 2] + bottom_out[r // 2]) / r
    needed = {}
    for label, eps in epsilons.items():
        v = required_correct(m, r, eps, delta=delta, confidence=level)
        needed[label] = np.where(v <= r, v / r, np.nan).tolist()
    return PrecisionCurve(guesses=r.tolist(), precision=(top_in[r] / r).tolist(), two_sided=two_sided.tolist(),
                          needed=needed)
