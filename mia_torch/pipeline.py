"""The five stages wired from a config: splits, train, signals, attacks, report."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from mia_torch import __version__
from mia_torch.atomic import atomic_write_bytes
from mia_torch.attacks.base import Attack, ReferenceSignals
from mia_torch.data.datasets import Dataset, load_dataset
from mia_torch.data.splits import Splits, make_splits
from mia_torch.evaluation import evaluate_attacks, save_scores
from mia_torch.provenance import environment_versions
from mia_torch.report.run_report import write_run_report
from mia_torch.settings import Settings, load_settings
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.output import serve, serve_array
from mia_torch.store import (
    ArtifactStore,
    array_from_bytes,
    array_to_bytes,
    digest,
    state_dict_from_bytes,
    state_dict_to_bytes,
)
from mia_torch.training.ensemble import resolve_strategy, train_models

log = logging.getLogger(__name__)

# Bump when a change to training or querying code changes what an artifact would contain.
TRAINING_CODE_VERSION = 1
SIGNALS_CODE_VERSION = 1


@dataclass
class Context:
    """What the stages share: settings, data, splits, store, and what was (re)built."""

    settings: Settings
    run_dir: Path
    data: Dataset
    splits: Splits
    store: ArtifactStore
    trained: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)


def build_model(settings: Settings, data: Dataset, seed: int) -> torch.nn.Module:
    """Instantiate the configured architecture with a seeded initialisation."""
    torch.manual_seed(seed)
    return hydra.utils.instantiate(settings.model, input_shape=data.input_shape, num_classes=data.num_classes)


def model_seed(settings: Settings, index: int) -> int:
    """Seed of model ``index``: independent of how many models the study has."""
    return settings.seed * 1_000_003 + index


def model_key(ctx: Context, index: int) -> str:
    """Content hash of everything that determines trained model ``index``."""
    s = ctx.settings
    return digest({
        "dataset": s.dataset,
        "model": s.model,
        "train": s.train.to_dict(),
        "keep_row": digest({"row": np.flatnonzero(ctx.splits.keep[index]).tolist()}),
        "population": len(ctx.data.y),
        "seed": model_seed(s, index),
        "device": s.device.type,
        "code": TRAINING_CODE_VERSION,
    })


def signal_key(ctx: Context, index: int) -> str:
    """Content hash of model ``index``'s logits under the configured queries."""
    s = ctx.settings
    return digest({"model": model_key(ctx, index), "queries": s.queries, "dtype": str(s.signals_dtype),
                   "code": SIGNALS_CODE_VERSION})


def load_trained_model(ctx: Context, index: int) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """Model ``index`` from the store (weights_only load), or None when absent/corrupt."""
    found = ctx.store.load("models", model_key(ctx, index))
    if found is None:
        return None
    model = build_model(ctx.settings, ctx.data, model_seed(ctx.settings, index))
    model.load_state_dict(state_dict_from_bytes(found[0]))
    return model.to(ctx.settings.device).eval(), found[1]


def train_group(ctx: Context, indices: list[int]) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """Train models ``indices`` together (``parallel_models`` at once) and save each to the store."""
    s = ctx.settings
    seeds = [model_seed(s, i) for i in indices]
    models = [build_model(s, ctx.data, seed) for seed in seeds]
    members = [torch.from_numpy(np.flatnonzero(ctx.splits.keep[i])) for i in indices]
    results = train_models(models, ctx.data.x, ctx.data.y, members, s.train, seeds=seeds,
                           x_test=ctx.data.x_test, y_test=ctx.data.y_test, strategy=s.parallel_strategy)
    trained = []
    for index, model, result in zip(indices, models, results):
        if not np.isfinite(result.metrics["train_loss"]):
            raise FloatingPointError(
                f"model {index} diverged (train loss {result.metrics['train_loss']}): lower train.lr or add warmup"
            )
        meta = {"model": index, **result.metrics}
        ctx.store.save("models", model_key(ctx, index), state_dict_to_bytes(model.state_dict()), meta)
        ctx.trained.append(index)
        trained.append((model, meta))
    return trained


