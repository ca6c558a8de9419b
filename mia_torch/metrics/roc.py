"""ROC curve, AUC, TPR at a fixed FPR, balanced accuracy and membership advantage.

All functions take numpy-compatible inputs and return plain Python floats (or numpy
arrays for curves). Scores are ``float[N]`` with *higher = more likely member*; labels are
``bool[N]`` with ``True`` = member. An example is predicted "member" at threshold ``t``
when ``score >= t``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "validate_scores_labels",
    "roc_curve",
    "curve_points",
    "auc_score",
    "tpr_at_fpr",
    "tpr_key",
    "balanced_accuracy_at",
    "membership_metrics",
    "average_ranks",
    "aggregate",
]


def validate_scores_labels(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
    """Check and convert membership scores and labels to ``(float64[N], bool[N])``.

    Scores must be a finite 1-D numeric array; labels a 1-D array of the same length
    holding booleans or 0/1 values, with at least one member and one non-member.
    Raises ``ValueError`` with a message naming the problem otherwise.
    """
    s = np.asarray(scores)
    y = np.asarray(labels)
    if s.ndim != 1:
        raise ValueError(f"scores must be 1-D, got shape {s.shape}")
    if y.ndim != 1:
        raise ValueError(f"labels must be 1-D, got shape {y.shape}")
    if s.shape[0] != y.shape[0]:
        raise ValueError(
            f"scores and labels differ in length: {s.shape[0]} vs {y.shape[0]}"
        )
    if not (np.issubdtype(s.dtype, np.number) or s.dtype == np.bool_):
        raise ValueError(f"scores must be numeric, got dtype {s.dtype}")
    s = s.astype(np.float64, copy=False)
    if not np.all(np.isfinite(s)):
        bad = int(np.count_nonzero(~np.isfinite(s)))
        raise ValueError(f"scores contain {bad} non-finite value(s) (NaN or inf)")
    if y.dtype != np.bool_:
        if not np.issubdtype(y.dtype, np.number):
            raise ValueError(f"labels must be boolean or 0/1, got dtype {y.dtype}")
        if not np.all((y == 0) | (y == 1)):
            raise ValueError("labels must be boolean or 0/1 valued")
        y = y == 1
    n_pos = int(np.count_nonzero(y))
    if n_pos == 0 or n_pos == y.shape[0]:
        raise ValueError(
            "labels must contain both members and non-members "
            f"(got {n_pos} members out of {y.shape[0]})"
        )
    return s, y


def roc_curve(scores: Any, labels: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Receiver operating characteristic of a membership score.

    Sorts the scores once in decreasing order; each distinct score value is one
    threshold (tied scores enter together), so the curve has one point per distinct
    value plus a leading ``(0, 0)`` point at threshold ``+inf``. Returns ``(fpr, tpr,
    thresholds)`` as float64 arrays, identical to
    ``sklearn.metrics.roc_curve(labels, scores, drop_intermediate=False)``.
    """
    s, y = validate_scores_labels(scores, labels)
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    y_sorted = y[order]
    # index of the last element of each run of equal scores
    last = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.float64)[last]
    fps = 1.0 + last.astype(np.float64) - tps
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, s_sorted[last]]
    return fps / fps[-1], tps / tps[-1], thresholds


#: Most points of a ROC curve that figures draw (:func:`curve_points`). A pooled ROC of every target has one
#: point per distinct score (millions at paper scale), far more than a figure shows.
MAX_CURVE_POINTS = 20_000
#: The FPR at which a figure's legend reads each curve's TPR (kept exact by :func:`curve_points`).
LEGEND_FPR = 1e-3


