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

import copy
from collections.abc import Mapping, Sequence

import torch

from mia_torch.attacks.base import (
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    sorted_balanced_accuracy_threshold,
)
from mia_torch.attacks.feature_attack import FeatureAttack, Knobs, ReferenceFeatures
from mia_torch.signals.features import Feature, statistic_feature
from mia_torch.signals.stats import STATISTICS

__all__ = ["ThresholdAttack"]


class ThresholdAttack(FeatureAttack):
    """Score = the signed statistic of the target model alone, averaged over queries.

    Args:
        statistic: a name in :data:`~mia_torch.signals.stats.STATISTICS` (``loss``,
            ``confidence``, ``entropy``, ``modified_entropy``, ``phi``).
    """

    requires_references = False

    def __init__(self, statistic: str = "loss") -> None:
        self.statistic = check_choice("statistic", statistic, STATISTICS)
        self.threshold: float | None = None

    @property
    def _feature(self) -> Feature:
        return statistic_feature(self.statistic)

    def required_features(self) -> tuple[Feature, ...]:
        """The statistic's signed, query-averaged score per example."""
        return (self._feature,)

    def reference_scores(self, ref: ReferenceFeatures | ReferenceSignals) -> torch.Tensor:
        """Scores of every reference model on every example, float64 ``[R, N]``."""
        return self._as_features(ref).take(self._feature.name)

    def fit_features(self, ref: ReferenceFeatures | None = None, *, knobs: Knobs | None = None) -> ThresholdAttack:
        """Calibrate ``threshold`` (max balanced accuracy over pooled reference IN/OUT); no-op without references."""
        ref = self._check_features(ref)
        self.threshold = None
        if knobs is not None:
            self.threshold = knobs["threshold"]
        elif ref is not None and ref.num_models > 0:
            self.threshold = self._calibrate(ref)
        return self

    def _calibrate(self, ref: ReferenceFeatures) -> float | None:
        return balanced_accuracy_threshold(self.reference_scores(ref), ref.keep_of())

    def _calibrate_sorted(self, ordered: SortedScores, removed: Sequence[int]) -> float | None:
        """:meth:`_calibrate` on the table's models but ``removed``, from the table's sorted scores."""
        values, member, _ = ordered.without(removed)
        return sorted_balanced_accuracy_threshold(values, member)

    def pool(self, base: ReferenceFeatures) -> ThresholdPool:
        """Every model's scores sorted once: a subset's threshold needs no sort of its own."""
        return ThresholdPool(self, base)

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float64 ``[N]``, higher = member."""
        return target[self._feature.name].double()


class SortedScores:
    """The scores of every model of a table sorted once (descending, stable: the order a sort of any
    subset of models would give), with each entry's model and membership."""

    def __init__(self, scores: torch.Tensor, keep: torch.Tensor) -> None:
        flat = scores.reshape(-1)
        finite = torch.isfinite(flat)
        values, order = torch.sort(flat[finite], descending=True, stable=True)
        positions = torch.nonzero(finite).squeeze(1)[order]
        self.values = values
        self.model = torch.div(positions, scores.shape[1], rounding_mode="floor").to(torch.int32)
        self.member = keep.reshape(-1)[positions]
        self.num_models = int(scores.shape[0])

    def without(self, removed: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Sorted values, membership and models of every entry except those of models ``removed``."""
        if not removed:
            return self.values, self.member, self.model
        dropped = torch.zeros(self.num_models, dtype=torch.bool, device=self.model.device)
        dropped[list(removed)] = True
        kept = ~dropped[self.model]
        return self.values[kept], self.member[kept], self.model[kept]


class ThresholdPool:
    """A threshold attack over a table's models: each subset's threshold from one sort of all scores."""

    def __init__(self, attack: ThresholdAttack, base: ReferenceFeatures) -> None:
        self.attack, self.base = attack, base
        self._sorted: SortedScores | None = None

    def fit(self, removed: Sequence[int], *, knobs: Knobs | None = None) -> ThresholdAttack:
        """The attack calibrated on the table's models except ``removed`` (or with ``knobs``)."""
        fitted = copy.deepcopy(self.attack)
        if knobs is not None or not removed:  # nothing to gain from the shared sort
            return fitted.fit_features(self.base.without(removed), knobs=knobs)
        if self._sorted is None:
            self._sorted = SortedScores(self.attack.reference_scores(self.base), self.base.keep_of())
        fitted.threshold = fitted._calibrate_sorted(self._sorted, removed)
        return fitted