def _progress(items, settings: Settings, desc: str):
    return tqdm(items, desc=desc, disable=not settings.progress, unit="model", leave=False)


def train_stage(ctx: Context, indices: list[int]) -> list[dict[str, Any]]:
    """Make sure models ``indices`` exist in the store; train only the missing ones."""
    metrics: dict[int, dict[str, Any]] = {}
    missing = []
    for index in indices:
        found = ctx.store.load("models", model_key(ctx, index))
        if found is None:
            missing.append(index)
        else:
            metrics[index] = found[1]
            ctx.reused.append(index)
    s = ctx.settings
    # Loop-trained models are saved one by one, so an interruption loses at most one.
    batched = resolve_strategy(s.parallel_strategy, s.device, s.parallel_models) == "vmap"
    group = s.parallel_models if batched else 1
    with tqdm(total=len(missing), desc="train", disable=not ctx.settings.progress, unit="model", leave=False) as bar:
        for start in range(0, len(missing), group):
            chunk = missing[start : start + group]
            for index, (_, meta) in zip(chunk, train_group(ctx, chunk)):
                metrics[index] = meta
            bar.update(len(chunk))
    return [metrics[i] for i in indices]


def signals_stage(ctx: Context) -> np.ndarray:
    """Served outputs ``[M, N, Q, C]`` of every model (see ``output``), reusing stored signals where present.

    The store holds raw logits, so changing ``output`` reuses models and signals; the
    served transform is applied after loading.
    """
    s = ctx.settings
    rows = []
    for index in _progress(range(s.num_models), s, "signals"):
        key = signal_key(ctx, index)
        found = ctx.store.load("signals", key)
        if found is not None:
            rows.append(serve_array(array_from_bytes(found[0]), s.output))
            continue
        loaded = load_trained_model(ctx, index)
        model = loaded[0] if loaded is not None else train_group(ctx, [index])[0][0]
        logits = collect_logits(model, ctx.data.x, s.queries, batch_size=s.signal_batch_size, dtype=s.signals_dtype)
        array = logits.cpu().numpy()
        ctx.store.save("signals", key, array_to_bytes(array), {"model": index, "shape": list(array.shape)})
        rows.append(serve_array(array, s.output))
    return np.stack(rows)


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Served output of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    model = build_model(s, ctx.data, model_seed(s, target) + 7919).to(s.device)
    return serve(collect_logits(model, ctx.data.x, s.queries, batch_size=s.signal_batch_size), s.output).float()


@dataclass
class AttackOutputs:
    """Scores per attack and target (``scores[name][target] = float[N]``), plus calibrated thresholds."""

    scores: dict[str, dict[int, np.ndarray]]
    thresholds: dict[str, dict[int, float | None]]
    sanity: dict[str, dict[int, np.ndarray]] | None


def attack_stage(ctx: Context, logits: np.ndarray) -> AttackOutputs:
    """Fit every attack on each target's references and score the target (and its untrained twin)."""
    s = ctx.settings
    device = s.device
    all_logits = torch.from_numpy(logits).to(device).float()
    labels = ctx.data.y.to(device)
    keep = torch.from_numpy(ctx.splits.keep).to(device)
    out = AttackOutputs({n: {} for n in s.attacks}, {n: {} for n in s.attacks},
                        {n: {} for n in s.attacks} if s.sanity_check else None)
    for target in ctx.splits.target_ids:
        refs = torch.tensor(ctx.splits.reference_ids[target], device=device)
        reference = ReferenceSignals(logits=all_logits[refs], keep=keep[refs], labels=labels)
        blank = untrained_logits(ctx, target) if s.sanity_check else None
        for name, attack_cfg in s.attacks.items():
            attack: Attack = hydra.utils.instantiate(attack_cfg)
            attack.fit(reference)
            out.scores[name][target] = attack.score(all_logits[target], labels).float().cpu().numpy()
            out.thresholds[name][target] = attack.threshold
            if out.sanity is not None and blank is not None:
                out.sanity[name][target] = attack.score(blank, labels).float().cpu().numpy()
    return out


