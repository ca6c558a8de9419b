"""Membership-inference metrics: ROC, AUC, TPR at fixed FPR, bootstrap intervals, calibration, empirical epsilon.

Scores are ``float[N]`` with higher = more likely member; labels are ``bool[N]`` with
``True`` = member. Functions return plain Python floats (or small dataclasses).
"""
from .bootstrap import bootstrap_intervals, bootstrap_samples
from .calibration import (
    CalibrationBins,
    ConfidenceGap,
    calibration_bins,
    confidence_gap,
    expected_calibration_error,
)
from .intervals import clopper_pearson
from .precision import DEFAULT_PRIORS, PrecisionPoint, expected_false_flags, precision_at_priors
from .privacy import EpsilonLowerBound, empirical_epsilon
from .roc import (
    aggregate,
    auc_score,
    average_ranks,
    balanced_accuracy_at,
    membership_metrics,
    roc_curve,
    tpr_at_fpr,
    tpr_key,
    validate_scores_labels,
)

__all__ = [
    "DEFAULT_PRIORS",
    "PrecisionPoint",
    "CalibrationBins",
    "ConfidenceGap",
    "EpsilonLowerBound",
    "aggregate",
    "auc_score",
    "average_ranks",
    "balanced_accuracy_at",
    "bootstrap_intervals",
    "bootstrap_samples",
    "calibration_bins",
    "clopper_pearson",
    "confidence_gap",
    "empirical_epsilon",
    "expected_calibration_error",
    "expected_false_flags",
    "membership_metrics",
    "precision_at_priors",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_key",
    "validate_scores_labels",
]
