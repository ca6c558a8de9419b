"""Population attack (Attack-P of Ye et al., 2022): one global threshold on phi.

The score is the target's logit-scaled confidence phi averaged over queries, the same for
every example (no per-example calibration, which is what LiRA and RMIA add). The
decision threshold is calibrated on the reference models' OUT examples, which stand in
for population data the target never saw: by default it is set so that a fraction
``fpr`` of pooled OUT reference scores lie at or above it (Attack-P's fixed-FPR rule);
``calibration="balanced_accuracy"`` uses pooled IN/OUT scores instead. ``fpr`` is a
setting of the rule, not fitted: only the threshold is chosen from (reference) data.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mia_torch.attacks.base import balanced_accuracy_threshold, check_choice, check_number
from mia_torch.attacks.feature_attack import ReferenceFeatures
from mia_torch.attacks.threshold import SortedScores, ThresholdAttack

__all__ = ["PopulationAttack"]


class PopulationAttack(ThresholdAttack):
    """Global threshold on mean phi; ``threshold`` at a target FPR on reference OUT scores.

    Args:
        fpr: target false-positive rate in (0, 1) for the ``fpr`` calibration (default
            0.05): at most ``floor(fpr * #OUT)`` pooled OUT reference scores are
            ``>= threshold``.
        calibration: ``fpr`` (default) or ``balanced_accuracy``.
    """

    requires_references = False

    def __init__(self, fpr: float = 0.05, calibration: str = "fpr") -> None:
        super().__init__(statistic="phi")
        self.fpr = float(check_number("fpr", fpr, low=0.0, high=1.0, low_open=True, high_open=True))
        self.calibration = check_choice("calibration", calibration, ("fpr", "balanced_accuracy"))

    def _calibrate(self, ref: ReferenceFeatures) -> float | None:
        """The threshold from the pooled reference scores."""
        scores = self.reference_scores(ref)
        keep = ref.keep_of()
        if self.calibration == "balanced_accuracy":
            return balanced_accuracy_threshold(scores, keep)
        out = scores[~keep]
        out = out[torch.isfinite(out)]
        return self._fpr_threshold(torch.sort(out, descending=True).values)

    def _calibrate_sorted(self, ordered: SortedScores, removed: Sequence[int]) -> float | None:
        if self.calibration == "balanced_accuracy":
            return super()._calibrate_sorted(ordered, removed)
        values, member, _ = ordered.without(removed)
        return self._fpr_threshold(values[~member])

    def _fpr_threshold(self, desc: torch.Tensor) -> float | None:
        """The next float above the (k+1)-th largest of the OUT scores ``desc`` (sorted in descending order):
        at most k = floor(fpr * #OUT) OUT scores reach it."""
        if desc.numel() == 0:
            return None
        k = int(math.floor(self.fpr * desc.numel()))
        kth = desc[k : k + 1]
        return float(torch.nextafter(kth, torch.full_like(kth, math.inf)))
