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
from mia_torch.data.splits import Splits, make_splits
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
    """Content hash of everything that determines trained model ``index``.

    The data enters as the digest of its tensors as loaded and the code as the digest of
    the training source (:mod:`mia_torch.fingerprint`), so new data or edited training
    code makes new keys, while moving a data file does not.
    """
    s = ctx.settings
    return digest({
        "data": dataset_digest(ctx.data),
        "model": s.model,
        "train": s.train.to_dict(),
        "keep_row": digest({"row": np.flatnonzero(ctx.splits.keep[index]).tolist()}),
        "seed": model_seed(s, index),
        "device": s.device.type,
        "code": code_digest("models"),
    })


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
    model = build_model(ctx.settings, ctx.data, model_seed(ctx.settings, index))
    try:
        model.load_state_dict(found[0])
    except RuntimeError as err:
        ctx.store.quarantine("models", key, reason=f"its weights do not fit the configured model: {err}")
        return None
    return model.to(ctx.settings.device).eval(), found[1]


def train_group(ctx: Context, indices: list[int]) -> None:
    """Train models ``indices`` together (``parallel_models`` at once) and save each to the store."""
    s = ctx.settings
    seeds = [model_seed(s, i) for i in indices]
    models = [build_model(s, ctx.data, seed) for seed in seeds]
    members = [torch.from_numpy(np.flatnonzero(ctx.splits.keep[i])) for i in indices]
    results = train_models(models, ctx.data.x, ctx.data.y, members, s.train, seeds=seeds,
                           x_test=ctx.data.x_test, y_test=ctx.data.y_test, strategy=s.parallel_strategy)
    for index, model, result in zip(indices, models, results):
        if not np.isfinite(result.metrics["train_loss"]):
            raise FloatingPointError(
                f"model {index} diverged (train loss {result.metrics['train_loss']}): lower train.lr or add warmup"
            )
        meta = {"model": index, **result.metrics}
        ctx.store.save("models", model_key(ctx, index), state_dict_to_bytes(model.state_dict()), meta)
        ctx.trained.append(index)


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
    served transform is applied after loading.
    """
    s = ctx.settings
    num_examples = len(ctx.data.y)

    def decode(payload: bytes) -> np.ndarray:
        array = array_from_bytes(payload)
        if array.ndim < 1 or len(array) != num_examples:
            raise ValueError(f"signals of shape {array.shape} for a population of {num_examples}")
        return array

    def collect(indices: list[int]) -> None:
        for index in indices:
            model = _model_for_signals(ctx, index)
            logits = collect_logits(model, ctx.data.x, s.queries, batch_size=s.signal_batch_size,
                                    dtype=s.signals_dtype)
            array = logits.cpu().numpy()
            ctx.store.save("signals", signal_key(ctx, index), array_to_bytes(array),
                           {"model": index, "shape": list(array.shape)})

    keys = {index: signal_key(ctx, index) for index in range(s.num_models)}
    rows = {index: found[0] for index, key in keys.items()
            if (found := ctx.store.load("signals", key, decode=decode)) is not None}
    missing = {index: key for index, key in keys.items() if index not in rows}
    if missing:
        with _progress(None, s, "signals") as bar:
            build_missing(ctx.store, "signals", missing, collect, decode=decode, on_built=bar.update)
        for index, key in missing.items():
            found = ctx.store.load("signals", key, decode=decode)
            if found is None:
                raise RuntimeError(f"signals of model {index} vanished from the store {ctx.store.root}")
            rows[index] = found[0]
    return np.stack([serve_array(rows[index], s.output) for index in range(s.num_models)])


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Served output of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    model = build_model(s, ctx.data, model_seed(s, target) + 7919).to(s.device)
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
    """Write the keep matrix and evaluation mask into the run directory."""
    atomic_write_bytes(ctx.run_dir / "keep.npy", array_to_bytes(ctx.splits.keep))
    atomic_write_bytes(ctx.run_dir / "eval_mask.npy", array_to_bytes(ctx.splits.eval_mask))


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
    build_model(settings, data, 0)(data.x[:2])  # the architecture fits the data
    splits = make_splits(settings.num_models, len(data.y), seed=settings.seed,
                         target_ids=settings.target_ids, threat_model=settings.threat_model)
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
