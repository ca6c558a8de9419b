"""Typed results of the guards against figures that mislead: precision at membership priors, the blind baseline.

:class:`PrecisionAtPrior` answers "of the records an attack flags, how many are really
members?" at a prior the auditor faces (:mod:`mia_torch.metrics.precision`);
:class:`BlindCheck` says whether a classifier that never saw the model separates the
members from the non-members as well as the attacks do (:mod:`mia_torch.metrics.blind`).
Both are written to ``results.json`` under the attack (``precision``) and the run
(``blind_baseline``); :mod:`mia_torch.report.types` re-exports them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mia_torch.metrics.blind import BlindVerdict, HeldOutAuc
from mia_torch.metrics.precision import PrecisionPoint
from mia_torch.report.json_record import Record
from mia_torch.report.roc_metrics import Interval

__all__ = ["BlindCheck", "PrecisionAtPrior"]


@dataclass(frozen=True)
class PrecisionAtPrior(PrecisionPoint, Record):
    """PPV at membership ``prior`` where the attack's TPR at FPR ``fpr_target`` is reported (pooled ROC): a
    :class:`~mia_torch.metrics.precision.PrecisionPoint` written to ``results.json`` (``ppv`` NaN, written as
    null, when the point flags nothing; ``ppv_ci`` exact at that point's ``threshold``)."""

    @classmethod
    def of(cls, point: PrecisionPoint) -> "PrecisionAtPrior":
        """The record of one :class:`~mia_torch.metrics.precision.PrecisionPoint`."""
        return cls(**asdict(point))


@dataclass
class BlindCheck(Record):
    """The blind baseline of a run: a classifier of the records alone (``model``), never the model.

    ``auc`` is the mean over its ``folds`` of each fold's held-out AUC (``fold_aucs``; with
    several targets, every target's folds), ``auc_ci`` its interval at level ``confidence``.
    ``shift``: the interval lies above 0.5, so the members and non-members differ in
    distribution. ``not_beating``: the attacks whose AUC does not exceed the blind AUC by more
    than ``margin``. ``warning``: both, so those attacks' figures do not measure the model.
    """

    model: str
    auc: float
    auc_ci: Interval
    confidence: float
    fold_aucs: list[float]
    num_members: int
    num_nonmembers: int
    margin: float
    shift: bool
    not_beating: list[str] = field(default_factory=list)
    warning: bool = False

    @classmethod
    def of(cls, measured: HeldOutAuc, verdict: BlindVerdict, *, model: str, num_members: int,
           num_nonmembers: int) -> "BlindCheck":
        """The record of a measured blind AUC and the rule's verdict on it."""
        return cls(model=model, auc=measured.auc, auc_ci=measured.interval, confidence=measured.confidence,
                   fold_aucs=list(measured.fold_aucs), num_members=num_members, num_nonmembers=num_nonmembers,
                   margin=verdict.margin, shift=verdict.shift, not_beating=list(verdict.not_beating),
                   warning=verdict.warning)

    def message(self) -> str:
        """One line for the summary: the blind AUC, and what it means for the attack figures."""
        low, high = self.auc_ci
        text = (f"blind baseline (a {self.model} classifier of the records alone, never the model): AUC "
                f"{self.auc:.3f} [{low:.3f}, {high:.3f}] ({self.confidence:.0%})")
        if self.warning:
            return (text + f"; WARNING: the members and non-members differ in distribution, and "
                    f"{', '.join(self.not_beating)} do(es) not beat this baseline by more than {self.margin:g} AUC: "
                    "those figures do not measure the model")
        if self.shift:
            return (text + "; the members and non-members differ in distribution: every attack beats this baseline "
                    f"by more than {self.margin:g} AUC, but part of its AUC may come from the records")
        return text + "; ok: the records alone do not give membership away"
