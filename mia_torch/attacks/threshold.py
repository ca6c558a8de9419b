"""Threshold attacks on one model's output (no reference models needed).

* ``loss`` — Yeom et al. (2018): members have low loss; score = -cross-entropy.
* ``confidence`` — score = softmax probability of the true class.
* ``entropy`` — members get confident predictions; score = -prediction entropy.
* ``modified_entropy`` — Song & Mittal (2021); score = -Mentr.
* ``phi`` — score = logit-scaled confidence (the global-threshold baseline on LiRA's statistic).

The statistic is averaged over the Q augmentation queries. If reference models are
given, ``fit`` sets ``threshold`` to the score threshold that maximizes balanced
accuracy on the pooled reference models' IN/OUT scores; without references the
threshold stays ``None`` and scoring works as usual.
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

__all__ = ["ThresholdAttack", "STATISTIC_SIGNS"]

# Sign that turns each raw statistic into "higher = more likely member".
STATISTIC_SIGNS: dict[str, float] = {
    "loss": -1.0,
    "confidence": 1.0,
    "entropy": -1.0,
    "modified_entropy": -1.0,
    "phi": 1.0,
}


class ThresholdAttack(Attack):
    """Score = sign x (statistic averaged over queries) of the target model alone.

    Args:
        statistic: one of ``loss``, ``confidence``, ``entropy``, ``modified_entropy``,
            ``phi`` (see the module docstring for the sign each one gets).
    """

    requires_references = False

    def __init__(self, statistic: str = "loss") -> None:
        self.statistic = check_choice("statistic", statistic, STATISTIC_SIGNS)
        self.threshold: float | None = None

    def _scores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scores for logits ``[..., N, Q, C]`` with labels broadcastable to ``[..., N, Q]``: ``[..., N]``."""
        stat = STATISTICS[self.statistic](logits, labels)
        return (STATISTIC_SIGNS[self.statistic] * stat.mean(-1)).to(torch.float32)

    def reference_scores(self, ref: ReferenceSignals) -> torch.Tensor:
        """Scores of every reference model on every example, float32 ``[R, N]``."""
        return self._scores(ref.logits, ref.labels[None, :, None])

    def fit(self, ref: ReferenceSignals | None = None) -> "ThresholdAttack":
        """Calibrate ``threshold`` (max balanced accuracy over pooled reference IN/OUT); no-op without references."""
        ref = self._check_references(ref)
        self.threshold = None
        if ref is not None and ref.num_models > 0:
            self.threshold = balanced_accuracy_threshold(self.reference_scores(ref), ref.keep)
        return self

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float32 ``[N]``, higher = member."""
        logits, labels = check_target(logits, labels)
        return self._scores(logits, labels[:, None])
