"""The ``dp_audit`` keys of the one-run DP audit (``experiment=dp_audit``), checked before any training."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from mia_torch.settings.checks import check_values, known_keys

__all__ = ["CANARY_KINDS", "DpAuditConfig", "GRADIENT_SCORE", "INPUT_KINDS"]

#: Canaries that are records (trained on like any other) and, for DP-SGD, gradients.
INPUT_KINDS = ("mislabeled", "clean", "ood")
CANARY_KINDS = (*INPUT_KINDS, "gradient")
#: The score of gradient canaries: how far training moved each canary's coordinate against it.
GRADIENT_SCORE = "update"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)


@dataclass(frozen=True)
class DpAuditConfig:
    """Validated ``dp_audit.*`` keys; the audit runs when ``kind`` is set.

    ``kind``: the canaries (``mislabeled``/``clean`` population records, ``ood`` noise
    images, ``gradient`` Dirac gradients inside DP-SGD); ``count``: how many (m, each
    included with probability 1/2); ``score``: the attack whose score ranks the canaries
    (null: ``loss``, or ``update`` for gradient canaries); ``confidence``: of every bound;
    ``delta``: the delta of the claim tested (null: ``defense.delta``, else 1 / population;
    set while ``defense.delta`` is null, DP-SGD is accounted at it too, so that the
    accountant's epsilon and the bounds share one delta); ``guesses``: the fractions of m
    tried as k+ (guessed IN) and k- (guessed OUT).
    """

    kind: str | None = None
    count: int = 500
    score: str | None = None
    confidence: float = 0.95
    delta: float | None = None
    guesses: Sequence[float] = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5)

    @property
    def enabled(self) -> bool:
        """Whether this run is a one-run DP audit."""
        return self.kind is not None

    @property
    def score_name(self) -> str:
        """The score in effect: ``dp_audit.score``, else ``loss`` (``update`` for gradient canaries)."""
        return self.score or (GRADIENT_SCORE if self.kind == "gradient" else "loss")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "DpAuditConfig":
        """Validate ``dp_audit.*`` (a missing section means off), naming the offending key."""
        out = cls(**known_keys(values or {}, cls, "dp_audit"))
        guesses = out.guesses if isinstance(out.guesses, (list, tuple)) else None
        check_values(out, "dp_audit", [
            (out.kind is None or out.kind in CANARY_KINDS, "kind", f"null (off) or one of {CANARY_KINDS}"),
            (isinstance(out.count, int) and not isinstance(out.count, bool) and out.count >= 1, "count",
             "an integer >= 1 (the number of canaries)"),
            (out.score is None or (isinstance(out.score, str) and out.score != ""), "score",
             "null or an attack name, e.g. loss or lira_offline"),
            (_number(out.confidence) and 0 < out.confidence < 1, "confidence", "a number in (0, 1), e.g. 0.95"),
            (out.delta is None or (_number(out.delta) and 0 < out.delta < 1), "delta",
             "null (the accountant's delta) or a number in (0, 1)"),
            (bool(guesses) and all(_number(f) and 0 < f <= 1 for f in guesses), "guesses",
             "a non-empty list of fractions of dp_audit.count in (0, 1], e.g. [0.1, 0.5]"),
        ])
        if out.kind == "gradient" and out.score not in (None, GRADIENT_SCORE):
            raise ValueError(f"dp_audit.score={out.score!r} is invalid with dp_audit.kind=gradient: gradient canaries "
                             f"are scored by the update of their coordinate (dp_audit.score={GRADIENT_SCORE} or null)")
        if out.kind in INPUT_KINDS and out.score == GRADIENT_SCORE:
            raise ValueError(f"dp_audit.score={GRADIENT_SCORE} scores gradient canaries only: set dp_audit.kind=gradient "
                             "or score records with an attack, e.g. dp_audit.score=loss")
        return replace(out, confidence=float(out.confidence), guesses=tuple(sorted({float(f) for f in guesses})),
                       delta=None if out.delta is None else float(out.delta))

    def check_run(self, *, attacks: Sequence[str], private: bool, defense_delta: float | None, data_kind: str,
                  dataset: str, target_ids: Sequence[int], stage: str, other_mode: str | None) -> None:
        """Refuse what the audit cannot run with, naming the key: the canary kind against the defense and the
        data, the score against the configured attacks, and the run's shape (one target, every stage)."""
        if not self.enabled:
            return
        if other_mode is not None:
            raise ValueError(f"dp_audit.kind and {other_mode} are two different runs: set one of them")
        if len(target_ids) != 1:
            raise ValueError(f"dp_audit.kind audits one training run: target_ids={list(target_ids)} must name "
                             "exactly one model, e.g. target_ids=[0]")
        if stage != "all":
            raise ValueError(f"dp_audit.kind runs every stage: stage={stage!r} is for sharding a study's training")
        if self.delta is not None and defense_delta is not None and self.delta != defense_delta:
            raise ValueError(f"dp_audit.delta={self.delta:g} differs from defense.delta={defense_delta:g}: the audit "
                             "tests the accountant's (epsilon, delta) claim; set only one of them")
        if self.kind == "gradient" and not private:
            raise ValueError("dp_audit.kind=gradient adds canary gradients inside DP-SGD: it needs defense=dpsgd "
                             "(use dp_audit.kind=mislabeled, clean or ood otherwise)")
        if self.kind == "ood" and data_kind != "image":
            raise ValueError(f"dp_audit.kind=ood adds noise images, but dataset {dataset!r} is {data_kind}: use "
                             "dp_audit.kind=mislabeled or clean (canaries drawn from its records)")
        if self.kind in INPUT_KINDS and self.score_name not in attacks:
            raise ValueError(f"dp_audit.score={self.score_name} ranks the canaries with the attack of that name, which "
                             f"is not configured (attack={list(attacks)}): add it, e.g. "
                             f"attack=[{','.join([*attacks, self.score_name])}]")
