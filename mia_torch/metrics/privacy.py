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
    caller already has it. Vectorised over the ROC points.
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
    tpr_lo, tpr_hi = clopper_pearson(tp, n_pos, confidence=level)
    fpr_lo, fpr_hi = clopper_pearson(fp, n_neg, confidence=level)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.where(tpr_lo > delta, np.log((tpr_lo - delta) / fpr_hi), -np.inf)
        second = np.where(1.0 - delta - fpr_hi > 0, np.log((1.0 - delta - fpr_hi) / (1.0 - tpr_lo)), -np.inf)
    bound = np.maximum(first, second)
    best = int(np.argmax(bound))
    return EpsilonLowerBound(
        epsilon=float(max(0.0, bound[best])),
        threshold=float(thresholds[points[best]]),
        tpr=float(tpr[points[best]]),
        fpr=float(fpr[points[best]]),
        tpr_interval=(float(tpr_lo[best]), float(tpr_hi[best])),
        fpr_interval=(float(fpr_lo[best]), float(fpr_hi[best])),
        delta=float(delta),
        confidence=float(confidence),
        num_thresholds=int(m),
        correction=correction,
    )
