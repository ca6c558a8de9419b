"""The one-run DP audit (``dp_audit.kind``): train the target once with canaries, guess them, bound epsilon.

The target trains on its usual half of the population plus the canaries whose inclusion
bit is set (:mod:`mia_torch.dp_audit.canaries`). Its own study runs as usual on the other
records (the attacks' pooled ROC and empirical epsilon, with the canaries left out), and
the score ``dp_audit.score`` ranks the canaries: the auditor guesses IN for the highest,
OUT for the lowest (:mod:`mia_torch.dp_audit.guesses`). Only the target is trained unless
an attack needs reference models (e.g. ``lira_offline``); no reference trains on a canary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from omegaconf import DictConfig

from mia_torch.atomic import atomic_write_bytes
from mia_torch.data.validate import check_training_sets
from mia_torch.dp_audit.canaries import Canaries, add_canaries, draw_canaries
from mia_torch.dp_audit.config import INPUT_KINDS
from mia_torch.dp_audit.gradient import train_with_gradient_canaries
from mia_torch.dp_audit.guesses import audit_scores, precision_curve
from mia_torch.dp_audit.result import DpAuditResult
from mia_torch.report.types import RunResults
from mia_torch.stages.attack_runs import feature_table
from mia_torch.stages.attacks import AttackOutputs, attack_target, fit_attacks
from mia_torch.stages.context import Context, build, is_defended, model_seed, stored_path
from mia_torch.stages.record_attacks import model_attacks
from mia_torch.stages.report import identity_query, report_study
from mia_torch.stages.signals import query, signals_stage
from mia_torch.stages.train import train_stage
from mia_torch.store import array_to_bytes
from mia_torch.training.canary_gradients import num_trainable
from mia_torch.training.dp import DPSGD

__all__ = ["DpAuditPlan", "plan_dp_audit", "run_dp_audit"]


@dataclass(frozen=True)
class DpAuditPlan:
    """The audited run, checked before any training: the context with the canaries in the data and the
    keep matrix, the canaries, the target, and the reference models (none unless an attack needs them)."""

    ctx: Context
    canaries: Canaries
    target: int
    references: tuple[int, ...]


def plan_dp_audit(ctx: Context) -> DpAuditPlan:
    """Draw the canaries and check that they, the score and the training sets fit the run (naming the key)."""
    s = ctx.settings
    audit, target = s.dp_audit, s.target_ids[0]
    if audit.delta is not None and isinstance(s.defense, DPSGD) and s.defense.delta is None:
        s = replace(s, defense=replace(s.defense, delta=audit.delta))  # one delta: DP-SGD's, the bounds', the pooled ε's
    attacks = ctx.attacks
    if audit.kind in INPUT_KINDS and attacks[audit.score_name].needs_in_references:
        raise ValueError(f"dp_audit.score={audit.score_name} is an online attack: its references would have to train "
                         "on the canaries, which only the audited model may see; use an offline one, e.g. "
                         "dp_audit.score=loss or lira_offline")
    references = tuple(ctx.splits.reference_ids[target]) if any(a.requires_references for a in attacks.values()) \
        else ()
    parameters = None
    if audit.kind == "gradient":
        parameters = num_trainable(build(s, ctx.data, model_seed(s, target), defended=is_defended(s, target)))
    canaries = draw_canaries(audit, ctx.data, seed=s.seed, num_parameters=parameters)
    data, splits = add_canaries(ctx.data, ctx.splits, canaries, target=target, seed=s.seed)
    check_training_sets(splits.keep[[target, *references]], threat_model=s.threat_model,
                        source=f"{s.dataset.describe()} with {len(canaries)} canaries")
    # the models' keys follow the canaries (and the delta): a context of its own
    return DpAuditPlan(ctx=replace(ctx.for_splits(splits), settings=s, data=data), canaries=canaries, target=target,
                       references=references)


def _delta(ctx: Context) -> float:
    s = ctx.settings
    return s.dp_audit.delta if s.dp_audit.delta is not None else s.defense.delta_for(len(ctx.data.y))


def audit_result(ctx: Context, canaries: Canaries, scores: np.ndarray, *, target: int, pooled_attack: str | None,
                 claimed: float | None) -> DpAuditResult:
    """The bounds of the canaries' ``scores`` (higher = member) and the precision curve, as typed results;
    ``claimed`` is the accountant's epsilon (None without DP-SGD), drawn in the figure when finite."""
    audit, delta = ctx.settings.dp_audit, _delta(ctx)
    one_run, gaussian, grid = audit_scores(scores, canaries.included, delta=delta, confidence=audit.confidence,
                                           fractions=audit.guesses)
    result = DpAuditResult(kind=canaries.kind, score=audit.score_name, target=target, canaries=len(canaries),
                           included=int(canaries.included.sum()), confidence=audit.confidence, delta=delta,
                           grid_size=grid, one_run=one_run, gaussian=gaussian, pooled_attack=pooled_attack)
    epsilons = {f"accountant's ε = {claimed:.2f}": claimed} if claimed is not None and math.isfinite(claimed) else {}
    if one_run.epsilon > 0:
        epsilons[f"one-run bound ε = {one_run.epsilon:.2f}"] = one_run.epsilon
    result.curve = precision_curve(scores, canaries.included, delta=delta, level=result.level, epsilons=epsilons)
    return result


