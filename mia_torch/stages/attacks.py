"""The attack stage: fit every attack on a target's reference models and score the target."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia_torch.attacks.base import Attack, ReferenceSignals
from mia_torch.settings.load import Settings, build_attack
from mia_torch.stages.context import Context
from mia_torch.stages.record_attacks import fit_records, model_attacks, unscored
from mia_torch.stages.signals import untrained_logits

__all__ = ["AttackOutputs", "attack_stage", "attack_target", "fit_attacks", "reference_signals", "score_attacks"]


@dataclass
class AttackOutputs:
    """Scores per attack and target (``scores[name][target] = float64[N]``), every knob the attack
    fitted on the target's references (``fitted_params[name][target]``, its threshold included),
    the scores of the untrained copies (sanity check), and the fitted attacks of the targets
    asked for (``fitted[target][name]``, to score another model in the target's place)."""

    scores: dict[str, dict[int, np.ndarray]]
    fitted_params: dict[str, dict[int, dict[str, Any]]]
    sanity: dict[str, dict[int, np.ndarray]] | None
    fitted: dict[int, dict[str, Attack]] = field(default_factory=dict)

    @classmethod
    def empty(cls, names: Iterable[str], *, sanity: bool) -> AttackOutputs:
        """No scores yet for attacks ``names``; ``sanity``: whether the untrained copies are scored too."""
        names = list(names)
        return cls({n: {} for n in names}, {n: {} for n in names}, {n: {} for n in names} if sanity else None)


def fit_attacks(settings: Settings, reference: ReferenceSignals) -> dict[str, Attack]:
    """Every configured attack that scores the model (all but the blind baseline), fitted on ``reference`` (never on
    a target). Attacks that read the records (quantile) are fitted on public records afterwards (:func:`fit_records`)."""
    attacks = {name: build_attack(name, cfg) for name, cfg in model_attacks(settings).items()}
    for attack in attacks.values():
        attack.fit(reference)
    return attacks


def score_attacks(attacks: dict[str, Attack], logits: torch.Tensor, labels: torch.Tensor) -> dict[str, np.ndarray]:
    """Each fitted attack's float64 scores of one model's served output ``[N, Q, C]``.

    float64: a confident model's scores differ beyond float32's resolution.
    """
    return {name: attack.score(logits, labels).double().cpu().numpy() for name, attack in attacks.items()}


def reference_signals(ctx: Context, logits: torch.Tensor, models: Sequence[int]) -> ReferenceSignals:
    """Reference signals of ``models`` from their served outputs ``logits [R, N, Q, C]`` (in that order)."""
    keep = torch.from_numpy(ctx.splits.keep[list(models)]).to(logits.device)
    return ReferenceSignals(logits=logits, keep=keep, labels=ctx.data.y.to(logits.device))


def attack_target(ctx: Context, attacks: dict[str, Attack], served: torch.Tensor, target: int,
                  out: AttackOutputs, *, public: Mapping[str, np.ndarray] | None = None) -> None:
    """Score ``target``'s served output ``[N, Q, C]`` with the fitted ``attacks`` into ``out``: the scores, each
    attack's fitted knobs and, when ``out`` keeps sanity scores, the scores of the target's untrained twin.
    ``public[name]``: the records attack ``name`` trained on, left unscored (NaN)."""
    labels = ctx.data.y.to(ctx.settings.device)
    public = public or {}
    for name, scores in score_attacks(attacks, served, labels).items():
        out.scores[name][target] = unscored(scores, public[name]) if name in public else scores
        out.fitted_params[name][target] = attacks[name].fitted_params()
    if out.sanity is not None:
        for name, scores in score_attacks(attacks, untrained_logits(ctx, target), labels).items():
            out.sanity[name][target] = unscored(scores, public[name]) if name in public else scores


def attack_stage(ctx: Context, logits: np.ndarray, *, keep_fitted: Collection[int] = ()) -> AttackOutputs:
    """Fit every attack on each target's references and score the target (and its untrained twin).

    The fitted attacks of targets ``keep_fitted`` are kept in :attr:`AttackOutputs.fitted`.
    """
    s = ctx.settings
    all_logits = torch.from_numpy(logits).to(s.device).float()
    out = AttackOutputs.empty(model_attacks(s), sanity=s.sanity_check)
    for target in ctx.splits.target_ids:
        refs = list(ctx.splits.reference_ids[target])
        attacks = fit_attacks(s, reference_signals(ctx, all_logits[refs], refs))
        public = fit_records(ctx, attacks, target, all_logits[target])
        attack_target(ctx, attacks, all_logits[target], target, out, public=public)
        if target in keep_fitted:
            out.fitted[target] = attacks
    return out
