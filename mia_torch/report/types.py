"""The typed results of a run: what ``results.json`` holds, made once, read by every report.

:class:`RunResults` is built by the pipeline from :func:`mia_torch.evaluation.evaluate_attacks`
and read by the printed summary, ``results.json`` (:meth:`~Record.to_dict` /
:meth:`~Record.from_dict`), TensorBoard, the sweep summary and ``mia-reproduce``::

    RunResults
      targets: {target id: TargetResult}            accuracy, loss, over-confidence (ECE, member vs
                                                    non-member confidence), DP-SGD's ε spent
      attacks: {name: AttackEvaluation}
        per_target: [TargetAttackMetrics]           RocMetrics + target id + calibrated threshold, fitted knobs
        mean:       {metric: MeanStd}               mean ± std over targets
        pooled:     RocMetrics                      all targets' examples together (+ the ROC curve)
        empirical_epsilon, epsilon_bound            lower bound on ε from the pooled ROC (EpsilonBound)
        sanity:     SanityCheck | None              an untrained target must score AUC 0.5
        slices:     [SliceResult]                   per class, correctly vs incorrectly classified
        precision:  [PrecisionAtPrior]              PPV at each membership prior and FPR target (pooled)
      dp_audit: DpAuditResult | None                one-run DP audit: canaries, one-run and Gaussian-DP bounds
      audit, forget: AuditResult, ForgetResult      the one-model checks' answers (or None)
      blind_baseline: BlindCheck | None             a classifier of the records alone, and its warning

One ROC's records live in :mod:`~mia_torch.report.roc_metrics` and the audit and forget sections
in :mod:`~mia_torch.report.check_results`; every name is importable from here.

Adding a quantity is adding a field: a field made with :func:`reported` on
:class:`TargetResult` or :class:`AttackEvaluation` is written to ``results.json``, printed in
the summary, logged to TensorBoard and added as a sweep summary column with no further code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Mapping

import numpy as np

from mia_torch.dp_audit.result import DpAuditResult
from mia_torch.report.check_results import AuditResult, ForgetResult
from mia_torch.report.guards import BlindCheck, PrecisionAtPrior
from mia_torch.report.json_record import Record
from mia_torch.report.roc_metrics import (
    RELIABLE_FALSE_POSITIVES,
    Interval,
    RocCurve,
    RocMetrics,
    ScoredSample,
    TargetAttackMetrics,
    fpr_of_key,
)

__all__ = [
    "RELIABLE_FALSE_POSITIVES",
    "AttackEvaluation",
    "BlindCheck",
    "EpsilonBound",
    "Interval",
    "MeanStd",
    "PrecisionAtPrior",
    "RocCurve",
    "RocMetrics",
    "RunResults",
    "SanityCheck",
    "ScoredSample",
    "Scores",
    "SliceResult",
    "TargetAttackMetrics",
    "TargetResult",
    "fpr_of_key",
    "reported",
    "reported_values",
]

#: Every attack's scores per target: ``scores[attack][target]`` is float ``[N]`` (higher = member).
Scores = Mapping[str, Mapping[int, np.ndarray]]


def reported(label: str, *, fmt: str = ".3f") -> Any:
    """A field (default ``None``) that the summary, TensorBoard and the sweep summary show.

    ``label`` is its name in the printed summary, ``fmt`` its format there (e.g. ``".2%"``).
    Its value must be a number or ``None`` (not measured).
    """
    return field(default=None, metadata={"label": label, "fmt": fmt})


def reported_values(record: Any) -> dict[str, tuple[str, str, float]]:
    """``{field name: (label, fmt, value)}`` of the :func:`reported` fields of ``record`` that hold a number."""
    out = {}
    for f in fields(record):
        value = getattr(record, f.name)
        if "label" in f.metadata and isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f.name] = (f.metadata["label"], f.metadata["fmt"], float(value))
    return out


@dataclass
class MeanStd(Record):
    """Mean and sample standard deviation of a metric over targets."""

    mean: float
    std: float


@dataclass
class SanityCheck(Record):
    """The attack on untrained targets, which carry no membership information: AUC must be 0.5."""

    auc: float
    auc_ci: Interval
    chance_in_ci: bool
    confidence: float = 0.99


@dataclass
class SliceResult(Record):
    """One slice of the pooled examples (``kind`` ``class`` or ``classification``).

    ``name`` is ``class=<c>``, ``correct`` or ``misclassified`` (by the target, identity
    query). ``metrics`` is None when the slice was ``skipped`` (the reason).
    """

    name: str
    kind: str
    num_members: int
    num_nonmembers: int
    metrics: RocMetrics | None = None
    skipped: str | None = None


@dataclass
class EpsilonBound(Record):
    """Where an attack's empirical lower bound on ε is attained (see :func:`mia_torch.metrics.empirical_epsilon`).

    The bound holds with probability ``confidence`` at ``delta``: at the score
    ``threshold`` the attack reaches ``tpr`` and ``fpr``, whose Clopper–Pearson intervals
    (Bonferroni-corrected over ``num_thresholds`` thresholds when ``correction`` is
    ``bonferroni``) are ``tpr_interval`` and ``fpr_interval``.
    """

    epsilon: float
    delta: float
    confidence: float
    threshold: float
    tpr: float
    fpr: float
    tpr_interval: Interval
    fpr_interval: Interval
    num_thresholds: int
    correction: str


# ------------------------------------------------------------------ per attack, per target, per run


@dataclass
class AttackEvaluation(Record):
    """Everything measured about one attack. Add per-attack quantities as :func:`reported` fields.

    ``empirical_epsilon`` is the lower bound on the DP ε implied by the attack's pooled ROC
    at the run's δ (``defense.delta``, else 1 / population), ``epsilon_bound`` where it is
    attained; no training algorithm that is (ε, δ)-DP with a smaller ε lets the attack do this
    well (with 95% confidence, treating the pooled examples as independent trials).
    ``precision`` holds the precision of its flags at each membership prior and FPR target.
    """

    per_target: list[TargetAttackMetrics]
    mean: dict[str, MeanStd]
    pooled: RocMetrics
    sanity: SanityCheck | None = None
    slices: list[SliceResult] = field(default_factory=list)
    empirical_epsilon: float | None = reported("emp. ε", fmt=".2f")
    epsilon_bound: EpsilonBound | None = None
    precision: list[PrecisionAtPrior] = field(default_factory=list)

    def slice(self, name: str) -> SliceResult | None:
        """The slice called ``name`` (e.g. ``class=3``), or None."""
        return next((s for s in self.slices if s.name == name), None)

    def most_exposed_class(self) -> SliceResult | None:
        """The evaluated class slice with the highest AUC, or None when no class slice was evaluated."""
        classes = [s for s in self.slices if s.kind == "class" and s.metrics is not None]
        return max(classes, key=lambda s: s.metrics.auc, default=None)


@dataclass
class TargetResult(Record):
    """What is known about one target model. Add per-target quantities as :func:`reported` fields.

    Over-confidence is measured on the target's served output (what its API returns, after
    any ``output`` defense) on the identity query, over the evaluated population:
    ``ece`` on its non-members (the held-out half of the population, which it never
    trained on) and ``ece_members`` on its members (15 equal-width bins over the max
    probability); ``member_confidence`` and ``nonmember_confidence`` are the mean
    probability of the true class on each, ``confidence_gap`` their difference.
    ``dp_epsilon`` is the ε DP-SGD's accountant says the target spent at ``dp_delta``
    (infinite without noise: ``null`` in ``results.json`` beside a zero
    ``dp_noise_multiplier``, and read back as infinite). ``proxy_references`` is true when
    the target was audited from its ``outputs`` alone: its reference models were trained by
    mia_torch with the configured model and recipe as stand-ins for an architecture that
    may differ, so every attack's strength is a lower bound.
    """

    train_acc: float | None = reported("train acc")
    test_acc: float | None = reported("test acc")
    train_loss: float | None = None
    test_loss: float | None = None
    stopped_epoch: int | None = reported("stopped at epoch", fmt=".0f")  # train.early_stopping
    best_epoch: int | None = None  # the epoch whose weights early stopping restored
    dp_epsilon: float | None = reported("DP epsilon", fmt=".2f")  # defense=dpsgd: spent
    dp_epsilon_target: float | None = None
    dp_delta: float | None = None
    dp_noise_multiplier: float | None = None
    ece: float | None = reported("ECE (non-members)")
    ece_members: float | None = reported("ECE (members)")
    member_confidence: float | None = reported("confidence members", fmt=".1%")
    nonmember_confidence: float | None = reported("non-members", fmt=".1%")
    confidence_gap: float | None = reported("gap", fmt=".1%")
    checkpoint: str | None = None  # its weights (a state dict): the store's payload, or the audited file
    outputs: str | None = None  # audited from its outputs alone (audit.outputs): that file
    proxy_references: bool = False  # its references are stand-ins, not its architecture: attacks are a lower bound

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> "TargetResult":
        """As :meth:`Record.from_dict`; an ε written as ``null`` beside a zero noise multiplier is infinite."""
        out = super().from_dict(data, path=path)
        if out.dp_noise_multiplier == 0.0:
            out.dp_epsilon = math.inf if out.dp_epsilon is None else out.dp_epsilon
            out.dp_epsilon_target = math.inf if out.dp_epsilon_target is None else out.dp_epsilon_target
        return out


@dataclass
class RunResults(Record):
    """Everything ``results.json`` holds. An audit adds its ``audit`` section and a forget check its
    ``forget`` section (:mod:`mia_torch.report.check_results`); keys this version does not know are
    kept in ``extra``."""

    config: dict[str, Any]
    versions: dict[str, Any]
    dataset: dict[str, Any]
    target_ids: list[int]
    targets: dict[int, TargetResult]
    models: list[dict[str, Any]]
    trained_models: list[int]
    reused_models: list[int]
    corrupt_artifacts: list[str]
    seconds: float
    attacks: dict[str, AttackEvaluation]
    dp_audit: DpAuditResult | None = None  # the one-run DP audit (experiment=dp_audit)
    audit: AuditResult | None = None
    forget: ForgetResult | None = None
    blind_baseline: BlindCheck | None = None  # attack=blind, and every audit with audit.members
    extra: dict[str, Any] = field(default_factory=dict, metadata={"json": False})

    def to_dict(self) -> dict[str, Any]:
        """The ``results.json`` layout: the fields in order (an absent section left out), then the ``extra`` keys."""
        out = super().to_dict()
        return {**{k: v for k, v in out.items() if not (k in ("audit", "forget") and v is None)}, **self.extra}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "results.json") -> "RunResults":
        """Read a ``results.json`` dict; raises ``ValueError`` naming a missing or malformed key."""
        out = super().from_dict(data, path=path)
        known = {f.name for f in fields(cls)}
        out.extra = {k: v for k, v in data.items() if k not in known}
        return out

    def strongest_attack(self) -> str | None:
        """The attack with the highest pooled TPR at the lowest reliable FPR target (ties: AUC).

        Without a reliable FPR target (too few non-members), the one with the highest pooled
        AUC. None when the run has no attacks.
        """
        if not self.attacks:
            return None
        pooled = {name: a.pooled for name, a in self.attacks.items()}
        reliable = [f for f in next(iter(pooled.values())).tpr if all(m.is_reliable(f) for m in pooled.values())]
        if not reliable:
            return max(pooled, key=lambda n: pooled[n].auc)
        return self.strongest_at(min(reliable))

    def strongest_at(self, fpr: float) -> str | None:
        """The attack with the highest pooled TPR at ``fpr`` (ties: AUC); None when no attack measured it."""
        measured = {name: a.pooled for name, a in self.attacks.items() if fpr in a.pooled.tpr}
        if not measured:
            return None
        return max(measured, key=lambda n: (measured[n].tpr[fpr], measured[n].auc))

    def mean_over_targets(self, name: str) -> float | None:
        """Mean of the :class:`TargetResult` field ``name`` over the targets that have it (infinite if one is)."""
        values = [getattr(t, name, None) for t in self.targets.values()]
        values = [float(v) for v in values if isinstance(v, (int, float)) and not math.isnan(v)]
        return sum(values) / len(values) if values else None