def _score_target(ctx: Context, target: int, served: torch.Tensor, references: list[int]) -> AttackOutputs:
    """Every attack fitted on ``references`` (possibly none; read as the features the attacks need) and scored on
    the target's served output."""
    s = ctx.settings
    attacks = model_attacks(ctx.attacks)
    source = signals_stage(ctx, references) if references else None
    table = None if source is None else feature_table(ctx.splits, source, attacks, device=s.device)
    out = AttackOutputs.empty(attacks, sanity=s.sanity_check)
    attack_target(ctx, fit_attacks(ctx, attacks, source, table), served, target, out)
    return out


def run_dp_audit(ctx: Context, cfg: DictConfig, started: float) -> RunResults:
    """Train the target with its canaries (and any references), report the study and the audit; the typed
    results (their ``dp_audit`` section: :class:`~mia_torch.dp_audit.result.DpAuditResult`)."""
    plan = plan_dp_audit(ctx)
    ctx, target, canaries = plan.ctx, plan.target, plan.canaries
    s, references = ctx.settings, list(plan.references)
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    atomic_write_bytes(ctx.run_dir / "eval_mask.npy", array_to_bytes(ctx.splits.eval_mask))
    atomic_write_bytes(ctx.run_dir / "labels.npy", array_to_bytes(ctx.data.y.cpu().numpy()))  # canaries' included
    canaries.save(ctx.run_dir / "canaries.npz")
    if canaries.kind == "gradient":
        model, target_meta, canary_scores = train_with_gradient_canaries(ctx, target, canaries)
        model_metrics = [target_meta, *train_stage(ctx, references)]
        served = query(ctx, model)
    else:
        model_metrics = train_stage(ctx, [target, *references])
        target_meta = {**model_metrics[0], "checkpoint": str(stored_path(ctx, target))}
        served = signals_stage(ctx, [target]).served(target).to(s.device)
    outputs = _score_target(ctx, target, served, references)
    if canaries.kind != "gradient":
        canary_scores = outputs.scores[s.dp_audit.score_name][target][canaries.columns]
    pooled = s.dp_audit.score_name if s.dp_audit.score_name in s.attacks else next(iter(s.attacks), None)
    result = audit_result(ctx, canaries, canary_scores, target=target, pooled_attack=pooled,
                          claimed=target_meta.get("dp_epsilon"))
    results = report_study(ctx, cfg, started, model_metrics=model_metrics, target_metrics={target: target_meta},
                           target_logits={target: served.cpu().numpy()[:, identity_query(s)]}, outputs=outputs,
                           keep=ctx.splits.keep, eval_mask=ctx.splits.eval_mask, dp_audit=result)
    return results
