"""The typed answers of the two one-model checks: an audit (``audit``) and a forget check (``forget``).

Each is a section of :class:`~mia_torch.report.types.RunResults` (``results.audit``,
``results.forget``), written to ``results.json`` under its own key and read back by
``RunResults.from_dict``::

    AuditResult                         the audited checkpoint, its references, what was asked
      records: [AuditRecord]            the first candidates' p-values and verdicts
    ForgetResult                        which records left which target, and how
      attacks: {name: ForgetAttack}     before / after: Separation (AUC forgotten vs never-seen)
      utility: ForgetUtility            before / after: ModelUtility (accuracies)
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mia_torch.metrics.precision import expected_false_flags
from mia_torch.report.json_record import Record
from mia_torch.report.roc_metrics import Interval

__all__ = ["AuditRecord", "AuditResult", "ForgetAttack", "ForgetResult", "ForgetUtility", "ModelUtility",
           "Separation", "flagged_member_shares"]


@dataclass
class AuditRecord(Record):
    """One candidate's answer: its p-values (LiRA offline Gaussian, rank among OUT references) and verdict."""

    id: int
    p_gaussian: float
    p_rank: float
    verdict: str


@dataclass(kw_only=True)
class AuditResult(Record):
    """What an audit of a user's model asked, with what, and how many candidates it flagged at ``fpr``.

    The audited model is a ``checkpoint`` (with its ``checkpoint_sha256``) or, with
    ``audit.outputs``, a file of its ``outputs`` (``outputs_sha256``, ``output_kind``, the
    ``saturated_rows`` tied at the top, and ``proxy_references``: the references stand in for
    another architecture); the other source's fields are None and left out of ``results.json``.
    ``records`` holds the first candidates (all of them are in ``records_csv``);
    ``skipped_attacks`` the attacks left out and why (online ones without ``audit.online``);
    ``no_report`` why no study was reported (e.g. the members cover every candidate).
    ``public`` counts the ``audit.public`` records (known non-members that train and calibrate an
    attack without reference models, never candidates); ``expected_false_flags`` the non-members
    expected among the flags at each membership prior (``priors``, keyed ``f"{prior:g}"``), and,
    derived from them, ``flagged_members`` the share of the flags that would then be members and
    ``expected_by_chance`` the flags expected if no candidate were a member.
    """

    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    outputs: str | None = None
    outputs_sha256: str | None = None
    output_kind: str | None = None
    saturated_rows: int | None = None
    proxy_references: bool | None = None
    preprocess: Any
    references: list[int]
    online: bool
    skipped_attacks: dict[str, str]
    fpr: float
    candidates: int
    flagged: int
    records_csv: str
    public: int = 0
    expected_false_flags: dict[str, float] = field(default_factory=dict)
    flagged_members: dict[str, float] = field(init=False)
    expected_by_chance: float = field(init=False)
    no_report: str | None = None
    records: list[AuditRecord] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.flagged_members = flagged_member_shares(self.expected_false_flags, self.flagged)
        self.expected_by_chance = expected_false_flags(self.candidates, prior=0.0, fpr=self.fpr)

    def to_dict(self) -> dict[str, Any]:
        """The ``audit`` section: every field in order, the audited source's and ``no_report`` only when set."""
        return {k: v for k, v in super().to_dict().items() if v is not None or k not in _OPTIONAL_AUDIT_KEYS}

    @property
    def source(self) -> str:
        """What was audited: the checkpoint's path, or the outputs file's."""
        return str(self.checkpoint if self.outputs is None else self.outputs)


def flagged_member_shares(expected: Mapping[str, float], flagged: int) -> dict[str, float]:
    """The share of ``flagged`` records that would be members at each prior, given the false flags ``expected`` there:
    ``max(0, 1 - expected / flagged)`` (0: chance alone explains the flags); empty when nothing is flagged."""
    return {prior: max(0.0, 1 - n / flagged) for prior, n in expected.items()} if flagged else {}


_OPTIONAL_AUDIT_KEYS = frozenset({"checkpoint", "checkpoint_sha256", "outputs", "outputs_sha256", "output_kind",
                                  "saturated_rows", "proxy_references", "no_report"})


@dataclass
class Separation(Record):
    """How well one attack separates forgotten from never-seen records on one model: the AUC of
    forgotten vs never-seen, its bootstrap interval and the verdict drawn from it."""

    auc: float
    auc_ci: Interval
    verdict: str


@dataclass
class ForgetAttack(Record):
    """One attack's separation of the forgotten records ``before`` and ``after`` their removal."""

    before: Separation
    after: Separation


@dataclass
class ModelUtility(Record):
    """A model's accuracy on the test split, the retained records and the forgotten records."""

    test_acc: float
    retained_acc: float
    forgotten_acc: float


@dataclass
class ForgetUtility(Record):
    """The target's utility ``before`` and ``after`` the removal."""

    before: ModelUtility
    after: ModelUtility


@dataclass
class ForgetResult(Record):
    """The right-to-be-forgotten check: ``forgotten`` records removed from ``target`` by ``method``.

    ``verdict`` is "indistinguishable from never-seen" when every attack's interval after
    removal contains 0.5; ``still_flagged`` the forgotten records whose p-value after
    removal is at most ``fpr``; ``after_model`` what the model after removal recorded.
    """

    method: str
    target: int
    forgotten: int
    never_seen: int
    retained: int
    forgotten_ids: list[int]
    fpr: float
    attacks: dict[str, ForgetAttack]
    verdict: str
    still_flagged: list[int]
    utility: ForgetUtility
    after_model: dict[str, Any]
    records_csv: str
