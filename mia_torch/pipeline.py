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
from mia_torch.data.splits import Splits, carve_validation, make_splits
from mia_torch.evaluation import evaluate_attacks, save_scores
from mia_torch.provenance import environment_versions
from mia_torch.report.run_report import write_run_report
from mia_torch.settings import Settings, load_settings
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.store import (
    ArtifactStore,
    array_from_bytes,
    array_to_bytes,
    digest,
    state_dict_from_bytes,
    state_dict_to_bytes,
)
from mia_torch.training.dp import make_private_compatible, train_private
from mia_torch.training.ensemble import train_models
from mia_torch.training.stacking import resolve_strategy
from mia_torch.training.trainer import TrainResult

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


#: Per-model metrics copied into ``results.json["targets"]`` when present.
TARGET_METRICS = ("train_acc", "test_acc", "train_loss", "test_loss", "best_epoch", "stopped_epoch",
                  "dp_epsilon", "dp_epsilon_target", "dp_delta", "dp_noise_multiplier")


def build_model(settings: Settings, data: Dataset, seed: int, *, private: bool = False) -> torch.nn.Module:
    """Instantiate the configured architecture with a seeded initialisation.

    ``private`` (a DP-SGD-trained model) makes it DP-compatible (GroupNorm for BatchNorm),
    both to train it and to rebuild it for loading its saved weights.
    """
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(settings.model, input_shape=data.input_shape, num_classes=data.num_classes)
    return make_private_compatible(model) if private else model


def is_private(settings: Settings, index: int) -> bool:
    """Whether model ``index`` is trained with DP-SGD (``defense=dpsgd``, ``defense.apply_to``)."""
    return settings.defense.applies_to(index, settings.target_ids)


def model_seed(settings: Settings, index: int) -> int:
    """Seed of model ``index``: independent of how many models the study has."""
    return settings.seed * 1_000_003 + index


