"""Audit a model you own (``audit.checkpoint``, or only its outputs: ``audit.outputs``): was a record in
its training set?

Reference models copy the stated recipe (``dataset``, ``model``, ``train``) on seeded random
halves of the population, exactly as a study's references, so they are cached in the
store and shared with any study or audit of the same recipe: an audit of a study's own
target with its member ids reproduces the study's scores. Each record is tested offline,
against the references that did not train on it; online attacks, which also use the
references that did, run when ``audit.online=true``. Audited from its outputs, the model's
served outputs come from the file (:mod:`~mia_torch.audit.outputs`) instead of a query,
and its references are stand-ins: the result is a lower bound on what an attacker with
references of the model's own architecture could do.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from mia_torch.atomic import atomic_write_bytes
from mia_torch.attacks.blind import BlindBaseline
from mia_torch.attacks.quantile import QuantileAttack
from mia_torch.audit.checkpoint import CheckpointError, load_checkpoint_model
from mia_torch.audit.evidence import EVIDENCE_FEATURES, RecordEvidence, record_evidence, verdicts
from mia_torch.audit.ids import read_ids
from mia_torch.audit.outputs import PROXY_P_VALUES, AuditedOutputs, outputs_metrics, read_outputs, warn_if_unordered
from mia_torch.audit.public import PublicRecords, fit_public_attacks, plan_public, residual_evidence
from mia_torch.audit.summary import MAX_PRINTED, describe_records, write_records_csv
from mia_torch.evaluation import save_scores
from mia_torch.metrics.precision import expected_false_flags
from mia_torch.report.check_results import AuditRecord, AuditResult
from mia_torch.report.html import finish_run_html
from mia_torch.report.json_file import write_json
from mia_torch.report.table import PROXY_CAVEAT
from mia_torch.report.types import RunResults, TargetResult
from mia_torch.signals.output import serve
from mia_torch.signals.source import SignalSource
from mia_torch.stages.attack_runs import feature_table
from mia_torch.stages.attacks import AttackOutputs, attack_target, fit_attacks
from mia_torch.stages.context import Context, build, model_seed
from mia_torch.stages.record_attacks import blind_baseline, model_attacks
from mia_torch.stages.report import identity_query, report_study, run_results
from mia_torch.stages.signals import query, record_signals, signals_stage
from mia_torch.stages.train import train_stage
from mia_torch.store import array_to_bytes
from mia_torch.training.trainer import evaluate

__all__ = ["AuditPlan", "plan_audit", "run_audit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuditPlan:
    """What an audit asks and with what, checked before any training."""

    target: int
    model: nn.Module | None  # None when audited from its outputs
    checkpoint: Path  # the audited file: the checkpoint, or the outputs
    candidates: np.ndarray
    members: np.ndarray | None
    references: tuple[int, ...]
    skipped: dict[str, str]
    outputs: AuditedOutputs | None = None
    public: PublicRecords | None = None  # audit.public: what attacks without reference models learn from

    @property
    def ground_truth(self) -> bool:
        """Whether membership is known for candidates of both kinds (then the full report is written)."""
        if self.members is None:
            return False
        inside = np.isin(self.candidates, self.members)
        return bool(inside.any() and not inside.all())

    @property
    def no_report(self) -> str | None:
        """Why known members give no membership report (ROC, AUC): the candidates must hold both kinds."""
        if self.members is None or self.ground_truth:
            return None
        every = bool(np.isin(self.candidates, self.members).all())
        return (f"audit.members lists {'every one' if every else 'none'} of the {len(self.candidates)} candidate "
                f"records, so there is no known {'non-member' if every else 'member'} to compare with and no ROC/AUC report "
                "is made (each record still gets its p-value and verdict); for the report, give audit.candidates "
                "that hold both records the model trained on and records it did not")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_audited_model(ctx: Context, target: int) -> nn.Module:
    """The user's model from ``audit.checkpoint``, checked on two population records."""
    s = ctx.settings
    model = load_checkpoint_model(s.audit.checkpoint, lambda: build(s, ctx.data, model_seed(s, target)))
    model = model.to(s.device).eval()
    with torch.no_grad():
        try:
            out = model(ctx.data.x[:2])
        except Exception as err:  # noqa: BLE001 - any failure of the user's model, reported with the key
            raise CheckpointError(
                f"audit.checkpoint={s.audit.checkpoint!r} fails on the dataset's inputs {tuple(ctx.data.x[:2].shape)} "
                f"({type(err).__name__}: {err}): check `audit.preprocess` and the dataset") from err
    if tuple(out.shape) != (2, ctx.data.num_classes):
        raise CheckpointError(f"audit.checkpoint={s.audit.checkpoint!r} returns {tuple(out.shape)} for 2 records; "
                              f"the dataset has {ctx.data.num_classes} classes, so expected (2, {ctx.data.num_classes})")
    return model


