"""The answers of the two per-record questions: an audit (``audit``) and a forget check (``forget``).

Both are read from ``results.json``'s ``audit`` and ``forget`` entries as written by
:mod:`mia_torch.audit.run` and :mod:`mia_torch.forget.run`; a field is read by attribute or by key,
so the same code reads a typed entry and a plain mapping.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mia_torch.report.types import RunResults

__all__ = ["AuditAnswer", "ForgetAnswer", "ForgetAttack", "audit_answer", "forget_answer", "entry_of"]

#: The forget check's verdict when every attack's interval contains 0.5 (:mod:`mia_torch.forget.verdict`).
INDISTINGUISHABLE = "indistinguishable from never-seen"


def _get(entry: Any, name: str, default: Any = None) -> Any:
    if isinstance(entry, dict):
        return entry.get(name, default)
    return getattr(entry, name, default)


def _file_name(entry: Any, default: str) -> str:
    """The entry's ``records_csv``, a file in the run directory: only its name is used (never a path elsewhere)."""
    return Path(str(_get(entry, "records_csv", default))).name or default


def entry_of(results: RunResults, name: str) -> Any:
    """The run's ``name`` entry (``audit``, ``forget``): a typed field when the results have one, else ``extra``."""
    typed = getattr(results, name, None)
    return typed if typed is not None else results.extra.get(name)


@dataclass(frozen=True)
class AuditAnswer:
    """How many of the asked-about records are flagged, and how many chance alone would flag."""

    fpr: float
    candidates: int
    flagged: int
    records: list[Any]
    checkpoint: str
    checkpoint_sha256: str | None
    preprocess: Any
    references: list[int]
    online: bool
    skipped: dict[str, str]
    records_csv: str

    @property
    def expected_by_chance(self) -> float:
        """Records flagged at ``fpr`` if none of the candidates had been used: ``fpr`` × candidates."""
        return self.fpr * self.candidates

    @property
    def listed(self) -> bool:
        """Whether ``records`` lists every candidate (few candidates: the answer is per record)."""
        return len(self.records) == self.candidates


def audit_answer(results: RunResults) -> AuditAnswer | None:
    """The audit's answer, or None when the run is not an audit."""
    entry = entry_of(results, "audit")
    if entry is None:
        return None
    return AuditAnswer(
        fpr=float(_get(entry, "fpr")), candidates=int(_get(entry, "candidates")), flagged=int(_get(entry, "flagged")),
        records=list(_get(entry, "records", [])), checkpoint=str(_get(entry, "checkpoint", "")),
        checkpoint_sha256=_get(entry, "checkpoint_sha256"), preprocess=_get(entry, "preprocess"),
        references=list(_get(entry, "references", [])), online=bool(_get(entry, "online")),
        skipped=dict(_get(entry, "skipped_attacks", {}) or {}), records_csv=_file_name(entry, "records.csv"))


@dataclass(frozen=True)
class ForgetAttack:
    """One attack's AUC of forgotten vs never-seen records, before and after removal (``auc``, ``auc_ci``, ``verdict``)."""

    name: str
    before: Any
    after: Any

    @property
    def still_distinguishes(self) -> bool:
        """Whether the after-removal interval excludes 0.5."""
        return _get(self.after, "verdict") != INDISTINGUISHABLE


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
    utility: Any
    records_csv: str

    @property
    def forgotten_well(self) -> bool:
        """Whether every attack finds the forgotten records indistinguishable from never-seen ones."""
        return self.verdict == INDISTINGUISHABLE

    @property
    def revealed_before(self) -> bool:
        """Whether some attack told the records apart from never-seen ones before removal (else the check is blind)."""
        return any(_get(a.before, "verdict") != INDISTINGUISHABLE for a in self.attacks)

    @property
    def expected_by_chance(self) -> float:
        """Forgotten records flagged at ``fpr`` by chance alone: ``fpr`` × forgotten."""
        return self.fpr * self.forgotten

    @property
    def strongest_after(self) -> ForgetAttack | None:
        """The attack that separates the forgotten records best after removal (highest AUC)."""
        return max(self.attacks, key=lambda a: _get(a.after, "auc"), default=None)


def forget_answer(results: RunResults) -> ForgetAnswer | None:
    """The forget check's answer, or None when the run is not one."""
    entry = entry_of(results, "forget")
    if entry is None:
        return None
    attacks = _get(entry, "attacks", {}) or {}
    return ForgetAnswer(
        method=str(_get(entry, "method")), target=int(_get(entry, "target")), forgotten=int(_get(entry, "forgotten")),
        never_seen=int(_get(entry, "never_seen")), retained=int(_get(entry, "retained")),
        fpr=float(_get(entry, "fpr")), verdict=str(_get(entry, "verdict")),
        attacks=[ForgetAttack(name, _get(a, "before"), _get(a, "after")) for name, a in attacks.items()],
        still_flagged=list(_get(entry, "still_flagged", [])), utility=_get(entry, "utility", {}),
        records_csv=_file_name(entry, "forget.csv"))