def output_dir() -> Path:
    """The Hydra run directory (every output of a run goes under it)."""
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def save_splits(ctx: Context) -> None:
    """Write the keep matrix and evaluation mask into the run directory."""
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    atomic_write_bytes(ctx.run_dir / "eval_mask.npy", array_to_bytes(ctx.splits.eval_mask))


def prepare(cfg: DictConfig, run_dir: Path) -> Context:
    """Validate the config, load the data, build splits and attacks: everything that can fail fast."""
    settings = load_settings(cfg)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    for name, attack_cfg in settings.attacks.items():
        try:
            attack = hydra.utils.instantiate(attack_cfg)
        except Exception as err:  # noqa: BLE001 - re-raised with the key that caused it
            raise ValueError(f"attack.{name} cannot be built: {err}") from err
        if attack.needs_scores and not settings.output.serves_scores:
            raise ValueError(
                f"attack {name} needs the model's scores but {settings.output.describe()} serves only the "
                "predicted label: use label-only attacks (attack=[gap,label_only]) or another output"
            )
    data = load_dataset(**settings.dataset, root=settings.data_dir, download=settings.download, seed=settings.seed)
    settings.output.check_classes(data.num_classes)
    build_model(settings, data, 0)(data.x[:2])  # the architecture fits the data
    splits = make_splits(settings.num_models, len(data.y), seed=settings.seed,
                         target_ids=settings.target_ids, threat_model=settings.threat_model)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Context(settings=settings, run_dir=run_dir, data=data.to(settings.device), splits=splits,
                   store=ArtifactStore(settings.store_dir))


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """Run the configured experiment end to end; returns what ``results.json`` holds."""
    started = time.time()
    ctx = prepare(cfg, run_dir or output_dir())
    s = ctx.settings
    save_splits(ctx)
    if s.stage == "train":
        shard_models = [m for m in range(s.num_models) if m % s.num_shards == s.shard]
        train_stage(ctx, shard_models)
        log.info("shard %d/%d: trained %s, reused %s", s.shard, s.num_shards, ctx.trained, ctx.reused)
        return {"stage": "train", "trained_models": ctx.trained, "reused_models": ctx.reused}
    model_metrics = train_stage(ctx, list(range(s.num_models)))
    logits = signals_stage(ctx)
    atomic_write_bytes(ctx.run_dir / "signals.npy", array_to_bytes(logits))
    atomic_write_bytes(ctx.run_dir / "labels.npy", array_to_bytes(ctx.data.y.cpu().numpy()))
    outputs = attack_stage(ctx, logits)
    save_scores(ctx.run_dir / "scores.npz", outputs.scores)
    evaluation = evaluate_attacks(outputs.scores, keep=ctx.splits.keep, eval_mask=ctx.splits.eval_mask,
                                  fpr_targets=s.fpr_targets, bootstrap=s.bootstrap, seed=s.seed,
                                  thresholds=outputs.thresholds, sanity=outputs.sanity)
    results = {
        "config": OmegaConf.to_container(cfg, resolve=True),
        "versions": environment_versions(__version__),
        "dataset": {"name": s.dataset.get("name"), "population": int(len(ctx.data.y)),
                    "test": int(len(ctx.data.y_test)), "num_classes": ctx.data.num_classes},
        "target_ids": list(s.target_ids),
        "targets": {str(t): {k: model_metrics[t][k] for k in ("train_acc", "test_acc", "train_loss", "test_loss")
                             if k in model_metrics[t]} for t in s.target_ids},
        "models": model_metrics,
        "trained_models": ctx.trained,
        "reused_models": ctx.reused,
        "corrupt_artifacts": [str(p) for p in ctx.store.corrupt],
        "seconds": round(time.time() - started, 2),
        **evaluation,
    }
    write_run_report(ctx.run_dir, results, scores=outputs.scores, keep=ctx.splits.keep,
                     eval_mask=ctx.splits.eval_mask, class_labels=ctx.data.y.cpu().numpy())
    return results
