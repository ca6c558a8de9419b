"""One ROC's metrics as typed records: :class:`RocMetrics` (with its curve and the scores it was
measured on, in memory only) and :class:`TargetAttackMetrics` (an attack on one target).

Part of the typed results (:mod:`mia_torch.report.types`, which re-exports every name here).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from mia_torch.metrics.roc import curve_points, tpr_key
from mia_torch.report.json_record import Record

__all__ = ["RELIABLE_FALSE_POSITIVES", "Interval", "RocCurve", "RocMetrics", "ScoredSample", "TargetAttackMetrics",
           "fpr_of_key"]

#: A TPR at FPR f is marked unreliable when fewer than this many false positives are
#: allowed at f, i.e. when f < RELIABLE_FALSE_POSITIVES / (number of non-members).
RELIABLE_FALSE_POSITIVES = 10

Interval = tuple[float, float]


@dataclass
class RocCurve:
    """One ROC curve: ``fpr``, ``tpr`` (and ``thresholds``) as from :func:`mia_torch.metrics.roc_curve`."""

    fpr: np.ndarray
    tpr: np.ndarray
    thresholds: np.ndarray

    def thinned(self) -> RocCurve:
        """The points figures draw (:func:`~mia_torch.metrics.roc.curve_points`): what is kept in memory for the
        figures once the metrics have read every point."""
        chosen = curve_points(self.fpr)
        return RocCurve(self.fpr[chosen], self.tpr[chosen], self.thresholds[chosen])


@dataclass
class ScoredSample:
    """The examples one ROC was measured on: their ``scores`` (float ``[n]``) and ``members`` (bool ``[n]``)."""

    scores: np.ndarray
    members: np.ndarray


@dataclass
class RocMetrics(Record):
    """Metrics of one ROC: one attack on one set of members and non-members.

    ``tpr`` maps each FPR target to the TPR there (the best TPR with FPR <= target);
    ``ci`` holds percentile bootstrap intervals (``auc``, ``advantage``, ``tpr@<f>fpr``;
    empty without bootstrap) and ``tpr_exact_ci`` Clopper–Pearson intervals of each TPR,
    both at level ``confidence``. The Clopper–Pearson interval treats the threshold as
    fixed: it covers the members' sampling error only. In ``results.json`` the TPRs are
    keys ``tpr@<f>fpr``; ``resolvable_fpr`` (1/N for N non-members), ``reliable_fpr``
    (10/N), ``unreliable`` (the TPR keys whose FPR is below ``reliable_fpr``) and
    ``unresolvable`` (those below ``resolvable_fpr``: the TPR at zero false positives) are
    written for readers and recomputed when read. ``curve`` and ``sample`` (the ROC and the
    scores it was measured on) are kept in memory for figures, never written.
    """

    auc: float
    advantage: float
    balanced_accuracy: float
    balanced_accuracy_threshold: str
    num_members: int
    num_nonmembers: int
    tpr: dict[float, float]
    ci: dict[str, Interval] = field(default_factory=dict)
    tpr_exact_ci: dict[float, Interval] = field(default_factory=dict)
    confidence: float = 0.95
    curve: RocCurve | None = field(default=None, repr=False, compare=False, metadata={"json": False})
    sample: ScoredSample | None = field(default=None, repr=False, compare=False, metadata={"json": False})

    @property
    def resolvable_fpr(self) -> float:
        """1/N: the smallest non-zero FPR that N non-members can measure."""
        return 1.0 / self.num_nonmembers

    @property
    def reliable_fpr(self) -> float:
        """``RELIABLE_FALSE_POSITIVES / N``: below it a TPR@FPR rests on fewer than that many false positives."""
        return RELIABLE_FALSE_POSITIVES / self.num_nonmembers

    def is_resolvable(self, fpr: float) -> bool:
        """Whether ``fpr`` is at least 1/N; below it the TPR is the TPR at zero false positives."""
        return fpr * self.num_nonmembers >= 1 - 1e-9

    def is_reliable(self, fpr: float) -> bool:
        """Whether the TPR at ``fpr`` rests on at least ``RELIABLE_FALSE_POSITIVES`` false positives."""
        return fpr * self.num_nonmembers >= RELIABLE_FALSE_POSITIVES * (1 - 1e-9)

    def to_dict(self) -> dict[str, Any]:
        """The flat, stable ``results.json`` layout (see the class docstring)."""
        return {
            "auc": self.auc,
            "advantage": self.advantage,
            "balanced_accuracy": self.balanced_accuracy,
            "balanced_accuracy_threshold": self.balanced_accuracy_threshold,
            **{tpr_key(f): v for f, v in self.tpr.items()},
            "num_members": self.num_members,
            "num_nonmembers": self.num_nonmembers,
            "resolvable_fpr": self.resolvable_fpr,
            "reliable_fpr": self.reliable_fpr,
            "unreliable": [tpr_key(f) for f in self.tpr if not self.is_reliable(f)],
            "unresolvable": [tpr_key(f) for f in self.tpr if not self.is_resolvable(f)],
            "confidence": self.confidence,
            "ci": {k: list(v) for k, v in self.ci.items()},
            "clopper_pearson_ci": {tpr_key(f): list(v) for f, v in self.tpr_exact_ci.items()},
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> "RocMetrics":
        """Read :meth:`to_dict`'s layout back (derived keys are recomputed, not read)."""
        if not isinstance(data, Mapping):
            raise ValueError(f"{path or cls.__name__}: expected a mapping, got {type(data).__name__}")
        tpr = {k[4:-3]: v for k, v in data.items() if fpr_of_key(k) is not None}
        exact = {k[4:-3]: v for k, v in (data.get("clopper_pearson_ci") or {}).items() if fpr_of_key(k) is not None}
        return super().from_dict({**data, "tpr": tpr, "tpr_exact_ci": exact}, path=path)


def fpr_of_key(key: Any) -> float | None:
    """The FPR of a TPR key: ``0.01`` for ``"tpr@0.01fpr"``, else None."""
    if not (isinstance(key, str) and key.startswith("tpr@") and key.endswith("fpr")):
        return None
    try:
        return float(key[4:-3])
    except ValueError:
        return None


@dataclass(kw_only=True)
class TargetAttackMetrics(RocMetrics):
    """An attack's metrics on one target, with what it fitted on that target's references.

    ``threshold`` is its calibrated decision threshold; ``fitted_params`` every knob it fitted
    (e.g. RMIA's ``a`` and ``temperature``), never on the target itself. ``p_values`` (in
    memory only) holds each evaluated record's empirical p-value against the target's
    evaluated non-members (:func:`mia_torch.evaluation.empirical_p_values`).
    """

    target: int
    threshold: float | None = None
    fitted_params: dict[str, Any] = field(default_factory=dict)
    p_values: np.ndarray | None = field(default=None, repr=False, compare=False, metadata={"json": False})

    def to_dict(self) -> dict[str, Any]:
        """``{"target": t, **metrics, "threshold": ..., "fitted_params": {...}}``."""
        return {"target": self.target, **super().to_dict(), "threshold": self.threshold,
                "fitted_params": dict(self.fitted_params)}
