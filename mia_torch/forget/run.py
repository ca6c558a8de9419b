"""The right-to-be-forgotten check (``forget.method``): remove records from a target, then ask
whether the model still treats them as members.

The target is trained with the records like any study's target; the records are then removed
by ``forget.method`` (:mod:`mia_torch.training.unlearning`, or a user's model); every
attack, fitted on the target's reference models by the attack stage, scores the target before
and after. The forgotten records are compared with records the target never saw (its
non-members) by the AUC of forgotten vs never-seen (:mod:`mia_torch.forget.verdict`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from mia_torch.attacks.feature_attack import ReferenceFeatures
from mia_torch.audit.checkpoint import load_checkpoint_model
from mia_torch.audit.evidence import EVIDENCE_FEATURES, record_evidence, verdicts
from mia_torch.audit.ids import read_ids
from mia_torch.data.validate import MIN_TRAIN_EXAMPLES
from mia_torch.fingerprint import code_digest
from mia_torch.forget.verdict import INDISTINGUISHABLE, separations, write_forget_csv
from mia_torch.locks import build_missing
from mia_torch.report.check_results import ForgetAttack, ForgetResult, ForgetUtility, ModelUtility
from mia_torch.signals.source import SignalSource
from mia_torch.stages.attack_runs import feature_table
from mia_torch.stages.attacks import AttackOutputs, attack_stage, score_attacks
from mia_torch.stages.context import Context, build, digest_row, is_defended, key_of, model_seed
from mia_torch.stages.signals import query
from mia_torch.stages.train import model_with_weights, stored_model, train_stage
from mia_torch.store import digest, state_dict_from_bytes, state_dict_to_bytes
from mia_torch.training.trainer import evaluate
from mia_torch.training.unlearning import finetune, gradient_ascent

__all__ = ["ForgetPlan", "forget_check", "plan_forget", "print_forget_summary", "run_forget"]


@dataclass(frozen=True)
class ForgetPlan:
    """Which records leave which target, checked before any training."""

    target: int
    forgotten: np.ndarray
    never_seen: np.ndarray
    after_model: nn.Module | None  # method=checkpoint: the user's model after removal


def plan_forget(ctx: Context) -> ForgetPlan:
    """Choose the forgotten records (``forget.ids`` or ``forget.count`` random members) and check them."""
    s = ctx.settings
    forget, target = s.forget, s.target_ids[0]
    members = np.flatnonzero(ctx.splits.keep[target])
    if forget.ids is not None:
        ids = read_ids(forget.ids, key="forget.ids", population_size=len(ctx.data.y), data_dir=s.data_dir)
        outside = np.setdiff1d(ids, members)
        if outside.size:
            raise ValueError(f"forget.ids: records {outside[:8].tolist()} are not members of target {target} "
                             f"(row {target} of keep.npy): only records it trained on can be forgotten")
    else:
        if forget.count > len(members) - MIN_TRAIN_EXAMPLES:
            raise ValueError(f"forget.count={forget.count} is invalid: target {target} trains on {len(members)} "
                             f"records and must keep at least {MIN_TRAIN_EXAMPLES}")
        ids = np.sort(np.random.default_rng([s.seed, 17, target]).choice(members, forget.count, replace=False))
    never_seen = np.flatnonzero(~ctx.splits.keep[target] & ctx.splits.eval_mask)
    after = None
    if forget.method == "checkpoint":
        after = load_checkpoint_model(forget.checkpoint, lambda: build(s, ctx.data, model_seed(s, target),
                                                                       defended=is_defended(s, target)),
                                      key="forget.checkpoint")
    return ForgetPlan(target=target, forgotten=ids, never_seen=never_seen, after_model=after)


def _retained(ctx: Context, plan: ForgetPlan) -> np.ndarray:
    row = ctx.splits.keep[plan.target].copy()
    row[plan.forgotten] = False
    return row


def _retrained(ctx: Context, plan: ForgetPlan) -> tuple[nn.Module, dict[str, Any]]:
    """The target trained from scratch, same seed and recipe, without the forgotten records (a stored model)."""
    keep = ctx.splits.keep.copy()
    keep[plan.target] = _retained(ctx, plan)
    after = ctx.for_splits(replace(ctx.splits, keep=keep))
    meta = train_stage(after, [plan.target])[0]
    return stored_model(after, plan.target), {**meta, "trained": bool(after.trained)}


def _unlearned(ctx: Context, plan: ForgetPlan, before: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """``finetune`` or ``gradient_ascent`` applied to a copy of the target (a stored, keyed artifact)."""
    s, data, t = ctx.settings, ctx.data, plan.target
    f = s.forget
    lr, ascent_lr = f.lr or s.train.lr, f.ascent_lr or s.train.lr
    forgotten = np.zeros(len(data.y), dtype=bool)
    forgotten[plan.forgotten] = True
    key = digest({"before": key_of(ctx, t), "method": f.method, "forgotten": digest_row(forgotten),
                  "epochs": f.epochs, "lr": lr, "ascent_epochs": f.ascent_epochs, "ascent_lr": ascent_lr,
                  "code": code_digest("models")})
    retained = torch.from_numpy(np.flatnonzero(_retained(ctx, plan)))

    def unlearn(_: list[int]) -> None:
        model = copy.deepcopy(before)
        seed = model_seed(s, t) + 1
        if f.method == "gradient_ascent":
            gradient_ascent(model, data.x, data.y, torch.from_numpy(plan.forgotten), epochs=f.ascent_epochs,
                            lr=ascent_lr, batch_size=s.train.batch_size, seed=seed)
        result = finetune(model, data.x, data.y, retained, s.train, epochs=f.epochs, lr=lr, seed=seed,
                          x_test=data.x_test, y_test=data.y_test)
        ctx.store.save("models", key, state_dict_to_bytes(model.state_dict()), {"model": t, **result.metrics})

    outcome = build_missing(ctx.store, "models", {t: key}, unlearn, group=1, decode=state_dict_from_bytes,
                            keep_values=True)
    model = model_with_weights(ctx, t, outcome.values[t], key=key)
    if model is None:
        raise RuntimeError(f"the {f.method} model of target {t} in the store {ctx.store.root} does not fit the "
                           "configured model: it was moved aside")
    return model, {**outcome.meta[t], "trained": bool(outcome.built)}


def _accuracy(model: nn.Module, ctx: Context, ids: np.ndarray) -> float:
    idx = torch.from_numpy(ids).to(ctx.data.x.device)
    return evaluate(model, ctx.data.x[idx], ctx.data.y[idx])[1]


def _utility(ctx: Context, plan: ForgetPlan, model: nn.Module) -> ModelUtility:
    """Test accuracy, and accuracy on the retained and on the forgotten records."""
    return ModelUtility(test_acc=evaluate(model, ctx.data.x_test, ctx.data.y_test)[1],
                        retained_acc=_accuracy(model, ctx, np.flatnonzero(_retained(ctx, plan))),
                        forgotten_acc=_accuracy(model, ctx, plan.forgotten))


def forget_check(ctx: Context, plan: ForgetPlan, source: SignalSource) -> tuple[AttackOutputs, ForgetResult]:
    """The study's attack stage (the target's fitted attacks kept) and the forget check, both on one table of
    every model's features (:func:`~mia_torch.stages.attack_runs.feature_table`, with what the evidence reads)."""
    table = feature_table(ctx.splits, source, ctx.attacks, device=ctx.settings.device, extra=EVIDENCE_FEATURES)
    outputs = attack_stage(ctx, table, source, keep_fitted=(plan.target,))
    return outputs, run_forget(ctx, plan, source, outputs, table)