def model_key(ctx: Context, index: int) -> str:
    """Content hash of everything that determines trained model ``index``."""
    s = ctx.settings
    population = len(ctx.data.y)
    return digest({
        "dataset": s.dataset,
        "model": s.model,
        "train": s.train.to_dict(),
        "defense": s.defense.key(population) if is_private(s, index) else None,
        # the half dealt to the model; its validation carve-out follows from it, the seed and train.early_stopping
        "keep_row": digest({"row": np.flatnonzero(ctx.splits.assigned[index]).tolist()}),
        "population": population,
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
    model = build_model(ctx.settings, ctx.data, model_seed(ctx.settings, index), private=is_private(ctx.settings, index))
    model.load_state_dict(state_dict_from_bytes(found[0]))
    return model.to(ctx.settings.device).eval(), found[1]


def _rows(ctx: Context, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model ``index``'s training records (effective membership) and validation records (or None)."""
    validation = ctx.splits.validation
    return (torch.from_numpy(np.flatnonzero(ctx.splits.keep[index])),
            None if validation is None else torch.from_numpy(np.flatnonzero(validation[index])))


def _save_trained(ctx: Context, index: int, model: torch.nn.Module, result: TrainResult) -> dict[str, Any]:
    if not np.isfinite(result.metrics["train_loss"]):
        raise FloatingPointError(
            f"model {index} diverged (train loss {result.metrics['train_loss']}): lower train.lr or add warmup"
        )
    meta = {"model": index, **result.metrics}
    ctx.store.save("models", model_key(ctx, index), state_dict_to_bytes(model.state_dict()), meta)
    ctx.trained.append(index)
    return meta


def train_group(ctx: Context, indices: list[int]) -> list[tuple[torch.nn.Module, dict[str, Any]]]:
    """Train models ``indices`` and save each to the store, in order.

    DP-SGD models train one at a time (each saved when done); the others together
    (``parallel_models`` at once).
    """
    s, data = ctx.settings, ctx.data
    trained: dict[int, tuple[torch.nn.Module, dict[str, Any]]] = {}
    for index in [i for i in indices if is_private(s, i)]:
        model = build_model(s, data, model_seed(s, index), private=True)
        members, validation = _rows(ctx, index)
        result = train_private(model, data.x, data.y, members, s.train, s.defense, seed=model_seed(s, index),
                               delta=s.defense.delta_for(len(data.y)), val_idx=validation,
                               x_test=data.x_test, y_test=data.y_test)
        trained[index] = (model, _save_trained(ctx, index, model, result))
    plain = [i for i in indices if not is_private(s, i)]
    if plain:
        seeds = [model_seed(s, i) for i in plain]
        models = [build_model(s, data, seed) for seed in seeds]
        rows = [_rows(ctx, i) for i in plain]
        validation = None if ctx.splits.validation is None else [v for _, v in rows]
        results = train_models(models, data.x, data.y, [m for m, _ in rows], s.train, seeds=seeds, val_idx=validation,
                               x_test=data.x_test, y_test=data.y_test, strategy=s.parallel_strategy)
        for index, model, result in zip(plain, models, results):
            trained[index] = (model, _save_trained(ctx, index, model, result))
    return [trained[i] for i in indices]


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
    """Logits ``[M, N, Q, C]`` of every model, reusing stored signals where present.

    Missing signals are collected ``parallel_models`` models at a time where the strategy
    is vmap (CUDA), one model at a time otherwise.
    """
    s = ctx.settings
    rows: dict[int, np.ndarray] = {}
    missing = []
    for index in range(s.num_models):
        found = ctx.store.load("signals", signal_key(ctx, index))
        if found is not None:
            rows[index] = array_from_bytes(found[0])
        else:
            missing.append(index)
    batched = resolve_strategy(s.parallel_strategy, s.device, s.parallel_models) == "vmap"
    group = s.parallel_models if batched else 1
    with tqdm(total=len(missing), desc="signals", disable=not s.progress, unit="model", leave=False) as bar:
        for start in range(0, len(missing), group):
            chunk = missing[start : start + group]
            models = _trained_models(ctx, chunk)
            logits = collect_logits_many(models, ctx.data.x, s.queries, batch_size=s.signal_batch_size,
                                         dtype=s.signals_dtype, strategy=s.parallel_strategy)
            for index, array in zip(chunk, logits.cpu().numpy()):
                ctx.store.save("signals", signal_key(ctx, index), array_to_bytes(array),
                               {"model": index, "shape": list(array.shape)})
                rows[index] = array
            bar.update(len(chunk))
    return np.stack([rows[i] for i in range(s.num_models)])


def _trained_models(ctx: Context, indices: list[int]) -> list[torch.nn.Module]:
    """Models ``indices`` from the store, training the ones that are missing."""
    loaded = {i: found[0] for i in indices if (found := load_trained_model(ctx, i)) is not None}
    missing = [i for i in indices if i not in loaded]
    if missing:
        loaded |= {i: model for i, (model, _) in zip(missing, train_group(ctx, missing))}
    return [loaded[i] for i in indices]


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Logits of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    model = build_model(s, ctx.data, model_seed(s, target) + 7919, private=is_private(s, target)).to(s.device)
    return collect_logits(model, ctx.data.x, s.queries, batch_size=s.signal_batch_size).float()


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
    """Write the keep matrix (effective membership), evaluation mask and validation carve-out into the run directory."""
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    atomic_write_bytes(ctx.run_dir / "eval_mask.npy", array_to_bytes(ctx.splits.eval_mask))
    if ctx.splits.validation is not None:
        atomic_write_bytes(ctx.run_dir / "validation.npy", array_to_bytes(ctx.splits.validation))


def prepare(cfg: DictConfig, run_dir: Path) -> Context:
    """Validate the config, load the data, build splits and attacks: everything that can fail fast."""
    settings = load_settings(cfg)
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    for name, attack_cfg in settings.attacks.items():
        try:
            hydra.utils.instantiate(attack_cfg)
        except Exception as err:  # noqa: BLE001 - re-raised with the key that caused it
            raise ValueError(f"attack.{name} cannot be built: {err}") from err
    data = load_dataset(**settings.dataset, root=settings.data_dir, download=settings.download, seed=settings.seed)
    build_model(settings, data, 0, private=settings.defense.private)(data.x[:2])  # fits the data (and DP-SGD)
    splits = make_splits(settings.num_models, len(data.y), seed=settings.seed,
                         target_ids=settings.target_ids, threat_model=settings.threat_model)
    stopping = settings.train.early_stopping
    if stopping.enabled:  # membership is what each model actually trains on: its half minus its validation
        seeds = [model_seed(settings, m) for m in range(settings.num_models)]
        splits = carve_validation(splits, fraction=stopping.validation_fraction, seeds=seeds)
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
        "targets": {str(t): {k: model_metrics[t][k] for k in TARGET_METRICS if k in model_metrics[t]}
                    for t in s.target_ids},
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
