"""The train stage: every model the run needs is in the store, trained only when missing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mia_torch.locks import build_missing
from mia_torch.stages.context import Context, build, is_defended, key_of, model_seed
from mia_torch.store import state_dict_from_bytes, state_dict_to_bytes
from mia_torch.training.ensemble import train_models
from mia_torch.training.stacking import resolve_strategy
from mia_torch.training.trainer import TrainResult

__all__ = ["load_trained_model", "model_with_weights", "stored_model", "train_group", "train_stage"]


def load_trained_model(ctx: Context, index: int) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """Model ``index`` from the store (weights_only load), or None when absent or corrupt (moved aside)."""
    key = key_of(ctx, index)
    found = ctx.store.load("models", key, decode=state_dict_from_bytes)
    if found is None:
        return None
    model = model_with_weights(ctx, index, found[0], key=key)
    return None if model is None else (model, found[1])


def model_with_weights(ctx: Context, index: int, weights: dict[str, torch.Tensor], *,
                       key: str) -> torch.nn.Module | None:
    """Model ``index``'s architecture holding ``weights`` (stored as ``models/key``), on the device in eval mode;
    None when they do not fit the configured model (the artifact is then moved aside)."""
    s = ctx.settings
    model = build(s, ctx.data, model_seed(s, index), defended=is_defended(s, index))
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        ctx.store.quarantine("models", key, reason=f"its weights do not fit the configured model: {err}")
        return None
    return model.to(s.device).eval()


def member_rows(ctx: Context, index: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Model ``index``'s training records (effective membership) and validation records (or None)."""
    validation = ctx.splits.validation
    return (torch.from_numpy(np.flatnonzero(ctx.splits.keep[index])),
            None if validation is None else torch.from_numpy(np.flatnonzero(validation[index])))


def save_trained(ctx: Context, index: int, model: torch.nn.Module, result: TrainResult) -> None:
    """Store freshly trained model ``index`` (refusing a diverged one)."""
    if not np.isfinite(result.metrics["train_loss"]):
        raise FloatingPointError(
            f"model {index} diverged (train loss {result.metrics['train_loss']}): lower train.lr or add warmup"
        )
    meta = {"model": index, **result.metrics}
    ctx.store.save("models", key_of(ctx, index), state_dict_to_bytes(model.state_dict()), meta)
    if index in ctx.reused:  # found earlier in this run, then rebuilt: it counts as trained only
        ctx.reused.remove(index)
    if index not in ctx.trained:
        ctx.trained.append(index)


def train_group(ctx: Context, indices: list[int]) -> None:
    """Train models ``indices`` and save each to the store.

    Models under the training-time defense train one at a time, by the defense (each saved
    when done); the others together (``parallel_models`` at once).
    """
    s, data = ctx.settings, ctx.data
    for index in [i for i in indices if is_defended(s, i)]:
        model = build(s, data, model_seed(s, index), defended=True)
        members, validation = member_rows(ctx, index)
        started = time.perf_counter()
        result = s.defense.train(model, data.x, data.y, members, s.train, seed=model_seed(s, index),
                                 val_idx=validation, x_test=data.x_test, y_test=data.y_test)
        result.metrics["train_seconds"] = round(time.perf_counter() - started, 3)
        save_trained(ctx, index, model, result)
    plain = [i for i in indices if not is_defended(s, i)]
    if not plain:
        return
    seeds = [model_seed(s, i) for i in plain]
    models = [build(s, data, seed) for seed in seeds]
    rows = [member_rows(ctx, i) for i in plain]
    validation = None if ctx.splits.validation is None else [v for _, v in rows]
    started = time.perf_counter()
    results = train_models(models, data.x, data.y, [m for m, _ in rows], s.train, seeds=seeds, val_idx=validation,
                           x_test=data.x_test, y_test=data.y_test, strategy=s.parallel_strategy)
    each = round((time.perf_counter() - started) / len(plain), 3)  # trained together: an equal share each
    for index, model, result in zip(plain, models, results):
        result.metrics["train_seconds"] = each
        save_trained(ctx, index, model, result)


def group_size(ctx: Context) -> int:
    """Models built at once: ``parallel_models`` where the strategy is vmap, else one (an interruption loses one)."""
    s = ctx.settings
    return s.parallel_models if resolve_strategy(s.parallel_strategy, s.device, s.parallel_models) == "vmap" else 1


def _layout(state: dict[str, torch.Tensor]) -> frozenset[tuple[str, tuple[int, ...]]]:
    return frozenset((name, tuple(tensor.shape)) for name, tensor in state.items())


def fitting_weights(ctx: Context, indices: list[int]) -> Callable[[bytes], dict[str, torch.Tensor]]:
    """A store decoder that also refuses weights whose names or shapes fit none of the architectures of models
    ``indices`` (a payload can pass its checksum and still not be this model's): such an artifact is corrupt."""
    s = ctx.settings
    layouts = {_layout(build(s, ctx.data, 0, defended=defended).state_dict())
               for defended in {is_defended(s, index) for index in indices}}

    def decode(payload: bytes) -> dict[str, torch.Tensor]:
        state = state_dict_from_bytes(payload)
        if _layout(state) not in layouts:
            raise ValueError("its tensors' names or shapes do not fit the configured model")
        return state

    return decode


def train_stage(ctx: Context, indices: list[int]) -> list[dict[str, Any]]:
    """Make sure models ``indices`` exist in the store; train only the missing ones; their metrics.

    Missing models are locked and trained in groups (:func:`group_size`); models another
    process is training are waited for and reused (:func:`mia_torch.locks.build_missing`).
    A stored model is reused only when its weights fit the configured architecture
    (:func:`fitting_weights`); otherwise it is moved aside and retrained.
    """
    keys = {index: key_of(ctx, index) for index in indices}
    with tqdm(desc="train", disable=not ctx.settings.progress, unit="model", leave=False) as bar:
        outcome = build_missing(ctx.store, "models", keys, lambda chunk: train_group(ctx, chunk),
                                group=group_size(ctx), decode=fitting_weights(ctx, indices), on_built=bar.update)
    ctx.reused.extend(i for i in outcome.reused if i not in ctx.reused and i not in ctx.trained)
    return [outcome.meta[i] for i in indices]


def stored_model(ctx: Context, index: int) -> torch.nn.Module:
    """Model ``index`` loaded from the store, retrained first if it went missing or corrupt."""
    loaded = load_trained_model(ctx, index)
    if loaded is None:  # moved aside as corrupt since the train stage: rebuild it
        train_stage(ctx, [index])
        loaded = load_trained_model(ctx, index)
    if loaded is None:
        raise RuntimeError(f"model {index} could not be loaded from the store right after training it")
    return loaded[0]
