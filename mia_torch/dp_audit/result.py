"""The typed result of a one-run DP audit: ``RunResults.dp_audit`` (``results.json`` key ``dp_audit``)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from mia_torch.report.json_record import Record

__all__ = ["DpAuditResult", "GuessBound", "PrecisionCurve"]


@dataclass
class GuessBound(Record):
    """A lower bound on epsilon and the guesses that attain it.

    The auditor guessed IN for the ``k_plus`` highest-scoring canaries and OUT for the
    ``k_minus`` lowest, and ``correct`` of those guesses were right; ``ceiling`` is the bound
    those guesses would give had all been right (the most this audit could show with them).
    ``mu`` (Gaussian DP only) is the lower bound on mu; ``epsilon`` is then its epsilon at the
    audit's delta.
    """

    epsilon: float
    k_plus: int
    k_minus: int
    correct: int
    ceiling: float
    mu: float | None = None

    @property
    def guesses(self) -> int:
        """How many canaries were guessed (the rest abstained on)."""
        return self.k_plus + self.k_minus


@dataclass
class PrecisionCurve(Record):
    """The guesses' precision against their number, for the audit's figure.

    ``precision[i]``: the fraction of IN among the ``guesses[i]`` highest scores;
    ``two_sided[i]``: the fraction right when the highest half of them are guessed IN and the
    lowest half OUT; ``needed[label][i]``: the precision ``guesses[i]`` guesses need for the
    one-run bound (at the audit's level) to exceed the epsilon named by ``label`` (NaN where
    even all correct do not suffice).
    """

    guesses: list[int]
    precision: list[float]
    two_sided: list[float]
    needed: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class DpAuditResult(Record):
    """A one-run audit of target ``target``: ``canaries`` canaries of ``kind``, ``included`` of them trained on.

    ``score`` ranks them (an attack's score, or ``update`` for gradient canaries). Every bound
    holds with probability ``confidence`` at ``delta``; searching ``grid_size`` choices of
    (k+, k-) is paid for by testing each at confidence ``1 - (1 - confidence) / grid_size``
    (Bonferroni). ``one_run``: Steinke, Nasr & Jagielski's epsilon; ``gaussian``: the
    Gaussian-DP mu from Mahloujifar et al.'s f-DP one-run test and its epsilon at delta
    (Dong, Roth & Su). ``pooled_attack`` names the attack whose pooled empirical epsilon (on the
    study's own records) the summary shows beside them; ``canaries_file`` holds the canaries.
    Methods taking ``results`` read the run that holds this result (its
    :class:`~mia_torch.report.types.RunResults`, not imported here: the import goes one way).
    """

    kind: str
    score: str
    target: int
    canaries: int
    included: int
    confidence: float
    delta: float
    grid_size: int
    one_run: GuessBound
    gaussian: GuessBound
    pooled_attack: str | None = None
    curve: PrecisionCurve | None = None
    canaries_file: str = "canaries.npz"

    @property
    def level(self) -> float:
        """The confidence each (k+, k-) choice is tested at (Bonferroni over the grid)."""
        return 1.0 - (1.0 - self.confidence) / self.grid_size

    def accountant_epsilon(self, results: Any) -> float | None:
        """The DP-SGD accountant's epsilon of the audited target (infinite without noise; None without DP-SGD)."""
        target = results.targets.get(self.target)
        return None if target is None else target.dp_epsilon

    def pooled_epsilon(self, results: Any) -> float | None:
        """The pooled empirical epsilon of :attr:`pooled_attack` on the study's records, if measured."""
        attack = results.attacks.get(self.pooled_attack or "")
        return None if attack is None else attack.empirical_epsilon

    def refutes(self, results: Any) -> bool:
        """Whether the one-run epsilon exceeds the accountant's: the claimed (epsilon, delta) guarantee does not hold.

        (The Gaussian-DP epsilon is not used here: exceeding the claim, it refutes only that the training is as
        private as a Gaussian mechanism with that (epsilon, delta).)
        """
        claimed = self.accountant_epsilon(results)
        return claimed is not None and self.one_run.epsilon > claimed

    def scalars(self) -> dict[str, float]:
        """The audit's numbers for TensorBoard (``dp_audit/<key>``)."""
        out = {"one_run_epsilon": self.one_run.epsilon, "one_run_ceiling": self.one_run.ceiling,
               "one_run_guesses": float(self.one_run.guesses), "one_run_correct": float(self.one_run.correct),
               "gaussian_epsilon": self.gaussian.epsilon, "gaussian_ceiling": self.gaussian.ceiling}
        if self.gaussian.mu is not None:
            out["gaussian_mu"] = self.gaussian.mu
        return out

    def summary_lines(self, results: Any) -> list[str]:
        """The audit's lines in the printed summary: each bound beside the accountant's and the pooled epsilon."""
        claimed, pooled = self.accountant_epsilon(results), self.pooled_epsilon(results)
        b, g = self.one_run, self.gaussian
        lines = [
            f"one-run DP audit (dp_audit.kind={self.kind}): {self.canaries} canaries, {self.included} in target "
            f"{self.target}'s training set, ranked by {self.score}; at δ = {self.delta:.3g}, {self.confidence:.0%} "
            f"confidence each, Bonferroni over {self.grid_size} (k+, k-) choices",
            "  accountant's ε " + ("none (not trained with DP-SGD)" if claimed is None else _eps(claimed))
            + (f"; pooled empirical ε ({self.pooled_attack}, the study's records) {_eps(pooled)}"
               if pooled is not None else ""),
            f"  one-run ε ≥ {_eps(b.epsilon)} (Steinke et al. 2023): {b.correct} of {b.guesses} guesses right "
            f"(k+ {b.k_plus} IN, k- {b.k_minus} OUT); ceiling for these guesses {_eps(b.ceiling)}",
            f"  Gaussian DP: μ ≥ {_eps(g.mu or 0.0)}, ε ≥ {_eps(g.epsilon)} at δ (f-DP one run, Mahloujifar et al. "
            f"2024): {g.correct} of {g.guesses} right (k+ {g.k_plus}, k- {g.k_minus}); ceiling {_eps(g.ceiling)}",
        ]
        if self.refutes(results):
            lines.append("  THE ONE-RUN BOUND EXCEEDS THE ACCOUNTANT'S ε: the training is not as private as claimed")
        elif claimed is not None:
            lines.append("  consistent with the accountant's ε (a lower bound cannot confirm it, only refute it)")
        if claimed is not None and g.epsilon > claimed:
            lines.append("  the Gaussian-DP ε exceeds the accountant's: the training is less private than a Gaussian "
                         "mechanism with that (ε, δ)")
        lines.append(f"  canaries and their inclusion bits: {self.canaries_file}")
        return lines


def _eps(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    return "∞" if math.isinf(value) else f"{value:.2f}"
