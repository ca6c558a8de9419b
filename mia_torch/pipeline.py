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
from mia_torch.data.datasets import Dataset, describe_dataset, load_dataset
from mia_torch.data.splits import Splits, carve_validation, make_splits
from mia_torch.data.validate import check_training_sets
from mia_torch.evaluation import evaluate_attacks, save_scores
from mia_torch.fingerprint import code_digest, dataset_digest
from mia_torch.locks import build_missing
from mia_torch.provenance import environment_versions
from mia_torch.report.pictures import ImageSource
from mia_torch.report.run_report import write_run_report
from mia_torch.report.types import RunResults, TargetResult
from mia_torch.settings import Settings, check_attacks, check_writable, load_settings
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.signals.output import serve, serve_array
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
    """Content hash of everything that determines trained model ``index``.

    The data enters as the digest of its tensors as loaded and the code as the digest of
    the training source (:mod:`mia_torch.fingerprint`), so new data or edited training
    code makes new keys, while moving a data file does not.
    """
    s = ctx.settings
    spec = {
        "data": dataset_digest(ctx.data),
        "model": s.model,
        "train": s.train.to_dict(),
        "defense": s.defense.key(len(ctx.data.y)) if is_private(s, index) else None,
        "keep_row": _digest_row(ctx.splits.keep[index]),  # the records it trains on
        "seed": model_seed(s, index),
        "device": s.device.type,
        "code": code_digest("models"),
    }
    if ctx.splits.validation is not None:  # early stopping: the records it validates on
        spec["validation_row"] = _digest_row(ctx.splits.validation[index])
    return digest(spec)


def _digest_row(row: np.ndarray) -> str:
    return digest({"row": np.flatnonzero(row).tolist()})


def signal_key(ctx: Context, index: int) -> str:
    """Content hash of model ``index``'s logits under the configured queries."""
    s = ctx.settings
    return digest({"model": model_key(ctx, index), "queries": s.queries, "dtype": str(s.signals_dtype),
                   "code": code_digest("signals")})


def load_trained_model(ctx: Context, index: int) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """Model ``index`` from the store (weights_only load), or None when absent or corrupt (moved aside)."""
    key = model_key(ctx, index)
    found = ctx.store.load("models", key, decode=state_dict_from_bytes)
    if found is None:
        return None
    model = build_model(ctx.settings, ctx.data, model_seed(ctx.settings, index), private=is_private(ctx.settings, index))
    try:
        model.load_state_dict(found[0])
    except RuntimeError as err:
        ctx.store.quarantine("models", key, reason=f"its weights do not fit the configured model: {err}")
        return None
    return model.to(ctx.settings.device).eval(), found[1]


