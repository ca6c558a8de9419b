"""How the attack stage fits each attack for each target: one pool of sums, refits, or the dense logits.

* An attack with a :class:`~mia_torch.attacks.feature_attack.Pool` (LiRA, RMIA, the threshold,
  population and label-only attacks) sums over the *base* models once (every model that is
  some target's reference) and fits each target by taking the models that are not its
  references (itself and its twin) out of those sums.
* A :class:`~mia_torch.attacks.feature_attack.FeatureAttack` without one (the Shokri network)
  is refitted on each target's references.
* Any other :class:`~mia_torch.attacks.base.Attack` (your own, written against
  ``fit(ReferenceSignals)`` and ``score(logits, labels)``) gets the served logits
  ``[M, N, Q, C]``, built once, only then; its fit reads the references' logits only when it
  has a ``fit`` of its own (:func:`fitted_copy`).

A target and its twin have the same references, so their fit is made once. Knobs (decision
thresholds, RMIA's ``a`` and temperature) are chosen per target on its own references
(``calibration=per_target``), or once per half of the models (``calibration=halves``): a
target's knobs are then chosen on the half of the models its pair is not in, which never
contains the target and costs two calibrations for all targets. Attacks written against the
logits interface choose their own knobs on each target's references.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from mia_torch.attacks.base import Attack, ReferenceSignals
from mia_torch.attacks.feature_attack import FeatureAttack, Knobs, ReferenceFeatures
from mia_torch.data.splits import Splits
from mia_torch.signals.features import Feature, unique
from mia_torch.signals.source import SignalSource

__all__ = ["AttackRun", "ReferencePlan", "attack_runs", "feature_table", "fitted_copy", "half_of",
           "reads_reference_logits"]

#: At most this many models are taken out of a pool's sums for one fit (a target and its twin);
#: a fit that leaves out more is made from scratch.
MAX_REMOVED = 2


def half_of(model: int) -> int:
    """Which half of the models ``model`` belongs to (``calibration=halves``): pairs alternate between halves."""
    return (model // 2) % 2


class ReferencePlan:
    """Which models each target's fit uses and where its knobs come from.

    ``base`` holds the models the pools sum over: every model that is a reference of some
    configured target (of every target, whichever a sharded job scores, so every job makes
    the same sums). With one target (or targets sharing their references, as in the disjoint
    threat model) that is the references themselves, summed as a fit from scratch sums them.
    """

    def __init__(self, splits: Splits, targets: Sequence[int], calibration: str) -> None:
        self.splits, self.calibration = splits, calibration
        self.base = sorted({m for t in targets for m in splits.reference_ids[t]})

    def references(self, target: int) -> tuple[int, ...]:
        """The target's reference models."""
        return tuple(self.splits.reference_ids[target])

    def removed(self, target: int) -> list[int]:
        """Positions in ``base`` of the models the target's fit leaves out."""
        refs = set(self.references(target))
        return [i for i, m in enumerate(self.base) if m not in refs]

    def calibration_models(self, target: int) -> tuple[int, ...] | None:
        """The models the target's knobs are chosen on; None: its own references, within its fit."""
        if self.calibration != "halves":
            return None
        half = half_of(target)
        return tuple(m for m in range(len(self.splits.keep)) if half_of(m) != half)


def feature_table(splits: Splits, source: SignalSource, attacks: dict[str, Attack], *, device: torch.device,
                  extra: Iterable[Feature] = ()) -> ReferenceFeatures | None:
    """The features that the feature attacks read (and ``extra``) of every model of ``source``, in its order
    (each model's logits read once); None if there is none to read."""
    wanted = [f for a in attacks.values() if isinstance(a, FeatureAttack) for f in a.required_features()]
    features = unique([*wanted, *extra])
    if not features:
        return None
    values = source.reduce(features.values(), device=device)
    return ReferenceFeatures(values, torch.from_numpy(splits.keep[source.models]).to(device),
                             torch.from_numpy(source.labels).long().to(device),
                             num_classes=int(source.raw(source.models[0]).shape[-1]))


def reads_reference_logits(attack: Attack) -> bool:
    """Whether fitting ``attack`` reads the references' served logits: it is no feature attack and has a ``fit`` of
    its own (the base ``Attack.fit`` reads nothing, e.g. the quantile attack's)."""
    return not isinstance(attack, FeatureAttack) and type(attack).fit is not Attack.fit


def fitted_copy(attack: Attack, features: ReferenceFeatures | None,
                logits: Callable[[], ReferenceSignals | None], *, knobs: Knobs | None = None) -> Attack:
    """A copy of ``attack`` fitted on one set of reference models: a feature attack on their ``features`` (with
    ``knobs`` when given), an attack that reads logits on their served logits ``logits()`` (built only then), any
    other as it is."""
    attack = copy.deepcopy(attack)
    if isinstance(attack, FeatureAttack):
        return attack.fit_features(features, knobs=knobs)
    return attack.fit(logits()) if reads_reference_logits(attack) else attack


