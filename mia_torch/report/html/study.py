"""The answer of a study, in the terms a reader acts on, read from its typed results (nothing recomputed).

The headline attack is the run's strongest (:meth:`RunResults.strongest_attack`); its pooled TPR at
each FPR target that N non-members can resolve (at least 1/N) is a *finding*, with its
Clopper–Pearson interval. The model *leaks* when that attack beats a random guess with 95%
confidence: the AUC's bootstrap interval lies above 0.5, or at some resolvable FPR the TPR's
interval lies above the FPR (a guess flags members and non-members alike).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from mia_torch.metrics.roc import tpr_key
from mia_torch.report.types import AttackEvaluation, Interval, RocMetrics, RunResults

__all__ = ["Finding", "PrivacyFigures", "StudyAnswer", "privacy_figures", "study_answer"]


@dataclass(frozen=True)
class Finding:
    """The headline attack's TPR at one resolvable FPR target, with its interval and reliability."""

    fpr: float
    tpr: float
    interval: Interval | None
    reliable: bool
    key: str

    @property
    def times_chance(self) -> float:
        """TPR / FPR: how many times more members the attack finds than a random guess at this FPR."""
        return self.tpr / self.fpr

    @property
    def beats_chance(self) -> bool:
        """Whether the TPR's interval lies above the FPR (a guess's TPR)."""
        return self.interval is not None and self.interval[0] > self.fpr


@dataclass(frozen=True)
class StudyAnswer:
    """What the headline attack finds, pooled over the targets, and whether the run can be trusted."""

    attack: str
    pooled: RocMetrics
    findings: list[Finding]
    unresolvable: list[float]
    sanity_failed: list[str]
    sanity_checked: int

    @property
    def auc_interval(self) -> Interval | None:
        """The AUC's bootstrap interval (None without bootstrap)."""
        return self.pooled.ci.get("auc")

    @property
    def leaks(self) -> bool:
        """Whether the attack beats a random guess with 95% confidence (AUC or a resolvable TPR)."""
        auc_above = self.auc_interval is not None and self.auc_interval[0] > 0.5
        return auc_above or any(f.beats_chance for f in self.findings)


def study_answer(results: RunResults) -> StudyAnswer | None:
    """The study's answer, or None when the run evaluated no attack (an audit without known members)."""
    attack = results.strongest_attack()
    if attack is None:
        return None
    pooled = results.attacks[attack].pooled
    fprs = sorted(pooled.tpr, reverse=True)
    findings = [Finding(fpr=f, tpr=pooled.tpr[f], interval=pooled.tpr_exact_ci.get(f), reliable=pooled.is_reliable(f),
                        key=tpr_key(f)) for f in fprs if pooled.is_resolvable(f)]
    checked = [name for name, a in results.attacks.items() if a.sanity is not None]
    failed = [name for name in checked if not results.attacks[name].sanity.chance_in_ci]
    return StudyAnswer(attack=attack, pooled=pooled, findings=findings,
                       unresolvable=[f for f in fprs if not pooled.is_resolvable(f)], sanity_failed=failed,
                       sanity_checked=len(checked))


@dataclass(frozen=True)
class PrivacyFigures:
    """The DP ε of the run: the accountant's per target (DP-SGD only) and the largest empirical lower bound."""

    accountant: dict[int, float]
    delta: dict[int, float | None]
    empirical_attack: str | None
    empirical: AttackEvaluation | None

    @property
    def private(self) -> bool:
        """Whether some target was trained with DP-SGD (has an accountant's ε)."""
        return bool(self.accountant)

    @property
    def noiseless(self) -> bool:
        """Whether every DP-SGD target's ε is infinite (clipping without noise: no guarantee)."""
        return self.private and all(math.isinf(e) for e in self.accountant.values())


def privacy_figures(results: RunResults) -> PrivacyFigures:
    """The accountant's ε of each DP-SGD target and the attack with the largest empirical ε."""
    accountant = {t: r.dp_epsilon for t, r in results.targets.items() if r.dp_epsilon is not None}
    bounds = {name: a for name, a in results.attacks.items() if a.empirical_epsilon is not None}
    top = max(bounds, key=lambda n: bounds[n].empirical_epsilon, default=None)
    return PrivacyFigures(accountant=accountant, delta={t: results.targets[t].dp_delta for t in accountant},
                          empirical_attack=top, empirical=bounds.get(top) if top else None)
