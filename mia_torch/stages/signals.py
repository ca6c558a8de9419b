"""The signals stage: each model's served output on every example under the query views."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from tqdm import tqdm

from mia_torch.atomic import atomic_write_bytes
from mia_torch.locks import build_missing
from mia_torch.signals.manifest import write_dense_signals, write_manifest
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.signals.output import serve
from mia_torch.signals.source import SignalSource, check_signals
from mia_torch.stages.context import Context, build, is_defended, key_of, model_seed, signal_key
from mia_torch.stages.train import group_size, stored_model
from mia_torch.store import array_from_bytes, array_to_bytes

__all__ = ["query", "record_signals", "signals_stage", "untrained_logits"]


def signals_stage(ctx: Context, indices: Sequence[int] | None = None) -> SignalSource:
    """Make sure the logits of models ``indices`` (default: all) are in the store; the source that reads them.

    The store holds raw logits, one artifact per model, so changing ``output`` reuses models
    and signals; the served transform is applied when they are read. Missing logits are
    collected ``parallel_models`` models at a time where the strategy is vmap (CUDA: one
    batched forward for all of them), one model at a time otherwise. Artifacts found in the store
    are not read here: each is verified when it is first read (:class:`SignalSource`); those
    collected here are verified once as they are stored, and the source knows it.
    """
    s = ctx.settings
    indices = list(range(s.num_models)) if indices is None else list(indices)

    def decode(payload: bytes) -> np.ndarray:
        array = array_from_bytes(payload)
        check_signals(array, num_examples=len(ctx.data.y), num_queries=len(s.queries))
        return array

    keys = {index: signal_key(s, key_of(ctx, index)) for index in indices}

    def collect(chunk: list[int]) -> None:
        models = [stored_model(ctx, index) for index in chunk]
        logits = collect_logits_many(models, ctx.data.x, s.queries, batch_size=s.signal_batch_size,
                                     dtype=s.signals_dtype, strategy=s.parallel_strategy)
        for index, array in zip(chunk, logits.cpu().numpy()):
            ctx.store.save("signals", keys[index], array_to_bytes(array), {"model": index, "shape": list(array.shape)})

    def build(missing: list[int], group: int) -> set[int]:
        """Collect the logits of ``missing``; the models whose artifacts this verified (all of them)."""
        with tqdm(desc="signals", disable=not s.progress, unit="model", leave=False) as bar:
            outcome = build_missing(ctx.store, "signals", {i: keys[i] for i in missing}, collect, group=group,
                                    decode=decode, on_built=bar.update)
        return set(outcome.meta)

    missing = [i for i in indices if not ctx.store.contains("signals", keys[i])]
    verified = build(missing, group_size(ctx)) if missing else set()
    return SignalSource(ctx.store, keys, s.output, ctx.data.y.cpu().numpy(), num_queries=len(s.queries),
                        rebuild=lambda index: build([index], 1), progress=s.progress, verified=verified)


def record_signals(ctx: Context, source: SignalSource) -> None:
    """The run's record of what the attacks saw: ``signals.json`` (store keys) and ``labels.npy``; with
    ``save_signals=true`` also the served outputs themselves, ``signals.npy``."""
    write_manifest(ctx.run_dir, source)
    atomic_write_bytes(ctx.run_dir / "labels.npy", array_to_bytes(ctx.data.y.cpu().numpy()))
    if ctx.settings.save_signals:
        write_dense_signals(ctx.run_dir / "signals.npy", source)


def query(ctx: Context, model: torch.nn.Module, records: torch.Tensor | None = None) -> torch.Tensor:
    """Served output ``[N, Q, C]`` (float32) of any ``model`` on ``records`` (default: the population), under the
    configured queries."""
    s = ctx.settings
    records = ctx.data.x if records is None else records
    logits = collect_logits(model.to(s.device), records, s.queries, batch_size=s.signal_batch_size)
    return serve(logits, s.output).float()


def untrained_logits(ctx: Context, target: int) -> torch.Tensor:
    """Served output of an untrained copy of ``target``: a model that carries no membership information."""
    s = ctx.settings
    return query(ctx, build(s, ctx.data, model_seed(s, target) + 7919, defended=is_defended(s, target)))