def run_forget(ctx: Context, plan: ForgetPlan, source: SignalSource, outputs: AttackOutputs,
               table: ReferenceFeatures) -> ForgetResult:
    """Remove the records, score before and after, compare with never-seen records; the run's ``forget`` section.

    ``source`` reads the served outputs of the study's models (the target before removal
    among them) and ``table`` holds their features, φ per query among them
    (:data:`~mia_torch.audit.evidence.EVIDENCE_FEATURES`); ``outputs`` are the attack stage's,
    with the target's fitted attacks kept (its scores are the "before" ones). Writes ``forget.csv``.
    """
    s, t = ctx.settings, plan.target
    f = s.forget
    before = stored_model(ctx, t)
    if f.method == "retrain":
        after, after_meta = _retrained(ctx, plan)
    elif f.method == "checkpoint":
        after, after_meta = plan.after_model.to(s.device).eval(), {"checkpoint": str(f.checkpoint)}
    else:
        after, after_meta = _unlearned(ctx, plan, before)
    reference = table.subset(torch.tensor(ctx.splits.reference_ids[t], dtype=torch.long, device=table.keep.device))
    labels = ctx.data.y.to(s.device)
    attacks = outputs.fitted[t]
    served = {"before": source.served(t).to(s.device), "after": query(ctx, after)}
    scores = {"before": {name: outputs.scores[name][t] for name in attacks},
              "after": score_attacks(attacks, served["after"], labels)}
    evidence = {when: record_evidence(out, labels, reference, online=False).subset(plan.forgotten)
                for when, out in served.items()}
    compare = {when: separations(scores[when], plan.forgotten, plan.never_seen, bootstrap=s.bootstrap, seed=s.seed)
               for when in served}
    flagged = verdicts(evidence["after"].p_gaussian, f.fpr) == "member"
    write_forget_csv(ctx.run_dir / "forget.csv", ids=plan.forgotten,
                     source_ids=ctx.data.indices.numpy()[plan.forgotten],
                     classes=ctx.data.y.cpu().numpy()[plan.forgotten], scores=scores, evidence=evidence,
                     flagged=flagged, fpr=f.fpr)
    attacks_entry = {name: ForgetAttack(before=compare["before"][name], after=compare["after"][name])
                     for name in attacks}
    indistinguishable = all(entry.after.verdict == INDISTINGUISHABLE for entry in attacks_entry.values())
    return ForgetResult(
        method=f.method, target=t, forgotten=int(len(plan.forgotten)), never_seen=int(len(plan.never_seen)),
        retained=int(_retained(ctx, plan).sum()), forgotten_ids=plan.forgotten.tolist(), fpr=f.fpr,
        attacks=attacks_entry,
        verdict=INDISTINGUISHABLE if indistinguishable else "still distinguishable from never-seen",
        still_flagged=plan.forgotten[flagged].tolist(),
        utility=ForgetUtility(before=_utility(ctx, plan, before), after=_utility(ctx, plan, after)),
        after_model=after_meta, records_csv="forget.csv",
    )