def _rows(ctx: Context, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model ``index``'s training records (effective membership) and validation records (or None)."""
    validation = ctx.splits.validation
    return (torch.from_numpy(np.flatnonzero(ctx.splits.keep[index])),
            None if validation is None else torch.from_numpy(np.flatnonzero(validation[index])))


def _save_trained(ctx: Context, index: int, model: torch.nn.Module, result: TrainResult) -> None:
    if not np.isfinite(result.metrics["train_loss"]):
        raise FloatingPointError(
            f"model {index} diverged (train loss {result.metrics['train_loss']}): lower train.lr or add warmup"
        )
    meta = {"model": index, **result.metrics}
    ctx.store.save("models", model_key(ctx, index), state_dict_to_bytes(model.state_dict()), meta)
    ctx.trained.append(index)


def train_group(ctx: Context, indices: list[int]) -> None:
    """Train models ``indices`` and save each to the store.

    DP-SGD models train one at a time (each saved when done); the others together
    (``parallel_models`` at once).
    """
    s, data = ctx.settings, ctx.data
    for index in [i for i in indices if is_private(s, i)]:
        model = build_model(s, data, model_seed(s, index), private=True)
        members, validation = _rows(ctx, index)
        result = train_private(model, data.x, data.y, members, s.train, s.defense, seed=model_seed(s, index),
                               delta=s.defense.delta_for(len(data.y)), val_idx=validation,
                               x_test=data.x_test, y_test=data.y_test)
        _save_trained(ctx, index, model, result)
    plain = [i for i in indices if not is_private(s, i)]
    if not plain:
        return
    seeds = [model_seed(s, i) for i in plain]
    models = [build_model(s, data, seed) for seed in seeds]
    rows = [_rows(ctx, i) for i in plain]
    validation = None if ctx.splits.validation is None else [v for _, v in rows]
    results = train_models(models, data.x, data.y, [m for m, _ in rows], s.train, seeds=seeds, val_idx=validation,
                           x_test=data.x_test, y_test=data.y_test, strategy=s.parallel_strategy)
    for index, model, result in zip(plain, models, results):
        _save_trained(ctx, index, model, result)


def _progress(items, settings: Settings, desc: str):
    return tqdm(items, desc=desc, disable=not settings.progress, unit="model", leave=False)


def train_stage(ctx: Context, indices: list[int]) -> list[dict[str, Any]]:
    """Make sure models ``indices`` exist in the store; train only the missing ones.

    Missing models are locked and trained in groups (``parallel_models`` at once with
    vmap; one by one otherwise, so an interruption loses at most one); models another
    process is training are waited for and reused (:func:`mia_torch.locks.build_missing`).
    """
    s = ctx.settings
    batched = resolve_strategy(s.parallel_strategy, s.device, s.parallel_models) == "vmap"
    keys = {index: model_key(ctx, index) for index in indices}
    with tqdm(desc="train", disable=not s.progress, unit="model", leave=False) as bar:
        outcome = build_missing(ctx.store, "models", keys, lambda chunk: train_group(ctx, chunk),
                                group=s.parallel_models if batched else 1, decode=state_dict_from_bytes,
                                on_built=bar.update)
    ctx.reused.extend(outcome.reused)
    return [outcome.meta[i] for i in indices]


def _model_for_signals(ctx: Context, index: int) -> torch.nn.Module:
    loaded = load_trained_model(ctx, index)
    if loaded is None:  # moved aside as corrupt since the train stage: rebuild it
        train_stage(ctx, [index])
        loaded = load_trained_model(ctx, index)
    if loaded is None:
        raise RuntimeError(f"model {index} could not be loaded from the store right after training it")
    return loaded[0]


def signals_stage(ctx: Context) -> np.ndarray:
    """Served outputs ``[M, N, Q, C]`` of every model (see ``output``), reusing stored signals where present.

    The store holds raw logits, so changing ``output`` reuses models and signals; the
    served transform is applied after loading. Missing logits are collected
    ``parallel_models`` models at a time where the strategy is vmap (CUDA: one batched
    forward for all of them), one model at a time otherwise.
    """
    s = ctx.settings
    num_examples = len(ctx.data.y)

    def decode(payload: bytes) -> np.ndarray:
        array = array_from_bytes(payload)
        if array.ndim < 1 or len(array) != num_examples:
            raise ValueError(f"signals of shape {array.shape} for a population of {num_examples}")
        return array

    def collect(indices: list[int]) -> None:
        models = [_model_for_signals(ctx, index) for index in indices]
        logits = collect_logits_many(models, ctx.data.x, s.queries, batch_size=s.signal_batch_size,
                                     dtype=s.signals_dtype, strategy=s.parallel_strategy)
        for index, array in zip(indices, logits.cpu().numpy()):
            ctx.store.save("signals", signal_key(ctx, index), array_to_bytes(array),
                           {"model": index, "shape": list(array.shape)})

    keys = {index: signal_key(ctx, index) for index in range(s.num_models)}
    rows = {index: found[0] for index, key in keys.items()
            if (found := ctx.store.load("signals", key, decode=decode)) is not None}
    missing = {index: key for index, key in keys.items() if index not in rows}
    if missing:
        with _progress(None, s, "signals") as bar:
            batched = resolve_strategy(s.parallel_strategy, s.device, s.parallel_models) == "vmap"
            build_missing(ctx.store, "signals", missing, collect, group=s.parallel_models if batched else 1,
                          decode=decode, on_built=bar.update)
        for index, key in missing.items():
            found = ctx.store.load("signals", key, decode=decode)
            if found is None:
                raise RuntimeError(f"signals of model {index} vanished from the store {ctx.store.root}")
            rows[index] = found[0]
    return np.stack([serve_array(rows[index], s.output) for index in range(s.num_models)])


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Served output of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    model = build_model(s, ctx.data, model_seed(s, target) + 7919, private=is_private(s, target)).to(s.device)
    return serve(collect_logits(model, ctx.data.x, s.queries, batch_size=s.signal_batch_size), s.output).float()


@dataclass
class AttackOutputs:
    """Scores per attack and target (``scores[name][target] = float64[N]``), every knob the attack
    fitted on the target's references (``fitted_params[name][target]``, its threshold included),
    and the scores of the untrained copies (sanity check)."""

    scores: dict[str, dict[int, np.ndarray]]
    fitted_params: dict[str, dict[int, dict[str, Any]]]
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
            # float64: a confident model's scores differ beyond float32's resolution.
            out.scores[name][target] = attack.score(all_logits[target], labels).double().cpu().numpy()
            out.fitted_params[name][target] = attack.fitted_params()
            if out.sanity is not None and blank is not None:
                out.sanity[name][target] = attack.score(blank, labels).double().cpu().numpy()
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
    check_attacks(settings)
    check_writable(settings.store_dir, key="store_dir")
    check_writable(run_dir, key="hydra.run.dir")
    data = load_dataset(**settings.dataset, root=settings.data_dir, download=settings.download, seed=settings.seed)
    settings.output.check_classes(data.num_classes)
    build_model(settings, data, 0, private=settings.defense.private)(data.x[:2])  # fits the data (and DP-SGD)
    splits = make_splits(settings.num_models, len(data.y), seed=settings.seed,
                         target_ids=settings.target_ids, threat_model=settings.threat_model)
    stopping = settings.train.early_stopping
    if stopping.enabled:  # membership is what each model actually trains on: its half minus its validation
        seeds = [model_seed(settings, m) for m in range(settings.num_models)]
        splits = carve_validation(splits, fraction=stopping.validation_fraction, seeds=seeds)
    check_training_sets(splits.keep, source=describe_dataset(settings.dataset["name"], settings.dataset),
                        threat_model=settings.threat_model)
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
    labels = ctx.data.y.cpu().numpy()
    query = s.queries.index("identity") if "identity" in s.queries else 0
    target_logits = {t: logits[t, :, query] for t in s.target_ids}
    attacks = evaluate_attacks(outputs.scores, keep=ctx.splits.keep, eval_mask=ctx.splits.eval_mask,
                               fpr_targets=s.fpr_targets, bootstrap=s.bootstrap, seed=s.seed,
                               fitted_params=outputs.fitted_params, sanity=outputs.sanity, labels=labels,
                               predictions={t: z.argmax(-1) for t, z in target_logits.items()})
    results = RunResults(
        config=OmegaConf.to_container(cfg, resolve=True),
        versions=environment_versions(__version__),
        dataset={"name": s.dataset.get("name"), "population": int(len(ctx.data.y)),
                 "test": int(len(ctx.data.y_test)), "num_classes": ctx.data.num_classes},
        target_ids=list(s.target_ids),
        targets={t: TargetResult.from_dict(model_metrics[t], path=f"model {t}") for t in s.target_ids},
        models=model_metrics,
        trained_models=ctx.trained,
        reused_models=ctx.reused,
        corrupt_artifacts=[str(p) for p in ctx.store.corrupt],
        seconds=round(time.time() - started, 2),
        attacks=attacks,
    )
    write_run_report(ctx.run_dir, results, scores=outputs.scores, keep=ctx.splits.keep,
                     eval_mask=ctx.splits.eval_mask, labels=labels, target_logits=target_logits,
                     images=ImageSource.of(ctx.data))
    return results.to_dict()