def plan_audit(ctx: Context) -> tuple[AuditPlan, Context]:
    """Read the ids, load and check the model, choose the attacks: everything that can fail fast.

    Returns the plan and the context whose keep matrix holds the audited model's known
    members in its row (all False when unknown), for the report.
    """
    s = ctx.settings
    audit, n, target = s.audit, len(ctx.data.y), s.target_ids[0]
    ids = {key: read_ids(value, key=f"audit.{key}", population_size=n, data_dir=s.data_dir)
           for key, value in (("candidates", audit.candidates), ("members", audit.members)) if value is not None}
    members = ids.get("members")
    attacks = model_attacks(ctx.attacks)
    skipped = {}
    for name, attack in attacks.items():
        if attack.needs_in_references and not audit.online:
            skipped[name] = ("uses references trained on each record (IN references): allow it with "
                             "audit.online=true")
    if len(skipped) == len(attacks):
        raise ValueError(f"every configured attack ({', '.join(skipped)}) needs audit.online=true: set it, or "
                         "choose offline attacks, e.g. attack=[lira_offline,rmia,loss]")
    no_references = not ctx.splits.reference_ids[target]
    if no_references and not any(isinstance(a, QuantileAttack) for a in attacks.values()):
        raise ValueError(f"num_models={s.num_models} trains no reference model, so the per-record evidence must come "
                         "from an attack that needs none: add attack=quantile (with audit.public), or set "
                         "num_models >= 3")
    public, candidates = plan_public(ctx, attacks, candidates=ids.get("candidates"), members=members,
                                     calibrate=no_references)
    keep = ctx.splits.keep.copy()
    keep[target] = False
    if members is not None:
        keep[target, members] = True
    outputs = None if audit.outputs is None else read_outputs(
        audit.outputs, kind=audit.output_kind, num_records=n, num_classes=ctx.data.num_classes, queries=s.queries,
        data_dir=s.data_dir)
    if outputs is not None:
        warn_if_unordered(outputs, ctx.data.y.cpu().numpy())
    plan = AuditPlan(target=target, model=load_audited_model(ctx, target) if outputs is None else None,
                     checkpoint=Path(audit.checkpoint) if outputs is None else outputs.file, candidates=candidates,
                     members=members, references=ctx.splits.reference_ids[target], skipped=skipped, outputs=outputs,
                     public=public)
    if plan.no_report:
        print(f"note: {plan.no_report}", flush=True)
    if plan.ground_truth:
        _check_blind_folds(plan, blind_baseline(ctx.attacks, seed=s.seed, audit_members=True))
    return plan, ctx.for_splits(replace(ctx.splits, keep=keep))


def _check_blind_folds(plan: AuditPlan, blind: BlindBaseline) -> None:
    """The blind baseline (run in every audit with known members) needs ``folds`` candidates of each kind."""
    known = np.isin(plan.candidates, plan.members)
    members, nonmembers = int(known.sum()), int((~known).sum())
    if min(members, nonmembers) < blind.folds:
        raise ValueError(
            f"audit.candidates hold {members} known member(s) and {nonmembers} known non-member(s) (audit.members), "
            f"but the blind baseline run in every audit with known members splits them into {blind.folds} folds and "
            f"needs at least {blind.folds} of each: add candidates of the rarer kind to audit.candidates "
            "(or lower attack.blind.folds, at least 2)")