class AttackRun:
    """One attack over a run's targets: ``fitted(target)`` (made once per set of references and knobs) and
    ``score(fitted, served features or logits)``."""

    def __init__(self, attack: Attack, plan: ReferencePlan, *, table: ReferenceFeatures | None,
                 dense: "DenseLogits") -> None:
        self.attack, self.plan, self.table, self.dense = attack, plan, table, dense
        self.is_feature = isinstance(attack, FeatureAttack)
        self._pool: Any = None
        self._knobs: dict[tuple[int, ...], Knobs] = {}
        self._last: tuple[Any, Attack] | None = None

    def _base(self) -> ReferenceFeatures:
        if self.plan.base == list(range(self.table.num_models)):
            return self.table  # every model: views, no copies
        return self._subset(self.plan.base)

    def _subset(self, models: Sequence[int]) -> ReferenceFeatures:
        return self.table.subset(torch.tensor(list(models), dtype=torch.long, device=self.table.keep.device))

    def knobs(self, target: int) -> Knobs | None:
        """The target's knobs when they are chosen apart from its fit (``calibration=halves``), else None."""
        models = self.plan.calibration_models(target)
        if models is None or not (self.is_feature and self.attack.calibrates):
            return None
        if models not in self._knobs:
            self._knobs[models] = copy.deepcopy(self.attack).fit_features(self._subset(models)).fitted_params()
        return self._knobs[models]

    def fitted(self, target: int) -> Attack:
        """The attack fitted on the target's references (never on the target)."""
        refs, knobs = self.plan.references(target), self.knobs(target)
        key = (refs, None if knobs is None else tuple(sorted(knobs.items())))
        if self._last is not None and self._last[0] == key:
            return self._last[1]
        removed = self.plan.removed(target)
        pool = self._pool_or_none() if self.is_feature and len(removed) <= MAX_REMOVED else None
        if pool is not None:
            fitted = pool.fit(removed, knobs=knobs)
        else:
            features = self._subset(refs) if self.is_feature else None
            fitted = fitted_copy(self.attack, features, lambda: self.dense.references(refs), knobs=knobs)
        self._last = (key, fitted)
        return fitted

    def _pool_or_none(self) -> Any:
        if self._pool is None:
            self._pool = self.attack.pool(self._base()) or False
        return self._pool or None

    def score(self, fitted: Attack, target: int) -> np.ndarray:
        """Float64 scores ``[N]`` of stored model ``target``."""
        if self.is_feature:
            features = {name: values[target] for name, values in self.table.features.items()}
            scores = fitted.score_features(features, self.table.labels)
        else:
            scores = fitted.score(self.dense.model(target), self.dense.labels)
        return scores.double().cpu().numpy()

    def score_logits(self, fitted: Attack, logits: torch.Tensor, labels: torch.Tensor,
                     features: dict[str, torch.Tensor] | None) -> np.ndarray:
        """Float64 scores ``[N]`` of a model that is not stored (served ``logits [N, Q, C]``, and its features)."""
        if self.is_feature and features is not None:
            return fitted.score_features(features, labels).double().cpu().numpy()
        return fitted.score(logits, labels).double().cpu().numpy()


class DenseLogits:
    """The served logits ``[M, N, Q, C]`` of every model, built on first use (only attacks that read logits)."""

    def __init__(self, source: SignalSource | None, splits: Splits, labels: torch.Tensor) -> None:
        self.source, self.splits, self.labels, self.device = source, splits, labels, labels.device
        self._logits: torch.Tensor | None = None

    def _all(self) -> torch.Tensor:
        if self._logits is None:
            if self.source is None:
                raise ValueError("an attack that reads logits needs the signals' source")
            self._logits = torch.from_numpy(self.source.dense()).to(self.device).float()
        return self._logits

    def model(self, index: int) -> torch.Tensor:
        """Model ``index``'s served logits ``[N, Q, C]``."""
        return self._all()[index]

    def references(self, models: Sequence[int]) -> ReferenceSignals:
        """Reference signals of ``models`` (in that order)."""
        models = list(models)
        keep = torch.from_numpy(self.splits.keep[models]).to(self.device)
        return ReferenceSignals(logits=self._all()[models], keep=keep, labels=self.labels)


def attack_runs(attacks: dict[str, Attack], plan: ReferencePlan, *, table: ReferenceFeatures | None,
                dense: DenseLogits) -> dict[str, AttackRun]:
    """One :class:`AttackRun` per attack."""
    return {name: AttackRun(attack, plan, table=table, dense=dense) for name, attack in attacks.items()}
