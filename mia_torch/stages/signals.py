"""The signals stage: each model's served output on every example under the query views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from mia_torch.locks import build_missing
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.signals.output import serve, serve_array
from mia_torch.stages.context import Context, build, is_defended, key_of, model_seed, signal_key
from mia_torch.stages.train import group_size, stored_model
from mia_torch.store import array_from_bytes, array_to_bytes

__all__ = ["query", "signals_stage", "untrained_logits"]


def signals_stage(ctx: Context, indices: Sequence[int] | None = None) -> np.ndarray:
    """Served outputs ``[M, N, Q, C]`` of models ``indices`` (default: all), reusing stored signals.

    The store holds raw logits, so changing ``output`` reuses models and signals; the
    served transform is applied after loading. Missing logits are collected
    ``parallel_models`` models at a time where the strategy is vmap (CUDA: one batched
    forward for all of them), one model at a time otherwise.
    """
    s = ctx.settings
    indices = list(range(s.num_models)) if indices is None else list(indices)
    num_examples = len(ctx.data.y)

    def decode(payload: bytes) -> np.ndarray:
        array = array_from_bytes(payload)
        if array.ndim < 1 or len(array) != num_examples:
            raise ValueError(f"signals of shape {array.shape} for a population of {num_examples}")
        return array

    keys = {index: signal_key(s, key_of(ctx, index)) for index in indices}

    def collect(chunk: list[int]) -> None:
        models = [stored_model(ctx, index) for index in chunk]
        logits = collect_logits_many(models, ctx.data.x, s.queries, batch_size=s.signal_batch_size,
                                     dtype=s.signals_dtype, strategy=s.parallel_strategy)
        for index, array in zip(chunk, logits.cpu().numpy()):
            ctx.store.save("signals", keys[index], array_to_bytes(array), {"model": index, "shape": list(array.shape)})

    with tqdm(desc="signals", disable=not s.progress, unit="model", leave=False) as bar:
        rows = build_missing(ctx.store, "signals", keys, collect, group=group_size(ctx), decode=decode,
                             on_built=bar.update, keep_values=True).values
    return np.stack([serve_array(rows[index], s.output) for index in indices])


def query(ctx: Context, model: torch.nn.Module) -> torch.Tensor:
    """Served output ``[N, Q, C]`` (float32) of any ``model`` on the population, under the configured queries."""
    s = ctx.settings
    logits = collect_logits(model.to(s.device), ctx.data.x, s.queries, batch_size=s.signal_batch_size)
    return serve(logits, s.output).float()


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Served output of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    return query(ctx, build(s, ctx.data, model_seed(s, target) + 7919, defended=is_defended(s, target)))
