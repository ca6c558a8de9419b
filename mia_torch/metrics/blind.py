"""The blind baseline's AUC, and when it means that the attack figures do not measure the model.

The blind baseline (:mod:`mia_torch.attacks.blind`) separates members from non-members by
looking at the records only; each fold of the records is scored by a classifier trained on
the other folds. :func:`held_out_auc` measures it: within a fold, the classifier is fixed
and the fold's membership was never seen, so the fold's AUC and its bootstrap interval are
an honest held-out measurement. Across folds they are not: a record of one fold trained the
classifier that scores a near-identical record of another, which correlates the folds' AUCs
(on the bundled digits, where random membership gives per-fold AUCs about 0.7 correlated),
and an interval computed on all scores pooled would be too narrow. So the AUC is the mean
of the fold AUCs, and its interval the mean of the folds' intervals, each at level
1 − (1 − c)/k for k folds: the mean's interval misses on a side only if some fold's interval
misses on that side, so it covers with probability at least c whatever the dependence.

The rule, from that AUC, its interval and the attacks' AUCs:

1. The members and non-members **differ in distribution** when the blind baseline beats
   chance: the lower end of its AUC interval lies above 0.5. Otherwise nothing is said:
   a blind AUC of 0.5 within its interval is what random membership gives, and an attack
   with a weak AUC of 0.51 next to it is weak, not misled.
2. Then every attack whose AUC does not exceed the blind baseline's by more than
   ``margin`` (0.02) is **not measuring the model**: a classifier that never queried the
   model does as well. The warning fires when there is at least one.

So the warning needs evidence of a distribution shift (a significant blind AUC) and an
attack that does not clear it; with a blind AUC near 0.5 it stays silent whatever the
attacks do. Attacks that clear the blind baseline by more than the margin are not named,
but the shift is still reported: part of their AUC may come from the records.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from .bootstrap import bootstrap_intervals
from .roc import auc_score, roc_curve, validate_scores_labels

__all__ = ["BLIND_MARGIN", "BlindVerdict", "HeldOutAuc", "blind_verdict", "held_out_auc"]

#: An attack must beat the blind baseline's AUC by more than this to count as measuring the model.
BLIND_MARGIN = 0.02


@dataclass(frozen=True)
class BlindVerdict:
    """The rule's answer: ``shift`` (members and non-members differ in distribution), the attacks that do not
    clear the blind baseline by more than ``margin`` (``not_beating``), and ``warning`` (both)."""

    shift: bool
    not_beating: tuple[str, ...]
    margin: float

    @property
    def warning(self) -> bool:
        """Whether the audit's attack figures must not be read as measuring the model."""
        return self.shift and bool(self.not_beating)


def blind_verdict(
    auc: float, auc_interval: tuple[float, float], attack_aucs: Mapping[str, float], *, margin: float = BLIND_MARGIN
) -> BlindVerdict:
    """Apply the rule of the module docstring to the blind AUC, its interval and each attack's AUC."""
    if not margin >= 0:
        raise ValueError(f"margin must be >= 0, got {margin!r}")
    shift = bool(auc_interval[0] > 0.5)
    not_beating = tuple(name for name, value in attack_aucs.items() if value <= auc + margin) if shift else ()
    return BlindVerdict(shift=shift, not_beating=not_beating, margin=float(margin))


@dataclass(frozen=True)
class HeldOutAuc:
    """The mean of the folds' AUCs, its interval at level ``confidence`` and each fold's AUC (see the module)."""

    auc: float
    interval: tuple[float, float]
    confidence: float
    fold_aucs: tuple[float, ...]


def held_out_auc(scores: Any, members: Any, folds: Any, *, confidence: float = 0.95, num_resamples: int = 200,
                 seed: int = 0) -> HeldOutAuc:
    """AUC of held-out ``scores`` ``[N]`` (membership ``members``) over the groups of ``folds`` ``[N]`` (see the module).

    Every fold needs members and non-members. Each fold's interval is a percentile bootstrap
    (``num_resamples`` stratified resamples, seeded) at level 1 − (1 − ``confidence``)/k.
    """
    s, y = validate_scores_labels(scores, members)
    groups = np.asarray(folds)
    if groups.shape != s.shape:
        raise ValueError(f"folds must be one id per score ({s.shape}), got shape {groups.shape}")
    ids = np.unique(groups)
    level = 1.0 - (1.0 - confidence) / len(ids)
    aucs, lows, highs = [], [], []
    for index in ids:
        mask = groups == index
        fpr, tpr, _ = roc_curve(s[mask], y[mask])
        low, high = bootstrap_intervals(s[mask], y[mask], fpr_targets=(), num_resamples=num_resamples,
                                        confidence=level, seed=seed)["auc"]
        aucs.append(auc_score(fpr, tpr))
        lows.append(low)
        highs.append(high)
    return HeldOutAuc(auc=float(np.mean(aucs)), interval=(float(np.mean(lows)), float(np.mean(highs))),
                      confidence=float(confidence), fold_aucs=tuple(float(a) for a in aucs))
