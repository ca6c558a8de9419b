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

import torch

from mia_torch.attacks.base import ReferenceSignals, balanced_accuracy_threshold, check_choice, check_number
from mia_torch.attacks.threshold import ThresholdAttack

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

    def fit(self, ref: ReferenceSignals | None = None) -> "PopulationAttack":
        """Set ``threshold`` from the pooled reference scores; stays ``None`` without references."""
        ref = self._check_references(ref)
        self.threshold = None
        if ref is None or ref.num_models == 0:
            return self
        scores = self.reference_scores(ref)
        if self.calibration == "balanced_accuracy":
            self.threshold = balanced_accuracy_threshold(scores, ref.keep)
            return self
        out = scores[~ref.keep]
        out = out[torch.isfinite(out)]
        if out.numel() == 0:
            return self
        desc = torch.sort(out, descending=True).values
        k = int(math.floor(self.fpr * out.numel()))
        # The next float above the (k+1)-th largest OUT score: at most k OUT scores reach it.
        kth = desc[k : k + 1]
        self.threshold = float(torch.nextafter(kth, torch.full_like(kth, math.inf)))
        return self
