"""Train the audited DP-SGD model with gradient canaries, and score them by the update of their coordinate."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from mia_torch.dp_audit.canaries import Canaries
from mia_torch.locks import build_missing
from mia_torch.stages.context import Context, build, digest_row, key_of, model_seed
from mia_torch.stages.train import member_rows, model_with_weights
from mia_torch.store import digest, state_dict_from_bytes, state_dict_to_bytes
from mia_torch.training.canary_gradients import canary_step_hook, flat_parameters, trainable
from mia_torch.training.dp import private_sample_rate

__all__ = ["gradient_canary_key", "train_with_gradient_canaries"]

#: Offset of the canaries' sampling seed from the model's seed.
_SAMPLING_SEED = 0xCA7


def gradient_canary_key(ctx: Context, target: int, canaries: Canaries) -> str:
    """Store key of ``target`` trained with ``canaries``: its own key, the canaries' coordinates and bits."""
    return digest({"model": key_of(ctx, target), "gradient_canaries": {
        "coordinates": canaries.columns.tolist(), "included": digest_row(canaries.included)}})


def train_with_gradient_canaries(ctx: Context, target: int, canaries: Canaries) -> tuple[nn.Module, dict[str, Any],
                                                                                           np.ndarray]:
    """The DP-SGD ``target`` trained with the included gradient canaries (a stored, keyed model), its training
    metrics and the canaries' scores (float64 ``[m]``: initial minus final value of each coordinate)."""
    s, data = ctx.settings, ctx.data
    seed = model_seed(s, target)
    members, validation = member_rows(ctx, target)
    key = gradient_canary_key(ctx, target, canaries)

    def train(_: list[int]) -> None:
        model = build(s, data, seed, defended=True)
        hook = canary_step_hook(trainable(model), canaries.columns[canaries.included],
                                max_grad_norm=s.defense.max_grad_norm,
                                sample_rate=private_sample_rate(len(members), s.train.batch_size),
                                seed=seed + _SAMPLING_SEED)
        result = s.defense.train(model, data.x, data.y, members, s.train, seed=seed, val_idx=validation,
                                 x_test=data.x_test, y_test=data.y_test, step_hooks=[hook])
        if not np.isfinite(result.metrics["train_loss"]):
            raise FloatingPointError(f"model {target} diverged (train loss {result.metrics['train_loss']}): lower "
                                     "train.lr")
        ctx.store.save("models", key, state_dict_to_bytes(model.state_dict()), {"model": target, **result.metrics})

    outcome = build_missing(ctx.store, "models", {target: key}, train, decode=state_dict_from_bytes,
                            keep_values=True)
    (ctx.trained if outcome.built else ctx.reused).append(target)
    model = model_with_weights(ctx, target, outcome.values[target], key=key)
    if model is None:
        raise RuntimeError(f"the gradient-canary model of target {target} in the store {ctx.store.root} does not fit "
                           "the configured model: it was moved aside, run again to retrain it")
    initial = flat_parameters(build(s, data, seed, defended=True))
    moved = (initial - flat_parameters(model))[torch.from_numpy(canaries.columns)]
    meta = {**outcome.meta[target], "checkpoint": str(ctx.store.payload_path("models", key))}
    return model, meta, moved.numpy()