def print_forget_summary(result: ForgetResult, run_dir) -> None:
    """Print the forget check's answer."""
    lines = [f"forget check (forget.method={result.method}): {result.forgotten} records removed from target "
             f"{result.target} ({result.retained} retained), compared with {result.never_seen} records it never saw"]
    width = max(len(n) for n in result.attacks) if result.attacks else 6
    lines.append(f"  {'attack':<{width}}  {'AUC before [95% CI]':<24}  {'AUC after [95% CI]':<24}  after removal")
    for name, e in result.attacks.items():
        cells = [f"{s.auc:.3f} [{s.auc_ci[0]:.3f}, {s.auc_ci[1]:.3f}]" for s in (e.before, e.after)]
        lines.append(f"  {name:<{width}}  {cells[0]:<24}  {cells[1]:<24}  {e.after.verdict}")
    u = result.utility
    lines.append(f"  utility: test acc {u.before.test_acc:.3f} -> {u.after.test_acc:.3f}; forgotten "
                 f"records' acc {u.before.forgotten_acc:.3f} -> {u.after.forgotten_acc:.3f}")
    lines.append(f"  still flagged (p <= {result.fpr:g}): {len(result.still_flagged)} of {result.forgotten} "
                 f"records (about {result.fpr * result.forgotten:.1f} expected by chance)"
                 + (f": {result.still_flagged[:10]}" if result.still_flagged else ""))
    lines.append(f"  verdict: {result.verdict} (under these attacks and reference models; not a proof)")
    lines.append(f"  per record: {run_dir}/forget.csv")
    print("\n".join(lines), flush=True)
