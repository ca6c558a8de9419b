"""The points of a privacy-utility study: per setting, its utility and the strongest attack's leakage.

One :class:`StudyPoint` per finished job of the sweep (read by
:func:`mia_torch.report.sweep_jobs.collect_jobs`); the study's tables
(:mod:`mia_torch.report.privacy_utility`) and its figure
(:mod:`mia_torch.report.privacy_utility_plot`) are drawn from them.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from mia_torch.metrics.roc import tpr_key
from mia_torch.report.sweep_jobs import SweepJob, swept_keys
from mia_torch.report.types import Interval

__all__ = ["ACCURACY_BUDGET", "STUDY_FPR", "StudyPoint", "costs_more_than_it_buys", "recommend", "reference_point",
           "study_points"]

#: The FPR at which the study compares attacks (the y axis of its figure).
STUDY_FPR = 0.01
#: Test accuracy a defense may cost against no defense (0.02: two points) for :func:`recommend` to pick it.
ACCURACY_BUDGET = 0.02


@dataclass
class StudyPoint:
    """One setting of the study: its utility (target accuracy) and its leakage (strongest attack).

    ``kind`` is ``none``, ``dp`` (DP-SGD), ``output`` (an output defense) or
    ``regularization`` (any other training change). ``epsilon`` is the accountant's ε
    (mean over targets; infinite without noise; None without DP-SGD) and
    ``empirical_epsilon`` the largest lower bound on ε over the attacks.
    """

    setting: str
    job: str
    path: Path
    kind: str
    defense: str
    output: str
    train_acc: float | None
    test_acc: float
    test_acc_std: float
    attack: str
    tpr: float
    tpr_ci: Interval
    auc: float
    auc_ci: Interval | None
    epsilon: float | None
    empirical_epsilon: float | None
    ece: float | None
    confidence_gap: float | None


def _setting_name(job: SweepJob, swept: Sequence[str]) -> str:
    if "setting" in job.overrides:
        return job.overrides["setting"]
    return ", ".join(f"{k}={job.overrides[k]}" for k in swept if k in job.overrides) or job.name


def _kind(config: dict[str, Any], setting: str) -> tuple[str, str, str]:
    """``(kind, defense, output)`` of a job's resolved config."""
    defense = (config.get("defense") or {}).get("name", "none")
    output = dict(config.get("output") or {"name": "logits"})
    served = output.pop("name", "logits")
    output_text = served + "".join(f" {k}={v}" for k, v in output.items())
    if defense == "dpsgd":
        return "dp", defense, output_text
    if served != "logits":
        return "output", defense, output_text
    return ("none" if setting == "none" else "regularization"), defense, output_text


def _point(job: SweepJob, setting: str, fpr: float) -> StudyPoint | str:
    """The study point of a finished job, or why it has none."""
    results = job.results
    assert results is not None
    attack = results.strongest_at(fpr)
    accuracies = [t.test_acc for t in results.targets.values() if t.test_acc is not None]
    if attack is None:
        return f"no attack measured {tpr_key(fpr)} (add {fpr} to fpr_targets)"
    if not accuracies:
        return "no target test accuracy in results.json"
    pooled = results.attacks[attack].pooled
    bounds = [a.empirical_epsilon for a in results.attacks.values() if a.empirical_epsilon is not None]
    kind, defense, output = _kind(results.config, setting)
    return StudyPoint(
        setting=setting, job=job.name, path=job.path, kind=kind, defense=defense, output=output,
        train_acc=results.mean_over_targets("train_acc"), test_acc=sum(accuracies) / len(accuracies),
        test_acc_std=statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0, attack=attack, tpr=pooled.tpr[fpr],
        tpr_ci=pooled.tpr_exact_ci.get(fpr, (math.nan, math.nan)), auc=pooled.auc, auc_ci=pooled.ci.get("auc"),
        epsilon=results.mean_over_targets("dp_epsilon") if kind == "dp" else None,
        empirical_epsilon=max(bounds) if bounds else None, ece=results.mean_over_targets("ece"),
        confidence_gap=results.mean_over_targets("confidence_gap"),
    )


def study_points(jobs: Sequence[SweepJob], *, fpr: float = STUDY_FPR) -> tuple[list[StudyPoint], list[tuple[str, str]]]:
    """``(points, missing)``: one point per finished job, and ``(setting, reason)`` for the others."""
    swept = swept_keys(jobs)
    points, missing = [], []
    for job in jobs:
        setting = _setting_name(job, swept)
        point = _point(job, setting, fpr) if job.results is not None else job.missing_reason or "no results"
        if isinstance(point, str):
            missing.append((setting, point))
        else:
            points.append(point)
    return points, missing


def reference_point(points: Sequence[StudyPoint]) -> StudyPoint | None:
    """The undefended setting (kind ``none``) the others are compared with, or None."""
    return next((p for p in points if p.kind == "none"), None)


def recommend(points: Sequence[StudyPoint], *, accuracy_budget: float = ACCURACY_BUDGET) -> StudyPoint | None:
    """The most private setting that costs at most ``accuracy_budget`` of test accuracy.

    The budget is measured from the undefended setting (:func:`reference_point`), or from the
    most accurate setting when there is none; among the settings within it, the one whose
    strongest attack has the lowest TPR at the study's FPR wins (ties: lower AUC, then higher
    accuracy). None without points.
    """
    if not points:
        return None
    base = reference_point(points) or max(points, key=lambda p: p.test_acc)
    within = [p for p in points if p.test_acc >= base.test_acc - accuracy_budget]
    return min(within, key=lambda p: (p.tpr, p.auc, -p.test_acc))


def costs_more_than_it_buys(point: StudyPoint, reference: StudyPoint | None) -> bool:
    """Whether ``point`` is less accurate than the undefended ``reference`` and its strongest attack does at
    least as well there: accuracy paid, no privacy bought."""
    return reference is not None and point is not reference and point.test_acc < reference.test_acc \
        and point.tpr >= reference.tpr
