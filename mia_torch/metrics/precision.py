"""Precision at a membership prior: of the records an attack flags, how many are members?

TPR at a fixed FPR says how an attack does on a balanced set. An auditor facing a
population where a fraction π of the records are members needs the positive predictive
value at that prior (Jayaraman et al., "Revisiting membership inference under realistic
assumptions", PETS 2021):

    PPV(π) = π·TPR / (π·TPR + (1 − π)·FPR),

at the ROC point where the TPR at FPR f is reported. Its interval is exact at that point's
threshold, like the TPR's Clopper–Pearson interval: TPR and FPR get Clopper–Pearson
intervals at level √confidence each (members and non-members are independent samples, so
both hold at once with probability at least ``confidence``), and PPV, increasing in TPR and
decreasing in FPR, lies between PPV(TPR_low, FPR_high) and PPV(TPR_high, FPR_low).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .intervals import clopper_pearson
from .roc import _check_fpr_targets, roc_curve, validate_scores_labels

__all__ = ["DEFAULT_PRIORS", "PrecisionPoint", "check_priors", "expected_false_flags", "operating_point",
           "positive_predictive_value", "precision_at_priors"]

#: Membership priors reported by default: a balanced set, one member in ten, one in a hundred.
DEFAULT_PRIORS = (0.5, 0.1, 0.01)


def check_priors(priors: Any, *, key: str = "priors") -> tuple[float, ...]:
    """``priors`` as a tuple of floats in (0, 1); ``ValueError`` naming ``key`` otherwise."""
    values = list(priors) if isinstance(priors, (list, tuple)) else None
    if not values or any(isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1 for p in values):
        raise ValueError(f"{key}={priors!r} is invalid: expected a non-empty list of membership priors in (0, 1), "
                         "e.g. [0.5, 0.1, 0.01]")
    return tuple(float(p) for p in values)


def positive_predictive_value(tpr: Any, fpr: Any, prior: float) -> np.ndarray:
    """``π·TPR / (π·TPR + (1 − π)·FPR)`` element-wise (float64); NaN where nothing is flagged (TPR = FPR = 0)."""
    tp = prior * np.asarray(tpr, dtype=np.float64)
    flagged = tp + (1.0 - prior) * np.asarray(fpr, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(flagged > 0, tp / np.where(flagged > 0, flagged, 1.0), np.nan)


def expected_false_flags(count: int, *, prior: float, fpr: float) -> float:
    """Expected number of non-members flagged among ``count`` records of which a fraction ``prior`` are members,
    by a test whose false-positive rate is ``fpr``: ``(1 − π)·count·fpr``."""
    return (1.0 - prior) * count * fpr


def operating_point(fpr: np.ndarray, tpr: np.ndarray, target: float) -> int:
    """Index of the ROC point where the TPR at FPR ``target`` is reported.

    The TPR there is the largest among the points with FPR <= ``target`` (as
    :func:`~mia_torch.metrics.tpr_at_fpr`); of the points that reach it, the one with the
    smallest FPR (the highest threshold: the same members flagged, fewest non-members).
    Point 0 (nothing flagged) when no other point qualifies.
    """
    allowed = np.flatnonzero(fpr <= target)
    best = tpr[allowed].max()
    return int(allowed[np.argmax(tpr[allowed] == best)])


@dataclass(frozen=True)
class PrecisionPoint:
    """PPV at ``prior`` at the ROC point reporting the TPR at FPR ``fpr_target``.

    ``tpr`` and ``fpr`` are the rates at that point (its score ``threshold``; member when
    ``score >= threshold``), ``ppv`` the precision (NaN when the point flags nothing) and
    ``ppv_ci`` its exact interval at level ``confidence`` (see the module docstring).
    """

    prior: float
    fpr_target: float
    threshold: float
    tpr: float
    fpr: float
    ppv: float
    ppv_ci: tuple[float, float]
    confidence: float


def precision_at_priors(
    scores: Any,
    labels: Any,
    *,
    fpr_targets: Sequence[float],
    priors: Sequence[float] = DEFAULT_PRIORS,
    confidence: float = 0.95,
    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> list[PrecisionPoint]:
    """PPV with its interval for every FPR target and prior (targets outer, priors inner).

    ``scores`` float ``[N]`` (higher = member), ``labels`` bool ``[N]``; ``roc`` is
    ``roc_curve(scores, labels)`` when the caller already has it.
    """
    s, y = validate_scores_labels(scores, labels)
    targets = _check_fpr_targets(fpr_targets)
    priors = check_priors(list(priors))
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
    fpr, tpr, thresholds = roc_curve(s, y) if roc is None else roc
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    level = math.sqrt(confidence)  # both intervals at once: sqrt(c)^2 = c (independent samples)
    out = []
    for target in targets:
        point = operating_point(fpr, tpr, target)
        tp, fp = round(tpr[point] * n_pos), round(fpr[point] * n_neg)
        tpr_low, tpr_high = clopper_pearson(tp, n_pos, confidence=level)
        fpr_low, fpr_high = clopper_pearson(fp, n_neg, confidence=level)
        for prior in priors:
            ppv = float(positive_predictive_value(tpr[point], fpr[point], prior))
            low = float(np.nan_to_num(positive_predictive_value(tpr_low, fpr_high, prior), nan=0.0))
            high = float(np.nan_to_num(positive_predictive_value(tpr_high, fpr_low, prior), nan=1.0))
            out.append(PrecisionPoint(prior=prior, fpr_target=target, threshold=float(thresholds[point]),
                                      tpr=float(tpr[point]), fpr=float(fpr[point]), ppv=ppv,
                                      ppv_ci=(low, high), confidence=float(confidence)))
    return out
