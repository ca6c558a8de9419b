"""Over-confidence of one model: expected calibration error and the member/non-member confidence gap.

Both take a model's logits ``[N, C]`` (one query, e.g. the identity view) and integer
labels ``[N]`` as numpy arrays or tensors; probabilities are computed in float64 from
the logits (see :mod:`mia_torch.signals.stats`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mia_torch.signals.stats import confidence

__all__ = ["CalibrationBins", "calibration_bins", "expected_calibration_error", "ConfidenceGap", "confidence_gap"]


def _logits_labels(logits: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    z = torch.as_tensor(logits).detach().cpu()
    y = torch.as_tensor(labels).detach().cpu()
    if z.dim() != 2 or not z.is_floating_point():
        raise ValueError(f"logits must be a float array [N, C], got shape {tuple(z.shape)} and dtype {z.dtype}")
    if y.shape != (z.shape[0],) or y.is_floating_point():
        raise ValueError(f"labels must be integers of shape ({z.shape[0]},), got {tuple(y.shape)} ({y.dtype})")
    if z.shape[0] == 0:
        raise ValueError("logits must hold at least one example")
    if not torch.isfinite(z).all():
        raise ValueError("logits contain non-finite values")
    return z, y.long()


@dataclass(frozen=True)
class CalibrationBins:
    """Equal-width bins over the max-softmax confidence, ``num_bins`` of them on [0, 1].

    ``edges`` float ``[B + 1]``; per bin: ``counts`` (examples), ``accuracy`` (fraction
    predicted correctly) and ``confidence`` (mean max-softmax probability); both are NaN
    for empty bins. ``ece`` = sum_b counts_b / N * |accuracy_b - confidence_b|.
    """

    edges: np.ndarray
    counts: np.ndarray
    accuracy: np.ndarray
    confidence: np.ndarray
    ece: float


def calibration_bins(logits: Any, labels: Any, *, num_bins: int = 15) -> CalibrationBins:
    """Reliability-diagram bins and the expected calibration error (Guo et al., 2017).

    The confidence of an example is its largest softmax probability and its prediction
    the arg-max class; bin b holds confidences in ``(b/B, (b+1)/B]`` (the first bin also
    holds 0). Raises ``ValueError`` on malformed input or ``num_bins < 1``.
    """
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins must be a positive integer, got {num_bins!r}")
    z, y = _logits_labels(logits, labels)
    predicted = z.argmax(dim=-1)
    conf = confidence(z, predicted).numpy()  # max-softmax probability, float64
    correct = (predicted == y).numpy()
    index = np.clip(np.ceil(conf * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
    counts = np.bincount(index, minlength=num_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(index, weights=correct.astype(np.float64), minlength=num_bins) / counts
        mean_conf = np.bincount(index, weights=conf, minlength=num_bins) / counts
    gaps = np.where(counts > 0, np.abs(accuracy - mean_conf), 0.0)
    ece = float(np.sum(counts / counts.sum() * gaps))
    return CalibrationBins(edges=np.linspace(0.0, 1.0, num_bins + 1), counts=counts, accuracy=accuracy,
                           confidence=mean_conf, ece=ece)


def expected_calibration_error(logits: Any, labels: Any, *, num_bins: int = 15) -> float:
    """ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)| over ``num_bins`` equal-width confidence bins.

    Confidence is the max-softmax probability; 0 for a perfectly calibrated model, up to
    1. See :func:`calibration_bins` for the bins themselves (a reliability diagram).
    """
    return calibration_bins(logits, labels, num_bins=num_bins).ece


@dataclass(frozen=True)
class ConfidenceGap:
    """True-class probability p_y on members vs non-members of one model (the "99.9% vs 75%" picture).

    ``gap = member_mean - nonmember_mean``; ``median_gap`` likewise for the medians.
    """

    member_mean: float
    nonmember_mean: float
    member_median: float
    nonmember_median: float
    gap: float
    median_gap: float
    num_members: int
    num_nonmembers: int


def confidence_gap(logits: Any, labels: Any, member: Any) -> ConfidenceGap:
    """Mean and median confidence on members vs non-members, and their differences.

    Confidence is the softmax probability of the *true* class, p_y (the usual MIA
    confidence: what a loss or confidence attack thresholds), not the max probability.
    ``member`` is boolean ``[N]``, with at least one member and one non-member.
    """
    z, y = _logits_labels(logits, labels)
    m = np.asarray(member.cpu() if isinstance(member, torch.Tensor) else member)
    if m.shape != (z.shape[0],) or not (m.dtype == np.bool_ or np.all((m == 0) | (m == 1))):
        raise ValueError(f"member must be boolean of shape ({z.shape[0]},)")
    m = m.astype(bool)
    if m.all() or not m.any():
        raise ValueError("member must contain both members and non-members")
    p = confidence(z, y).numpy()
    stats = [float(f(p[mask])) for mask in (m, ~m) for f in (np.mean, np.median)]
    member_mean, member_median, nonmember_mean, nonmember_median = stats
    return ConfidenceGap(
        member_mean=member_mean,
        nonmember_mean=nonmember_mean,
        member_median=member_median,
        nonmember_median=nonmember_median,
        gap=member_mean - nonmember_mean,
        median_gap=member_median - nonmember_median,
        num_members=int(m.sum()),
        num_nonmembers=int((~m).sum()),
    )
