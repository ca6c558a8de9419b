"""Attacks that read the records themselves: the quantile attack and the blind baseline.

The quantile attack (:mod:`mia_torch.attacks.quantile`) trains one regression model on the
target's scores on public records it never trained on, instead of reference models. In a
study those are the dataset's test split (no model trains on it) and/or a seeded share of
each target's non-members (``attack.quantile.public``); in an audit, ``audit.public``. The
population records it trains on are never evaluated: their scores are NaN (not scored),
and the evaluation leaves them out of that attack's ROC.

The blind baseline (:mod:`mia_torch.attacks.blind`) never reads the model: it is run by
the evaluation on the evaluated records and their membership (:func:`blind_check`).
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from mia_torch.attacks.base import Attack
from mia_torch.attacks.blind import BlindBaseline
from mia_torch.attacks.quantile import QuantileAttack, split_public
from mia_torch.metrics.blind import blind_verdict, held_out_auc
from mia_torch.report.guards import BlindCheck
from mia_torch.report.types import AttackEvaluation
from mia_torch.stages.context import Context, model_seed
from mia_torch.stages.signals import query
from mia_torch.stages.train import stored_model
from mia_torch.training.build import build_model

__all__ = ["blind_baseline", "blind_check", "fit_quantile", "fit_records", "model_attacks", "study_public", "unscored"]


def model_attacks(attacks: Mapping[str, Attack]) -> dict[str, Attack]:
    """The configured attacks (built once, ``Context.attacks``) that score the model's outputs: every one but the
    blind baseline."""
    return {name: attack for name, attack in attacks.items() if not isinstance(attack, BlindBaseline)}


def blind_baseline(attacks: Mapping[str, Attack], *, seed: int, audit_members: bool = False) -> BlindBaseline | None:
    """The configured blind baseline among ``attacks`` (``attack=blind``, built once: ``Context.attacks``); in an
    audit with ``audit.members`` the default one (seeded with ``seed``) when none is configured; else None."""
    configured = next((a for a in attacks.values() if isinstance(a, BlindBaseline)), None)
    if configured is not None:
        return configured
    return BlindBaseline(seed=seed) if audit_members else None


def study_public(ctx: Context, attack: QuantileAttack, target: int) -> np.ndarray:
    """The population records of ``target`` that the quantile attack learns from in a study: a seeded
    ``public_fraction`` of its evaluated non-members (``public`` = ``nonmembers`` or ``both``), else none."""
    if attack.public == "test":
        return np.zeros(0, dtype=np.int64)
    nonmembers = np.flatnonzero(ctx.splits.eval_mask & ~ctx.splits.keep[target])
    return split_public(nonmembers, fraction=attack.public_fraction, seed=ctx.settings.seed * 7919 + target)


def served_test_output(ctx: Context, model: torch.nn.Module) -> torch.Tensor:
    """A model's served output ``[n, Q, C]`` on the dataset's test split (records no model trains on)."""
    return query(ctx, model, ctx.data.x_test)


def fit_quantile(ctx: Context, attack: QuantileAttack, target: int, served: torch.Tensor, *, public: np.ndarray,
                 test_output: torch.Tensor | None = None, sources: Mapping[str, int] | None = None) -> QuantileAttack:
    """Fit the quantile attack on ``target``'s served output ``[N, Q, C]`` on the ``public`` population records
    (and on the test split, whose served output is ``test_output``), then bind it to the whole population.
    ``sources`` names where the public records come from (default: a study's)."""
    data, s = ctx.data, ctx.settings
    ids = torch.from_numpy(public).to(data.x.device)
    records, labels = [data.x[ids]], [data.y[ids]]
    values = [attack.statistic_of(served[ids.to(served.device)], data.y[ids].to(served.device))]
    if test_output is not None:
        records.append(data.x_test)
        labels.append(data.y_test)
        values.append(attack.statistic_of(test_output, data.y_test.to(test_output.device)))

    def network(outputs: int) -> torch.nn.Module:  # the target's architecture with `outputs` outputs
        return build_model(s.model, input_shape=data.input_shape, num_classes=outputs, seed=model_seed(s, target))

    if sources is None:
        sources = {"non-members of the target": int(len(public)),
                   "test split": 0 if test_output is None else int(len(data.y_test))}
    attack.fit_public(torch.cat(records), torch.cat(labels), torch.cat([v.to(data.x.device) for v in values]),
                      num_classes=data.num_classes, kind=data.kind, network=network, sources=sources)
    return attack.bind(data.x, data.y)


def fit_records(ctx: Context, attacks: dict[str, Attack], target: int, served: torch.Tensor) -> dict[str, np.ndarray]:
    """Fit the attacks that read the records (quantile) on ``target``'s public records in a study
    (:func:`study_public`, and the test split's served output); returns the population records each trained on."""
    public = {}
    for name, attack in attacks.items():
        if isinstance(attack, QuantileAttack):
            public[name] = study_public(ctx, attack, target)
            test = served_test_output(ctx, stored_model(ctx, target)) if attack.public != "nonmembers" else None
            fit_quantile(ctx, attack, target, served, public=public[name], test_output=test)
    return public


def unscored(scores: np.ndarray, public: np.ndarray | None) -> np.ndarray:
    """``scores`` with the records the attack trained on (``public``) set to NaN: never scored, never
    evaluated; ``scores`` as they are for an attack that trained on none (None)."""
    if public is None:
        return scores
    out = np.array(scores, dtype=np.float64, copy=True)
    out[public] = np.nan
    return out


def blind_check(blind: BlindBaseline, ctx: Context, *, keep: np.ndarray, eval_mask: np.ndarray,
                targets: list[int], attacks: Mapping[str, AttackEvaluation], bootstrap: int, seed: int) -> BlindCheck:
    """Run the blind baseline on each target's evaluated records and membership, and apply the warning rule
    against every attack's pooled AUC (:mod:`mia_torch.metrics.blind`)."""
    ids = np.flatnonzero(eval_mask)
    records, labels = ctx.data.x[torch.from_numpy(ids).to(ctx.data.x.device)], ctx.data.y.cpu().numpy()[ids]
    scores, members, folds = [], [], []
    for index, target in enumerate(targets):
        held_out, fold = blind.held_out_scores(records, labels, keep[target][ids])
        scores.append(held_out)
        members.append(keep[target][ids])
        folds.append(fold + index * blind.folds)
    members_all = np.concatenate(members)
    measured = held_out_auc(np.concatenate(scores), members_all, np.concatenate(folds),
                            num_resamples=max(bootstrap, 200), seed=seed)
    verdict = blind_verdict(measured.auc, measured.interval, {n: a.pooled.auc for n, a in attacks.items()})
    return BlindCheck.of(measured, verdict, model=blind.model, num_members=int(members_all.sum()),
                         num_nonmembers=int((~members_all).sum()))

