"""The attack stage: fit every attack on each target's reference models and score the target.

The built-in attacks read per-example features that the signals stage reduced every
model's logits to (:func:`~mia_torch.stages.attack_runs.feature_table`); attacks whose fit
is a sum over reference models sum once over all models and fit each target by taking
the target and its twin out (:mod:`mia_torch.stages.attack_runs`).
"""

from __future__ import annotations

import functools
import io
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mia_torch.attacks.base import Attack, ReferenceSignals
from mia_torch.attacks.feature_attack import FeatureAttack, ReferenceFeatures
from mia_torch.attacks.quantile import QuantileAttack
from mia_torch.signals.features import compute_features
from mia_torch.signals.source import SignalSource
from mia_torch.stages.attack_runs import DenseLogits, ReferencePlan, attack_runs, fitted_copy
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

    def to_bytes(self) -> bytes:
        """Scores, sanity scores and fitted knobs as one ``.npz`` (no pickle; the fitted attacks are left out)."""
        arrays = {f"scores/{n}/{t}": s for n, per in self.scores.items() for t, s in per.items()}
        arrays |= {f"sanity/{n}/{t}": s for n, per in (self.sanity or {}).items() for t, s in per.items()}
        meta = {"names": list(self.scores), "sanity": self.sanity is not None,
                "fitted_params": {n: {str(t): p for t, p in per.items()} for n, per in self.fitted_params.items()}}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> AttackOutputs:
        """Inverse of :meth:`to_bytes`."""
        with np.load(io.BytesIO(payload), allow_pickle=False) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            out = cls.empty(meta["names"], sanity=meta["sanity"])
            for key in z.files:
                kind, _, rest = key.partition("/")
                if kind in ("scores", "sanity"):
                    name, target = rest.rsplit("/", 1)
                    getattr(out, kind)[name][int(target)] = z[key]
        out.fitted_params = {n: {int(t): p for t, p in per.items()} for n, per in meta["fitted_params"].items()}
        return out

    @classmethod
    def merge(cls, parts: Sequence[AttackOutputs], targets: Sequence[int]) -> AttackOutputs:
        """The outputs of several jobs (disjoint targets) as one, targets in the order ``targets``."""
        names = list(parts[0].scores)
        out = cls.empty(names, sanity=parts[0].sanity is not None)
        owner = {t: part for part in parts for t in part.scores[names[0]]} if names else {}
        for t in targets:
            for n in names:
                out.scores[n][t] = owner[t].scores[n][t]
                out.fitted_params[n][t] = owner[t].fitted_params[n][t]
                if out.sanity is not None:
                    out.sanity[n][t] = owner[t].sanity[n][t]
        return out


def fit_attacks(ctx: Context, attacks: dict[str, Attack], source: SignalSource | None,
                table: ReferenceFeatures | None) -> dict[str, Attack]:
    """A copy of every attack fitted on the reference models of ``source`` (every model it holds; None: no
    reference model), never on a target: the feature attacks on their features ``table``
    (:func:`~mia_torch.stages.attack_runs.feature_table` of ``source``), the attacks that read logits on their
    served logits ``[R, N, Q, C]``, built once and only for them."""
    dense = functools.cache(lambda: None if source is None else reference_signals(
        ctx, torch.from_numpy(source.dense()).to(ctx.settings.device).float(), source.models))
    return {name: fitted_copy(attack, table, dense) for name, attack in attacks.items()}


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
        out.scores[name][target] = unscored(scores, public.get(name))
        out.fitted_params[name][target] = attacks[name].fitted_params()
    if out.sanity is not None:
        for name, scores in score_attacks(attacks, untrained_logits(ctx, target), labels).items():
            out.sanity[name][target] = unscored(scores, public.get(name))


def attack_stage(ctx: Context, table: ReferenceFeatures | None, source: SignalSource | None, *,
                 targets: Sequence[int] | None = None, keep_fitted: Collection[int] = ()) -> AttackOutputs:
    """Fit every attack on each target's references and score the target (and its untrained twin).

    ``table`` holds every model's features (:func:`~mia_torch.stages.attack_runs.feature_table`),
    ``source`` their stored logits (read only by attacks that read logits). ``targets``
    (default: every configured target) are the targets this job scores; the fitted attacks
    of targets ``keep_fitted`` are kept in :attr:`AttackOutputs.fitted`.
    """
    s = ctx.settings
    targets = list(s.target_ids if targets is None else targets)
    labels = ctx.data.y.to(s.device)
    scoring = model_attacks(ctx.attacks)
    plan = ReferencePlan(ctx.splits, s.target_ids, s.calibration)
    runs = attack_runs(scoring, plan, table=table, dense=DenseLogits(source, ctx.splits, labels))
    out = AttackOutputs.empty(scoring, sanity=s.sanity_check)
    reads_records = any(isinstance(a, QuantileAttack) for a in scoring.values())
    required = [f for a in scoring.values() if isinstance(a, FeatureAttack) for f in a.required_features()]
    for target in targets:
        fitted = {name: run.fitted(target) for name, run in runs.items()}
        public = fit_records(ctx, fitted, target, source.served(target).to(s.device)) if reads_records else {}
        for name, run in runs.items():
            scores = run.score(fitted[name], target)
            out.scores[name][target] = unscored(scores, public.get(name))
            out.fitted_params[name][target] = fitted[name].fitted_params()
        if out.sanity is not None:
            blank = untrained_logits(ctx, target)
            features = compute_features(blank, labels, required)
            for name, run in runs.items():
                scores = run.score_logits(fitted[name], blank, labels, features)
                out.sanity[name][target] = unscored(scores, public.get(name))
        if target in keep_fitted:
            out.fitted[target] = fitted
    return out
