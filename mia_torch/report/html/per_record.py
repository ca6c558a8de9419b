"""The answers of the two per-record questions: an audit (``audit``) and a forget check (``forget``).

Both are read from the run's typed sections (``RunResults.audit``, :class:`~mia_torch.report.check_results.AuditResult`;
``RunResults.forget``, :class:`~mia_torch.report.check_results.ForgetResult`), as ``RunResults.from_dict`` reads them
from ``results.json``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia_torch.report.check_results import AuditRecord, ForgetUtility, Separation
from mia_torch.report.types import RunResults

__all__ = ["AuditAnswer", "ForgetAnswer", "ForgetAttack", "audit_answer", "forget_answer"]

#: The forget check's verdict when every attack's interval contains 0.5 (:mod:`mia_torch.forget.verdict`).
INDISTINGUISHABLE = "indistinguishable from never-seen"


def _file_name(records_csv: str, default: str) -> str:
    """A section's ``records_csv``, a file in the run directory: only its name is used (never a path elsewhere)."""
    return Path(str(records_csv or default)).name or default


@dataclass(frozen=True)
class AuditAnswer:
    """How many of the asked-about records are flagged, and how many chance alone would flag (``expected_by_chance``
    if none had been used; ``expected_false_flags`` and the share of the flags that are members, ``flagged_members``,
    at each membership prior)."""

    fpr: float
    candidates: int
    flagged: int
    records: list[AuditRecord]
    checkpoint: str
    checkpoint_sha256: str | None
    preprocess: Any
    references: list[int]
    online: bool
    skipped: dict[str, str]
    records_csv: str
    public: int = 0
    expected_false_flags: dict[str, float] = field(default_factory=dict)
    flagged_members: dict[str, float] = field(default_factory=dict)
    expected_by_chance: float = 0.0

    @property
    def listed(self) -> bool:
        """Whether ``records`` lists every candidate (few candidates: the answer is per record)."""
        return len(self.records) == self.candidates


def audit_answer(results: RunResults) -> AuditAnswer | None:
    """The audit's answer, or None when the run is not an audit. The audited model is its checkpoint, or the file
    of its outputs (``audit.outputs``)."""
    audit = results.audit
    if audit is None:
        return None
    return AuditAnswer(
        fpr=audit.fpr, candidates=audit.candidates, flagged=audit.flagged, records=list(audit.records),
        checkpoint=audit.source, checkpoint_sha256=audit.checkpoint_sha256 or audit.outputs_sha256,
        preprocess=audit.preprocess, references=list(audit.references), online=audit.online,
        skipped=dict(audit.skipped_attacks), records_csv=_file_name(audit.records_csv, "records.csv"),
        public=audit.public, expected_false_flags=dict(audit.expected_false_flags),
        flagged_members=dict(audit.flagged_members), expected_by_chance=audit.expected_by_chance)


@dataclass(frozen=True)
class ForgetAttack:
    """One attack's AUC of forgotten vs never-seen records, before and after removal (``auc``, ``auc_ci``, ``verdict``)."""

    name: str
    before: Separation
    after: Separation

    @property
    def still_distinguishes(self) -> bool:
        """Whether the after-removal interval excludes 0.5."""
        return self.after.verdict != INDISTINGUISHABLE


@dataclass(frozen=True)
class ForgetAnswer:
    """The forget check: the verdict, each attack before and after, the records still flagged, the utility."""

    method: str
    target: int
    forgotten: int
    never_seen: int
    retained: int
    fpr: float
    verdict: str
    attacks: list[ForgetAttack]
    still_flagged: list[int]
    utility: ForgetUtility
    records_csv: str

    @property
    def forgotten_well(self) -> bool:
        """Whether every attack finds the forgotten records indistinguishable from never-seen ones."""
        return self.verdict == INDISTINGUISHABLE

    @property
    def revealed_before(self) -> bool:
        """Whether some attack told the records apart from never-seen ones before removal (else the check is blind)."""
        return any(a.before.verdict != INDISTINGUISHABLE for a in self.attacks)

    @property
    def expected_by_chance(self) -> float:
        """Forgotten records flagged at ``fpr`` by chance alone: ``fpr`` × forgotten."""
        return self.fpr * self.forgotten

    @property
    def strongest_after(self) -> ForgetAttack | None:
        """The attack that separates the forgotten records best after removal (highest AUC)."""
        return max(self.attacks, key=lambda a: a.after.auc, default=None)


def forget_answer(results: RunResults) -> ForgetAnswer | None:
    """The forget check's answer, or None when the run is not one."""
    forget = results.forget
    if forget is None:
        return None
    return ForgetAnswer(
        method=forget.method, target=forget.target, forgotten=forget.forgotten, never_seen=forget.never_seen,
        retained=forget.retained, fpr=forget.fpr, verdict=forget.verdict,
        attacks=[ForgetAttack(name, a.before, a.after) for name, a in forget.attacks.items()],
        still_flagged=list(forget.still_flagged), utility=forget.utility,
        records_csv=_file_name(forget.records_csv, "forget.csv"))
