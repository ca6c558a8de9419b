"""Empirical lower bound on the differential-privacy epsilon implied by a membership attack."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .intervals import clopper_pearson
from .roc import roc_curve, validate_scores_labels

__all__ = ["EpsilonLowerBound", "empirical_epsilon"]

CORRECTIONS = ("bonferroni", "none")


@dataclass(frozen=True)
class EpsilonLowerBound:
    """The largest epsilon lower bound over an attack's ROC thresholds, and where it is attained.

    ``threshold`` is the score threshold (member when ``score >= threshold``), ``tpr``
    and ``fpr`` the rates there, ``tpr_interval`` and ``fpr_interval`` their
    Clopper–Pearson intervals at the per-threshold level used, ``num_thresholds`` the
    thresholds tried (the Bonferroni count) and ``confidence`` the level of the bound.
    """

    epsilon: float
    threshold: float
    tpr: float
    fpr: float
    tpr_interval: tuple[float, float]
    fpr_interval: tuple[float, float]
    delta: float
    confidence: float
    num_thresholds: int
    correction: str


def empirical_epsilon(
    scores: Any,
    labels: Any,
    *,
    delta: float,
    confidence: float = 0.95,
    correction: str = "bonferroni",
    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> EpsilonLowerBound:
    """Lower bound on epsilon from membership scores, as in DP auditing.

    An (epsilon, delta)-DP training algorithm bounds every membership test: TPR <=
    e^eps FPR + delta and 1 - FPR <= e^eps (1 - TPR) + delta. So each ROC threshold gives

        eps_lb = max(log((TPR_lo - delta) / FPR_hi), log((1 - delta - FPR_hi) / (1 - TPR_lo))),

    with TPR_lo and FPR_hi the Clopper–Pearson bounds of the observed rates (Jagielski,
    Ullman & Oprea, "Auditing Differentially Private Machine Learning: How Private is
    Private SGD?", NeurIPS 2020; Nasr, Song, Thakurta, Papernot & Carlini, "Adversary
    Instantiation: Lower Bounds for Differentially Private Machine Learning", IEEE S&P
    2021). The result is the maximum over the ROC's interior thresholds, clamped at 0.

    Confidence: the bound holds with probability >= ``confidence``. Picking the best of m
    thresholds on the same data would make a plain bound optimistic, so by default
    (``correction="bonferroni"``) every interval is a two-sided Clopper–Pearson interval
    at level 1 - (1 - confidence)/m: all m thresholds are covered at once, and the
    maximum keeps the level. ``correction="none"`` uses level ``confidence`` at each
    threshold (the uncorrected figure some papers report; optimistic). The rates are
    treated as binomial: exact when each (score, label) pair is an independent trial (a
    canary audited over many trainings); pooled over the examples of one model, which
    share that model, the bound is the usual heuristic audit, not a proof.

    ``scores`` float ``[N]`` (higher = member), ``labels`` bool ``[N]`` with members and
    non-members, ``0 <= delta < 1``; ``roc`` is ``roc_curve(scores, labels)`` when the
    caller already has it. Vectorised over the ROC points; the exact intervals are computed
    only where a point's bound can still be the largest (:func:`_best_bound`), which is a few
    percent of the points of a large pooled ROC.
    """
    s, y = validate_scores_labels(scores, labels)
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not 0.0 <= delta < 1.0:
        raise ValueError(f"delta must be a number in [0, 1), got {delta!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    if correction not in CORRECTIONS:
        raise ValueError(f"correction must be one of {list(CORRECTIONS)}, got {correction!r}")
    fpr, tpr, thresholds = roc_curve(s, y) if roc is None else roc
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    # Interior points: (0, 0) and (1, 1) can never give a positive bound.
    points = np.arange(1, fpr.size - 1) if fpr.size > 2 else np.array([fpr.size - 1])
    m = points.size
    level = 1.0 - (1.0 - confidence) / m if correction == "bonferroni" else confidence
    tp = np.rint(tpr[points] * n_pos)
    fp = np.rint(fpr[points] * n_neg)
    best, bound, tpr_ci, fpr_ci = _best_bound(tp, fp, n_pos, n_neg, delta=delta, level=level)
    return EpsilonLowerBound(
        epsilon=float(max(0.0, bound)),
        threshold=float(thresholds[points[best]]),
        tpr=float(tpr[points[best]]),
        fpr=float(fpr[points[best]]),
        tpr_interval=tpr_ci,
        fpr_interval=fpr_ci,
        delta=float(delta),
        confidence=float(confidence),
        num_thresholds=int(m),
        correction=correction,
    )


#: ROC points whose exact bound is computed at once (:func:`_best_bound`).
BOUND_BLOCK = 1 << 14


def _best_bound(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, *, delta: float, level: float
                ) -> tuple[int, float, tuple[float, float], tuple[float, float]]:
    """The ROC point (index into ``tp``/``fp``) with the largest bound, that bound, and its TPR and FPR intervals.

    The first point with the largest bound, as an evaluation of every point would find it,
    but Clopper-Pearson quantiles (the cost) are computed only for points whose bound from
    the observed rates, ``TPR - delta`` over ``FPR`` and ``1 - delta - FPR`` over ``1 - TPR``,
    is not below the best exact bound found so far: an interval holds its observed rate, so
    that bound is never below the exact one. Points are taken in descending order of it, a
    block at a time.
    """
    ceiling = np.nan_to_num(_log_ratio_bound(tp / n_pos, fp / n_neg, delta), nan=np.inf)  # 0/0: evaluate it
    order = np.argsort(-ceiling, kind="stable")
    best_index, best = -1, -np.inf
    for start in range(0, order.size, BOUND_BLOCK):
        block = order[start:start + BOUND_BLOCK]
        if start and best > -np.inf and ceiling[block[0]] < best - 1e-9 * (1.0 + abs(best)):
            break  # no later point can reach the best (the slack covers rounding)
        bound = _bounds(tp[block], fp[block], n_pos, n_neg, delta=delta, level=level)
        top = float(bound.max())
        if top > best or best_index < 0:
            candidates = block[bound == top]
            best, best_index = top, int(candidates.min())
        elif top == best:
            best_index = min(best_index, int(block[bound == top].min()))
    tpr_ci = clopper_pearson(tp[best_index], n_pos, confidence=level)
    fpr_ci = clopper_pearson(fp[best_index], n_neg, confidence=level)
    return best_index, best, (float(tpr_ci[0]), float(tpr_ci[1])), (float(fpr_ci[0]), float(fpr_ci[1]))


def _bounds(tp: np.ndarray, fp: np.ndarray, n_pos: int, n_neg: int, *, delta: float, level: float) -> np.ndarray:
    """The exact lower bound on ε of each ROC point (true and false positive counts ``tp``, ``fp``)."""
    tpr_lo, _ = clopper_pearson(tp, n_pos, confidence=level)
    _, fpr_hi = clopper_pearson(fp, n_neg, confidence=level)
    return _log_ratio_bound(tpr_lo, fpr_hi, delta)


def _log_ratio_bound(tpr: np.ndarray, fpr: np.ndarray, delta: float) -> np.ndarray:
    """The bound on ε that a TPR and FPR imply at δ: the larger of log((TPR - δ) / FPR) and
    log((1 - δ - FPR) / (1 - TPR))."""
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(tpr > delta, np.log((tpr - delta) / fpr), -np.inf)
        second = np.where(1.0 - delta - fpr > 0, np.log((1.0 - delta - fpr) / (1.0 - tpr)), -np.inf)
    return np.maximum(first, second)
