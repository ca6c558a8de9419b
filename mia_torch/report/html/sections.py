"""The sections of a run's page, in order: the answer first, then the evidence.

A section is one partial template (``templates/sections/<key>.html.j2``) and a test of the page
saying whether the run has what it shows (``shown(page)``, ``page`` the run's page). Adding a section (a new analysis, a warning) is adding
its template, one :class:`Section` here, and the typed fields it reads from
:class:`~mia_torch.report.types.RunResults` (``page.results``).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["SECTIONS", "Section", "shown_sections"]


@dataclass(frozen=True)
class Section:
    """One part of the page: its anchor ``key``, heading, partial template and when it is shown."""

    key: str
    title: str
    shown: Callable[[Any], bool]

    @property
    def template(self) -> str:
        """The partial template that renders it."""
        return f"sections/{self.key}.html.j2"


SECTIONS: tuple[Section, ...] = (
    Section("audit_answer", "Were these records used to train the model?", lambda p: p.audit is not None),
    Section("forget_answer", "Has the model forgotten the removed records?", lambda p: p.forget is not None),
    Section("study_answer", "Does the model reveal who was in its training data?", lambda p: p.study is not None),
    Section("dp_audit", "Does one training run confirm the privacy claim?", lambda p: p.results.dp_audit is not None),
    Section("blind_baseline", "Do the records alone give membership away?",
            lambda p: p.results.blind_baseline is not None),
    Section("records", "Record by record", lambda p: bool(p.tables)),
    Section("figures", "Figures", lambda p: bool(p.figures)),
    Section("metrics", "Every attack, with its uncertainty", lambda p: bool(p.results.attacks)),
    Section("precision", "Of the records an attack flags, how many were training records?",
            lambda p: bool(p.precision_columns)),
    Section("threat_model", "What the attacker knew", lambda p: True),
    Section("targets", "The model's accuracy", lambda p: bool(p.results.targets)),
    Section("privacy", "Differential privacy (ε)", lambda p: bool(p.results.attacks) or p.privacy.private),
    Section("fitted", "What each attack fitted on the reference models", lambda p: bool(p.results.attacks)),
    Section("provenance", "How this run was made", lambda p: True),
    Section("glossary", "Words used on this page", lambda p: True),
)


def shown_sections(page: Any) -> list[Section]:
    """The sections ``page`` shows, in order."""
    return [s for s in SECTIONS if s.shown(page)]
