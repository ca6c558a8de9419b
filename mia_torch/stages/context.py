"""What the stages share: settings, data, splits, store; seeds and content keys of models and signals.

Each model's key is computed once per context (:func:`key_of`, kept in ``Context.model_keys``):
training it, loading it, its place in the store and its signals' key all read that one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mia_torch.attacks.base import Attack
from mia_torch.data.datasets import Dataset
from mia_torch.data.splits import Splits
from mia_torch.fingerprint import code_digest, dataset_digest
from mia_torch.settings.load import Settings
from mia_torch.store import ArtifactStore, digest
from mia_torch.training.build import build_model

__all__ = ["Context", "build", "digest_row", "is_defended", "key_of", "model_key", "model_seed", "signal_key",
           "stored_path"]


@dataclass
class Context:
    """What the stages share: settings, data, splits, store, what was (re)built, the models' keys and the attacks.

    ``model_keys[m]`` is model m's store key (see :func:`key_of`). A context for other splits
    (:meth:`for_splits`) starts with its own empty ``trained``, ``reused`` and ``model_keys``;
    ``attacks`` (the configured attacks, built once, unfitted) are shared.
    """

    settings: Settings
    run_dir: Path
    data: Dataset
    splits: Splits
    store: ArtifactStore
    trained: list[int] = field(default_factory=list)
    reused: list[int] = field(default_factory=list)
    model_keys: dict[int, str] = field(default_factory=dict)
    attacks: dict[str, Attack] = field(default_factory=dict)

    def for_splits(self, splits: Splits) -> "Context":
        """This run's context for other membership ``splits`` (its models have other keys)."""
        return replace(self, splits=splits, trained=[], reused=[], model_keys={})


def model_seed(settings: Settings, index: int) -> int:
    """Seed of model ``index``: independent of how many models the study has."""
    return settings.seed * 1_000_003 + index


def is_defended(settings: Settings, index: int) -> bool:
    """Whether model ``index`` trains under the configured defense (its ``apply_to``)."""
    return settings.defense.applies_to(index, settings.target_ids)


def build(settings: Settings, data: Dataset, seed: int, *, defended: bool = False) -> torch.nn.Module:
    """The configured architecture for ``data``, seeded (see :func:`mia_torch.training.build.build_model`);
    ``defended``: as the defense trains it (:meth:`~mia_torch.training.defense.Defense.adapt`)."""
    model = build_model(settings.model, input_shape=data.input_shape, num_classes=data.num_classes, seed=seed)
    return settings.defense.adapt(model) if defended else model


def digest_row(row: np.ndarray) -> str:
    """Content key of a boolean membership row (the indices it holds)."""
    return digest({"row": np.flatnonzero(row).tolist()})


def model_key(ctx: Context, index: int) -> str:
    """Content hash of everything that determines trained model ``index``.

    The data enters as the digest of its tensors as loaded and the code as the digest of
    the training source (:mod:`mia_torch.fingerprint`), so new data or edited training
    code makes new keys, while moving a data file does not.
    """
    s = ctx.settings
    spec: dict[str, Any] = {
        "data": dataset_digest(ctx.data),
        "model": s.model,
        "train": s.train.to_dict(),
        "defense": s.defense.key(len(ctx.data.y)) if is_defended(s, index) else None,
        "keep_row": digest_row(ctx.splits.keep[index]),
        "seed": model_seed(s, index),
        "device": s.device.type,
        "code": code_digest("models"),
    }
    if ctx.splits.validation is not None:  # early stopping: the records it validates on
        spec["validation_row"] = digest_row(ctx.splits.validation[index])
    return digest(spec)


def key_of(ctx: Context, index: int) -> str:
    """Model ``index``'s store key (:func:`model_key`), computed once per context and kept in ``ctx.model_keys``."""
    if index not in ctx.model_keys:
        ctx.model_keys[index] = model_key(ctx, index)
    return ctx.model_keys[index]


def stored_path(ctx: Context, index: int) -> Path:
    """Where model ``index``'s weights (a ``torch.save``-d state dict) lie in the store, e.g. for ``audit.checkpoint``."""
    return ctx.store.payload_path("models", key_of(ctx, index))


def signal_key(settings: Settings, model: str) -> str:
    """Content hash of the logits, under the configured queries, of the model whose key is ``model``."""
    return digest({"model": model, "queries": settings.queries, "dtype": str(settings.signals_dtype),
                   "code": code_digest("signals")})