def _audited_metrics(ctx: Context, plan: AuditPlan, served: torch.Tensor) -> dict[str, Any]:
    """Test accuracy and loss of the audited model (and on its members, when known).

    Audited from its outputs, only the population's outputs are known: the members' accuracy
    and loss are train accuracy and loss, the other population records' are test accuracy and loss.
    """
    data = ctx.data
    if plan.outputs is not None:
        return {"model": plan.target, "outputs": str(plan.checkpoint), "proxy_references": True,
                **outputs_metrics(served, data.y, plan.members)}
    metrics: dict[str, Any] = {"model": plan.target, "checkpoint": str(plan.checkpoint)}
    metrics["test_loss"], metrics["test_acc"] = evaluate(plan.model, data.x_test, data.y_test)
    if plan.members is not None:
        idx = torch.from_numpy(plan.members).to(data.x.device)
        metrics["train_loss"], metrics["train_acc"] = evaluate(plan.model, data.x[idx], data.y[idx])
    return metrics


def _audit_summary(ctx: Context, plan: AuditPlan, evidence: RecordEvidence) -> AuditResult:
    """The run's ``audit`` section."""
    fpr = ctx.settings.audit.fpr
    flagged = verdicts(evidence.p_gaussian, fpr) == "member"
    shown = plan.candidates[:MAX_PRINTED]
    source = (dict(checkpoint=str(plan.checkpoint), checkpoint_sha256=_sha256(plan.checkpoint))
              if plan.outputs is None else
              dict(outputs=str(plan.checkpoint), outputs_sha256=_sha256(plan.checkpoint),
                   output_kind=plan.outputs.kind, saturated_rows=plan.outputs.saturated, proxy_references=True))
    return AuditResult(
        **source,
        preprocess=ctx.settings.audit.preprocess, references=list(plan.references),
        online=ctx.settings.audit.online, skipped_attacks=plan.skipped, fpr=fpr,
        candidates=int(len(plan.candidates)), flagged=int(flagged.sum()), records_csv="records.csv",
        public=0 if plan.public is None else int(len(plan.public.train) + len(plan.public.calibration)),
        expected_false_flags={f"{prior:g}": expected_false_flags(len(plan.candidates), prior=prior, fpr=fpr)
                              for prior in ctx.settings.priors},
        no_report=plan.no_report or None,
        records=[AuditRecord(id=int(i), p_gaussian=float(evidence.p_gaussian[k]), p_rank=float(evidence.p_rank[k]),
                             verdict="member" if flagged[k] else "no evidence") for k, i in enumerate(shown)],
    )


def _served(ctx: Context, plan: AuditPlan) -> torch.Tensor:
    """The audited model's served output ``[N, Q, C]``: queried from the model, or read from ``audit.outputs``
    (the ``output`` group applies to both, as to the references)."""
    if plan.outputs is None:
        return query(ctx, plan.model)
    return serve(plan.outputs.logits.to(ctx.settings.device), ctx.settings.output).float()


def _audited_line(plan: AuditPlan, metrics: dict[str, Any]) -> str:
    """The printed line about the audited model when membership is not known."""
    if plan.outputs is None:
        return f"audited model {plan.checkpoint}: test acc {metrics['test_acc']:.3f}"
    return (f"audited outputs {plan.checkpoint} ({plan.outputs.kind}): accuracy on the population records "
            f"{metrics['population_acc']:.3f}\n{PROXY_CAVEAT}")


