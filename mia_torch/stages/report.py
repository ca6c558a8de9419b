"""Stage 5: evaluate the attacks' scores against membership and write the run's report."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mia_torch import __version__
from mia_torch.dp_audit.result import DpAuditResult
from mia_torch.evaluation import evaluate_attacks, overconfidence, save_scores
from mia_torch.provenance import environment_versions
from mia_torch.report.pictures import ImageSource
from mia_torch.report.check_results import AuditResult, ForgetResult
from mia_torch.report.write_run import write_run_report
from mia_torch.report.types import AttackEvaluation, RunResults, TargetResult
from mia_torch.stages.attacks import AttackOutputs
from mia_torch.settings.load import Settings
from mia_torch.stages.context import Context
from mia_torch.stages.record_attacks import blind_baseline, blind_check

__all__ = ["identity_query", "report_study", "run_results"]


def run_results(
    ctx: Context,
    cfg: DictConfig,
    started: float,
    *,
    targets: dict[int, TargetResult],
    models: list[dict[str, Any]],
    attacks: dict[str, AttackEvaluation],
    audit: AuditResult | None = None,
    forget: ForgetResult | None = None,
    dp_audit: DpAuditResult | None = None,
) -> RunResults:
    """The run's :class:`RunResults`: ``targets``, ``models`` and ``attacks`` (and an ``audit``, ``forget`` or
    one-run ``dp_audit`` section) with the config, versions, dataset, the models trained and reused, the corrupt
    artifacts and the seconds since ``started``."""
    s = ctx.settings
    return RunResults(
        config=OmegaConf.to_container(cfg, resolve=True),
        versions=environment_versions(__version__),
        dataset={"name": s.dataset.name, "population": int(len(ctx.data.y)),
                 "test": int(len(ctx.data.y_test)), "num_classes": ctx.data.num_classes},
        target_ids=list(targets),
        targets=targets,
        models=models,
        trained_models=ctx.trained,
        reused_models=ctx.reused,
        corrupt_artifacts=[str(p) for p in ctx.store.corrupt],
        seconds=round(time.time() - started, 2),
        attacks=attacks,
        dp_audit=dp_audit,
        audit=audit,
        forget=forget,
    )


def identity_query(settings: Settings) -> int:
    """The query whose served output the report reads per target (identity; else the first)."""
    return settings.queries.index("identity") if "identity" in settings.queries else 0


def report_study(
    ctx: Context,
    cfg: DictConfig,
    started: float,
    *,
    model_metrics: list[dict[str, Any]],
    target_metrics: dict[int, dict[str, Any]],
    target_logits: Mapping[int, np.ndarray],
    outputs: AttackOutputs,
    keep: np.ndarray,
    eval_mask: np.ndarray,
    audit: AuditResult | None = None,
    forget: ForgetResult | None = None,
    dp_audit: DpAuditResult | None = None,
) -> RunResults:
    """Evaluate the attacks' scores against membership ``keep`` and write the run's report.

    ``target_logits`` holds each target's served output on :func:`identity_query` (``[N, C]``,
    e.g. read from the store on access); ``target_metrics`` its accuracies (and whatever else
    its training recorded). Writes ``scores.npz``, ``results.json``, the figures, TensorBoard
    and the per-record CSVs; prints the summary. With ``attack=blind``, and in every audit
    (whose report needs its members), the blind baseline runs on the evaluated records and
    their membership.
    """
    s = ctx.settings
    save_scores(ctx.run_dir / "scores.npz", outputs.scores)
    labels = ctx.data.y.cpu().numpy()
    predictions, targets = {}, {}
    for t in s.target_ids:  # over-confidence of the served output, on the evaluated members and non-members
        logits = np.asarray(target_logits[t])
        predictions[t] = logits.argmax(-1)
        calibration = overconfidence(logits[eval_mask], labels[eval_mask], keep[t][eval_mask])
        targets[t] = TargetResult.from_dict({**target_metrics[t], **calibration}, path=f"model {t}")
    attacks = evaluate_attacks(outputs.scores, keep=keep, eval_mask=eval_mask,
                               fpr_targets=s.fpr_targets, bootstrap=s.bootstrap, seed=s.seed,
                               fitted_params=outputs.fitted_params, sanity=outputs.sanity, labels=labels,
                               predictions=predictions, delta=s.defense.delta_for(len(labels)), priors=s.priors)
    results = run_results(ctx, cfg, started, targets=targets, models=model_metrics, attacks=attacks, audit=audit,
                          forget=forget, dp_audit=dp_audit)
    blind = blind_baseline(ctx.attacks, seed=s.seed, audit_members=s.audit.enabled)  # an audit reports only when its members are known
    if blind is not None:
        results.blind_baseline = blind_check(blind, ctx, keep=keep, eval_mask=eval_mask, targets=list(s.target_ids),
                                             attacks=attacks, bootstrap=s.bootstrap, seed=s.seed)
    write_run_report(ctx.run_dir, results, scores=outputs.scores, keep=keep, eval_mask=eval_mask, labels=labels,
                     target_logits=target_logits, images=ImageSource.of(ctx.data))
    return results
