"""Membership-inference metrics: ROC, AUC, TPR at fixed FPR, bootstrap intervals.

Scores are ``float[N]`` with higher = more likely member; labels are ``bool[N]`` with
``True`` = member. Functions return plain Python floats.
"""
from .bootstrap import bootstrap_intervals, bootstrap_samples
from .intervals import clopper_pearson
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
    "aggregate",
    "auc_score",
    "average_ranks",
    "balanced_accuracy_at",
    "bootstrap_intervals",
    "bootstrap_samples",
    "clopper_pearson",
    "membership_metrics",
    "roc_curve",
    "tpr_at_fpr",
    "tpr_key",
    "validate_scores_labels",
]
