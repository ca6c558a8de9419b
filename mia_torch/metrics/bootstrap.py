"""Stratified bootstrap confidence intervals for membership-inference metrics."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .roc import _check_fpr_targets, tpr_key, validate_scores_labels

__all__ = ["bootstrap_intervals", "bootstrap_samples"]


def bootstrap_samples(
    scores: Any,
    labels: Any,
    *,
    fpr_targets: Sequence[float] = (0.01, 0.001),
    num_resamples: int = 200,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Bootstrap distribution of ``auc``, ``advantage`` and each ``tpr@<t>fpr``.

    Members and non-members are resampled separately with replacement (stratified),
    so every resample keeps the original class sizes. The scores are sorted and grouped
    into distinct values once; each resample only draws indices, counts them per
    distinct value (``bincount``) and accumulates, which costs O(N) per resample and
    gives exactly the metrics :func:`~mia_torch.metrics.membership_metrics` would compute
    on the resampled data; a side with more than :data:`DRAW_CHUNK` examples is drawn in
    chunks, so memory stays bounded. Returns ``{key: float64[num_resamples]}``.
    """
    s, y = validate_scores_labels(scores, labels)
    targets = _check_fpr_targets(fpr_targets)
    num_resamples = int(num_resamples)
    if num_resamples < 1:
        raise ValueError(f"num_resamples must be >= 1, got {num_resamples}")

    # group id of each example: 0 for the highest distinct score, increasing downwards
    order = np.argsort(s, kind="mergesort")[::-1]
    s_sorted = s[order]
    group_sorted = np.r_[0, np.cumsum(s_sorted[1:] != s_sorted[:-1])]
    num_groups = int(group_sorted[-1]) + 1
    group = np.empty(s.size, dtype=np.int64)
    group[order] = group_sorted
    member_groups = group[y]
    nonmember_groups = group[~y]
    n_pos = member_groups.size
    n_neg = nonmember_groups.size

    rng = np.random.default_rng(seed)
    keys = ["auc", "advantage"] + [tpr_key(t) for t in targets]
    out = {k: np.empty(num_resamples, dtype=np.float64) for k in keys}
    tpr = np.zeros(num_groups + 1, dtype=np.float64)
    fpr = np.zeros(num_groups + 1, dtype=np.float64)
    for b in range(num_resamples):
        np.cumsum(_resampled_counts(rng, member_groups, num_groups), out=tpr[1:])
        np.cumsum(_resampled_counts(rng, nonmember_groups, num_groups), out=fpr[1:])
        tpr[1:] /= n_pos
        fpr[1:] /= n_neg
        out["auc"][b] = np.trapezoid(tpr, fpr)
        out["advantage"][b] = np.max(tpr - fpr)
        for t in targets:
            # fpr and tpr are non-decreasing: the last point with fpr <= t has the max tpr
            idx = np.searchsorted(fpr, t, side="right") - 1
            out[tpr_key(t)][b] = tpr[idx]
    return out


#: Indices drawn at once per resample: larger sides are resampled in chunks of this many (same
#: distribution, bounded memory); sides up to this size are drawn in one call.
DRAW_CHUNK = 1 << 22


def _resampled_counts(rng: np.random.Generator, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """How often each score group occurs in one resample (with replacement) of ``groups``, drawn in chunks."""
    n = groups.size
    if n <= DRAW_CHUNK:
        return np.bincount(groups[rng.integers(0, n, size=n)], minlength=num_groups)
    counts = np.zeros(num_groups, dtype=np.int64)
    for start in range(0, n, DRAW_CHUNK):
        counts += np.bincount(groups[rng.integers(0, n, size=min(DRAW_CHUNK, n - start))], minlength=num_groups)
    return counts


def bootstrap_intervals(
    scores: Any,
    labels: Any,
    *,
    fpr_targets: Sequence[float] = (0.01, 0.001),
    num_resamples: int = 200,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap confidence intervals for ``auc``, ``advantage`` and TPR@FPR.

    Resamples members and non-members separately (see :func:`bootstrap_samples`),
    ``num_resamples`` times with a generator seeded by ``seed`` (deterministic), and
    returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of each
    metric as ``{key: (low, high)}`` with plain floats. 200 resamples of 50,000 scores
    take about a second on one CPU core.
    """
    confidence = float(confidence)
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    samples = bootstrap_samples(
        scores,
        labels,
        fpr_targets=fpr_targets,
        num_resamples=num_resamples,
        seed=seed,
    )
    alpha = 1.0 - confidence
    out: dict[str, tuple[float, float]] = {}
    for key, values in samples.items():
        low, high = np.quantile(values, [alpha / 2.0, 1.0 - alpha / 2.0])
        out[key] = (float(low), float(high))
    return out