def curve_points(fpr: np.ndarray, *, max_points: int = MAX_CURVE_POINTS) -> np.ndarray:
    """Indices of the points of a ROC curve (``fpr`` non-decreasing) that figures draw.

    All of them up to ``max_points``; else, for ``max_points / 4`` FPRs spaced evenly on a
    log axis and as many on a linear one, and for :data:`LEGEND_FPR`, the last point at or
    below it (its highest TPR there) and the point after it, with both ends: the TPR at
    :data:`LEGEND_FPR` (:func:`tpr_at_fpr`) is the same on the kept points as on the whole
    curve. Metrics always use every point.
    """
    if fpr.size <= max_points:
        return np.arange(fpr.size)
    positive = fpr[fpr > 0]
    lowest = float(positive.min()) if positive.size else 1.0
    grid = np.concatenate([np.geomspace(lowest, 1.0, max_points // 4), np.linspace(0.0, 1.0, max_points // 4),
                           [LEGEND_FPR]])
    last = np.searchsorted(fpr, grid, side="right") - 1
    return np.unique(np.concatenate([[0, fpr.size - 1], last, np.minimum(last + 1, fpr.size - 1)]))


def auc_score(fpr: Any, tpr: Any) -> float:
    """Area under a ROC curve by the trapezoid rule.

    ``fpr`` must be non-decreasing (as returned by :func:`roc_curve`); tied scores give a
    diagonal segment, i.e. half credit, which matches ``sklearn.metrics.roc_auc_score``.
    """
    x = np.asarray(fpr, dtype=np.float64)
    yv = np.asarray(tpr, dtype=np.float64)
    if x.ndim != 1 or x.shape != yv.shape or x.size < 2:
        raise ValueError("fpr and tpr must be 1-D arrays of equal length >= 2")
    if np.any(np.diff(x) < 0):
        raise ValueError("fpr must be non-decreasing")
    return float(np.trapezoid(yv, x))


def tpr_at_fpr(fpr: Any, tpr: Any, target: float) -> float:
    """True-positive rate at a fixed false-positive rate.

    Convention (as in Carlini et al., "Membership Inference Attacks From First
    Principles", 2022): the largest TPR among the ROC points whose FPR is at most
    ``target``; no interpolation between points. With ``N`` non-members the smallest
    non-zero FPR is ``1/N``, so for ``target < 1/N`` this is the TPR reachable with zero
    false positives. Returns 0.0 if no ROC point has FPR <= target.
    """
    x = np.asarray(fpr, dtype=np.float64)
    yv = np.asarray(tpr, dtype=np.float64)
    if x.shape != yv.shape or x.ndim != 1:
        raise ValueError("fpr and tpr must be 1-D arrays of equal length")
    target = float(target)
    if not 0.0 <= target <= 1.0:
        raise ValueError(f"target FPR must lie in [0, 1], got {target}")
    mask = x <= target
    if not np.any(mask):
        return 0.0
    return float(np.max(yv[mask]))


def tpr_key(target: float) -> str:
    """Metric key for the TPR at FPR ``target``, e.g. ``tpr@0.001fpr``."""
    return f"tpr@{float(target):g}fpr"


def balanced_accuracy_at(scores: Any, labels: Any, threshold: float) -> float:
    """Balanced accuracy ``(TPR + TNR) / 2`` when predicting member for ``score >= threshold``."""
    s, y = validate_scores_labels(scores, labels)
    pred = s >= float(threshold)
    tpr = np.count_nonzero(pred & y) / np.count_nonzero(y)
    tnr = np.count_nonzero(~pred & ~y) / np.count_nonzero(~y)
    return float(0.5 * (tpr + tnr))


def _check_fpr_targets(fpr_targets: Sequence[float]) -> tuple[float, ...]:
    targets = tuple(float(t) for t in fpr_targets)
    for t in targets:
        if not (0.0 < t <= 1.0):
            raise ValueError(f"FPR targets must lie in (0, 1], got {t}")
    return targets


def membership_metrics(
    scores: Any,
    labels: Any,
    *,
    fpr_targets: Sequence[float] = (0.01, 0.001),
    threshold: float | None = None,
    roc: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Headline metrics of one attack on one target model.

    Returns a dict with ``auc``; ``advantage`` = max over thresholds of TPR - FPR;
    ``balanced_accuracy`` at ``threshold`` when given (the attack's calibrated
    threshold, member when ``score >= threshold``; ``balanced_accuracy_threshold`` =
    ``"calibrated"``) or else at the best threshold, ``0.5 + advantage / 2``
    (``"best"``); ``tpr@<t>fpr`` for each target (see :func:`tpr_at_fpr`);
    ``num_members`` and ``num_nonmembers``. ``roc`` is ``roc_curve(scores, labels)``
    when the caller already has it. Raises ``ValueError`` on invalid input.
    """
    s, y = validate_scores_labels(scores, labels)
    targets = _check_fpr_targets(fpr_targets)
    fpr, tpr, _ = roc_curve(s, y) if roc is None else roc
    advantage = float(np.max(tpr - fpr))
    out: dict[str, Any] = {"auc": auc_score(fpr, tpr), "advantage": advantage}
    if threshold is not None:
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold must not be NaN")
        out["balanced_accuracy"] = balanced_accuracy_at(s, y, threshold)
        out["balanced_accuracy_threshold"] = "calibrated"
    else:
        out["balanced_accuracy"] = 0.5 + 0.5 * advantage
        out["balanced_accuracy_threshold"] = "best"
    for t in targets:
        out[tpr_key(t)] = tpr_at_fpr(fpr, tpr, t)
    out["num_members"] = int(np.count_nonzero(y))
    out["num_nonmembers"] = int(y.size - np.count_nonzero(y))
    return out


def average_ranks(values: Any) -> np.ndarray:
    """1-based ranks of ``values`` in increasing order, ties sharing their average rank."""
    x = np.asarray(values)
    if x.ndim != 1:
        raise ValueError(f"values must be 1-D, got shape {x.shape}")
    n = x.size
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    boundaries = np.flatnonzero(xs[1:] != xs[:-1]) + 1
    starts = np.r_[0, boundaries]
    ends = np.r_[boundaries, n]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def _is_number(v: Any) -> bool:
    if isinstance(v, (bool, np.bool_)):
        return False
    return isinstance(v, (int, float, np.integer, np.floating))


def aggregate(per_target: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean and standard deviation of each numeric metric across target models.

    ``per_target`` is a list of :func:`membership_metrics` dicts (one per target model).
    Non-numeric entries (strings, booleans, nested values) are skipped; a key missing
    from some dicts is aggregated over the dicts that have it. The std is the sample
    standard deviation (``ddof=1``), 0.0 for a single target. Returns
    ``{key: {"mean": float, "std": float}}`` in first-seen key order.
    """
    if len(per_target) == 0:
        raise ValueError("aggregate needs at least one metrics dict")
    values: dict[str, list[float]] = {}
    for metrics in per_target:
        for key, v in metrics.items():
            if _is_number(v):
                values.setdefault(key, []).append(float(v))
    out: dict[str, dict[str, float]] = {}
    for key, vs in values.items():
        arr = np.asarray(vs, dtype=np.float64)
        std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
        out[key] = {"mean": float(np.mean(arr)), "std": std}
    return out
