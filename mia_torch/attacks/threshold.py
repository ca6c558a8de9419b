"""Threshold attacks on one model's output (no reference models needed).

* ``loss`` — Yeom et al. (2018): members have low loss; score = -cross-entropy.
* ``confidence`` — members get a high true-class probability p_y; score = the log-odds
  of p_y (of its mean over queries), an order-preserving transform of the confidence
  that stays distinct where p_y rounds to 1.
* ``entropy`` — members get confident predictions; score = -prediction entropy.
* ``modified_entropy`` — Song & Mittal (2021); score = -Mentr.
* ``phi`` — score = logit-scaled confidence (the global-threshold baseline on LiRA's statistic).

Each statistic, its sign and its query averaging come from
:data:`mia_torch.signals.stats.STATISTICS`; scores are float64, so a confident model's
tiny losses stay distinct all the way to the metrics. If reference models are given,
``fit`` sets ``threshold`` to the score threshold that maximizes balanced accuracy on the
pooled reference models' IN/OUT scores; without references the threshold stays ``None``
and scoring works as usual.
"""
from __future__ import annotations

import torch

from mia_torch.attacks.base import (
    Attack,
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    check_target,
)
from mia_torch.signals.stats import STATISTICS

__all__ = ["ThresholdAttack"]


class ThresholdAttack(Attack):
    """Score = the signed statistic of the target model alone, averaged over queries.

    Args:
        statistic: a name in :data:`~mia_torch.signals.stats.STATISTICS` (``loss``,
            ``confidence``, ``entropy``, ``modified_entropy``, ``phi``).
    """

    requires_references = False

    def __init__(self, statistic: str = "loss") -> None:
        self.statistic = check_choice("statistic", statistic, STATISTICS)
        self.threshold: float | None = None

    def _scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scores for logits ``[..., N, Q, C]`` with labels broadcastable to ``[..., N, Q]``: float64 ``[..., N]``."""
        return STATISTICS[self.statistic].score(logits, labels)

    def reference_scores(self, ref: ReferenceSignals) -> torch.Tensor:
        """Scores of every reference model on every example, float64 ``[R, N]``."""
        return self._scores(ref.logits, ref.labels[None, :, None])

    def fit(self, ref: ReferenceSignals | None = None) -> "ThresholdAttack":
        """Calibrate ``threshold`` (max balanced accuracy over pooled reference IN/OUT); no-op without references."""
        ref = self._check_references(ref)
        self.threshold = None
        if ref is not None and ref.num_models > 0:
            self.threshold = balanced_accuracy_threshold(self.reference_scores(ref), ref.keep)
        return self

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float64 ``[N]``, higher = member."""
        logits, labels = check_target(logits, labels)
        return self._scores(logits, labels[:, None])