def _scores_and_evidence(ctx: Context, plan: AuditPlan, served: torch.Tensor,
                         source: SignalSource | None) -> tuple[AttackOutputs, RecordEvidence]:
    """Every attack fitted on the references (the models of ``source``; None: none) and scored on the audited
    model's served output ``[N, Q, C]``; the candidates' evidence. The references are read as the features the
    attacks and the evidence need (their logits only for an attack that reads logits)."""
    s, t = ctx.settings, plan.target
    attacks = {n: a for n, a in model_attacks(ctx.attacks).items() if n not in plan.skipped}
    table = None if source is None else feature_table(ctx.splits, source, attacks, device=s.device,
                                                      extra=EVIDENCE_FEATURES)
    attacks = fit_attacks(ctx, attacks, source, table)
    public = fit_public_attacks(ctx, attacks, t, served, plan.public)
    outputs = AttackOutputs.empty(attacks, sanity=s.sanity_check)
    attack_target(ctx, attacks, served, t, outputs, public=public)
    if table is not None:
        evidence = record_evidence(served, ctx.data.y.to(s.device), table, online=s.audit.online)
    else:  # the quantile attack's own p-values
        quantile = next(a for a in attacks.values() if isinstance(a, QuantileAttack))
        evidence = residual_evidence(ctx, quantile, served, plan.public.calibration)
    return outputs, evidence.subset(plan.candidates)


def run_audit(ctx: Context, cfg: DictConfig, started: float) -> RunResults:
    """Train (or reuse) the references, score the user's model and answer per record."""
    plan, ctx = plan_audit(ctx)
    s, t = ctx.settings, plan.target
    refs = list(plan.references)
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    served = _served(ctx, plan)
    ref_metrics, source = [], None
    if refs:
        ref_metrics = train_stage(ctx, refs)
        source = signals_stage(ctx, refs)
        record_signals(ctx, source)  # the references' signals, by reference; the audited model's own below
    else:
        log.info("no reference model trained: num_models=%d, the attacks learn from audit.public", s.num_models)
    atomic_write_bytes(ctx.run_dir / "target_signals.npy", array_to_bytes(served.cpu().numpy()))
    outputs, evidence = _scores_and_evidence(ctx, plan, served, source)
    classes = ctx.data.y.cpu().numpy()[plan.candidates]
    candidate_scores = {n: v[t][plan.candidates] for n, v in outputs.scores.items()}
    known = None if plan.members is None else np.isin(plan.candidates, plan.members)
    write_records_csv(ctx.run_dir / "records.csv", ids=plan.candidates,
                      source_ids=ctx.data.indices.numpy()[plan.candidates], classes=classes, evidence=evidence,
                      scores=candidate_scores, fpr=s.audit.fpr, members=known)
    target_metrics = _audited_metrics(ctx, plan, served)
    section = _audit_summary(ctx, plan, evidence)
    models = [*ref_metrics, target_metrics]
    if plan.ground_truth:
        mask = np.zeros(len(ctx.data.y), dtype=bool)
        mask[plan.candidates] = True
        results = report_study(ctx, cfg, started, model_metrics=models, target_metrics={t: target_metrics},
                               target_logits={t: served.cpu().numpy()[:, identity_query(s)]}, outputs=outputs,
                               keep=ctx.splits.keep, eval_mask=mask, audit=section)
    else:
        save_scores(ctx.run_dir / "scores.npz", outputs.scores)
        targets = {t: TargetResult.from_dict(target_metrics, path="audited model")}
        results = run_results(ctx, cfg, started, targets=targets, models=models, attacks={}, audit=section)
        write_json(ctx.run_dir / "results.json", results.to_dict())
        finish_run_html(ctx.run_dir)
        print(_audited_line(plan, target_metrics) + (f"\nnote: {plan.no_report}" if plan.no_report else ""),
              flush=True)
    if plan.skipped:
        print(f"skipped (offline audit): {', '.join(plan.skipped)}: allow online attacks with audit.online=true")
    print(describe_records(plan.candidates, classes, evidence, fpr=s.audit.fpr, scores=candidate_scores,
                           members=known, audit=section), flush=True)
    if plan.outputs is not None:
        print(f"  {PROXY_P_VALUES}", flush=True)
    print(f"records: {ctx.run_dir / 'records.csv'}", flush=True)
    return results
