"""The five stages wired from a config: splits, train, signals, attacks, report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from mia_torch.atomic import atomic_write_bytes
from mia_torch.audit.preprocess import preprocess_dataset
from mia_torch.audit.run import run_audit
from mia_torch.data.loader import load_dataset
from mia_torch.data.queries import check_views_fit
from mia_torch.data.splits import carve_validation, make_splits
from mia_torch.data.validate import check_training_sets
from mia_torch.dp_audit.run import run_dp_audit
from mia_torch.forget.run import forget_check, plan_forget, print_forget_summary
from mia_torch.report.types import RunResults
from mia_torch.settings.limits import check_run_size
from mia_torch.settings.load import check_attacks, check_writable, load_settings
from mia_torch.signals.source import SignalSource
from mia_torch.stages.attack_runs import feature_table
from mia_torch.stages.attack_shards import load_shards, missing_shards, save_shard, shard_targets, shards_missing
from mia_torch.stages.attacks import AttackOutputs, attack_stage
from mia_torch.stages.context import Context, build, is_defended, model_seed, stored_path
from mia_torch.stages.report import identity_query, report_study
from mia_torch.stages.signals import record_signals, signals_stage
from mia_torch.stages.train import train_stage
from mia_torch.store import ArtifactStore, array_to_bytes

log = logging.getLogger(__name__)


def output_dir() -> Path:
    """The Hydra run directory (every output of a run goes under it)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def save_splits(ctx: Context) -> None:
    """Write the keep matrix (effective membership), evaluation mask and validation carve-out into the run directory."""
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    atomic_write_bytes(ctx.run_dir / "eval_mask.npy", array_to_bytes(ctx.splits.eval_mask))
    if ctx.splits.validation is not None:
        atomic_write_bytes(ctx.run_dir / "validation.npy", array_to_bytes(ctx.splits.validation))


def prepare(cfg: DictConfig, run_dir: Path) -> Context:
    """Validate the config, the directories and the data, build splits: everything that can fail fast.

    Cheap checks come first (values, attacks, writable ``store_dir`` and run directory),
    then the data is loaded and checked, so bad input stops before any training.
    ``cfg.queries`` is set to the queries in effect (the dataset's default when it is null),
    so that results.json records them.
    """
    settings = load_settings(cfg)
    cfg.queries = list(settings.queries)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    attacks = check_attacks(settings)
    check_writable(settings.store_dir, key="store_dir")
    check_writable(run_dir, key="hydra.run.dir")
    data = load_dataset(settings.dataset, root=settings.data_dir, download=settings.download, seed=settings.seed)
    if settings.audit.enabled:  # the audited model's own input; references are trained on it too
        data = preprocess_dataset(data, settings.audit.preprocess)
    settings.output.check_classes(data.num_classes)
    # the model fits the data (and, as a target trains, the defense)
    probe = build(settings, data, 0, defended=is_defended(settings, settings.target_ids[0]))
    probe(data.x[:2])
    check_views_fit(settings.queries, data.input_shape)
    check_run_size(settings, data, probe)
    splits = make_splits(settings.num_models, len(data.y), seed=settings.seed,
                         target_ids=settings.target_ids, threat_model=settings.threat_model)
    stopping = settings.train.early_stopping
    if stopping.enabled:  # membership is what each model actually trains on: its half minus its validation
        seeds = [model_seed(settings, m) for m in range(settings.num_models)]
        splits = carve_validation(splits, fraction=stopping.validation_fraction, seeds=seeds)
    check_training_sets(splits.keep, source=settings.dataset.describe(), threat_model=settings.threat_model)
    return Context(settings=settings, run_dir=run_dir, data=data.to(settings.device), splits=splits,
                   store=ArtifactStore(settings.store_dir), attacks=attacks)


def attack_outputs(ctx: Context, source: SignalSource, *, targets: list[int] | None = None) -> AttackOutputs:
    """Reduce every model's logits to the attacks' features and run the attack stage on ``targets``."""
    table = feature_table(ctx.splits, source, ctx.attacks, device=ctx.settings.device)
    return attack_stage(ctx, table, source, targets=targets)


@dataclass(frozen=True)
class TrainedShard:
    """What a ``stage=train`` job did: the models it trained and those it found in the store."""

    trained_models: list[int]
    reused_models: list[int]


@dataclass(frozen=True)
class AttackShard:
    """What a ``stage=attack`` job did: its shard and the targets it scored into the store."""

    shard: int
    targets: list[int]


def run(cfg: DictConfig, run_dir: Path | None = None) -> RunResults | TrainedShard | AttackShard:
    """Run the configured experiment end to end; returns its typed results (what ``results.json`` holds).

    A study (the default) trains every model and attacks each target; ``audit.checkpoint``
    audits a user's model instead (:mod:`mia_torch.audit`), ``forget.method`` checks
    that removed records left a target (:mod:`mia_torch.forget`) and ``dp_audit.kind`` tests
    a DP claim in one training run (:mod:`mia_torch.dp_audit`). A sharded study runs
    ``stage=train`` (a shard of the models, trained and queried), ``stage=attack`` (a shard of
    the targets, scored into the store) and ``stage=report`` (every shard's scores, merged
    into the report) as separate jobs on one store; a shard's job returns what it did.
    """
    started = time.time()
    ctx = prepare(cfg, run_dir or output_dir())
    s = ctx.settings
    if s.audit.enabled:
        return run_audit(ctx, cfg, started)
    if s.dp_audit.enabled:
        return run_dp_audit(ctx, cfg, started)
    forget = plan_forget(ctx) if s.forget.enabled else None  # checks its inputs before anything is written
    save_splits(ctx)
    if s.stage == "train":
        shard_models = [m for m in range(s.num_models) if m % s.num_shards == s.shard]
        train_stage(ctx, shard_models)
        signals_stage(ctx, shard_models)
        log.info("shard %d/%d: trained %s, reused %s", s.shard, s.num_shards, ctx.trained, ctx.reused)
        return TrainedShard(trained_models=ctx.trained, reused_models=ctx.reused)
    if s.stage == "attack":
        targets = shard_targets(ctx, s.shard)
        save_shard(ctx, attack_outputs(ctx, signals_stage(ctx), targets=targets))
        return AttackShard(shard=s.shard, targets=targets)
    if s.stage == "report" and (missing := missing_shards(ctx)):
        raise shards_missing(ctx, missing)  # before any other work
    model_metrics = train_stage(ctx, list(range(s.num_models)))
    source = signals_stage(ctx)
    record_signals(ctx, source)
    forgotten = None
    if s.stage == "report":
        outputs = load_shards(ctx)
    elif forget is None:
        outputs = attack_outputs(ctx, source)
    else:
        outputs, forgotten = forget_check(ctx, forget, source)
    results = report_study(ctx, cfg, started, model_metrics=model_metrics,
                           target_metrics={t: {**model_metrics[t], "checkpoint": str(stored_path(ctx, t))}
                                           for t in s.target_ids},
                           target_logits=source.query_view(identity_query(s)), outputs=outputs,
                           keep=ctx.splits.keep, eval_mask=ctx.splits.eval_mask, forget=forgotten)
    if forgotten is not None:
        print_forget_summary(forgotten, ctx.run_dir)
    return results
