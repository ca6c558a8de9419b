"""Canaries: m records (or gradients) each added to the audited model's training set with probability 1/2.

The inclusion bits are the secret the auditor guesses. Record canaries become columns of
the keep matrix like any population record: the audited target's row holds their
inclusion bits, every other model's row is False there (no reference model trains on a
canary), and the evaluation mask leaves them out of the study's own attack evaluation.

- ``mislabeled``: population records with a uniformly drawn wrong label (the strongest
  record canary: only a model that memorises the record fits its label);
- ``clean``: population records with their own label (an ordinary record);
- ``ood``: images of uniform noise over each channel's range in the population, with a
  uniformly drawn label, appended to the population;
- ``gradient``: coordinates of the model's trainable parameters (Dirac gradient canaries,
  :mod:`mia_torch.training.canary_gradients`); the data is unchanged.

Population canaries are taken out of the study: at most half the population may be canaries.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mia_torch.atomic import atomic_open
from mia_torch.data.datasets import Dataset
from mia_torch.data.splits import Splits
from mia_torch.dp_audit.config import DpAuditConfig

__all__ = ["Canaries", "add_canaries", "draw_canaries"]

#: Stream tag of the canaries' generator (apart from the keep matrix's and the models' draws).
_STREAM = 0xCA7


@dataclass(frozen=True)
class Canaries:
    """m canaries: their ``kind``, inclusion bits ``included`` (bool ``[m]``: the secret), ``columns`` (int64
    ``[m]``: population columns, or flat parameter coordinates for ``gradient``), the ``labels`` they train
    with (int64 ``[m]``, empty for ``gradient``) and ``source_ids``, the population row each was drawn from
    (-1 for generated ``ood`` images and for gradients)."""

    kind: str
    included: np.ndarray
    columns: np.ndarray
    labels: np.ndarray
    source_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.included)

    def save(self, path: Path) -> None:
        """Write the canaries to ``path`` (``.npz``, atomically): the record of which were trained on."""
        with atomic_open(path, "wb") as fh:
            np.savez(fh, kind=np.array(self.kind), included=self.included, columns=self.columns, labels=self.labels,
                     source_ids=self.source_ids)


def draw_canaries(config: DpAuditConfig, data: Dataset, *, seed: int, num_parameters: int | None = None) -> Canaries:
    """Draw ``config.count`` canaries of ``config.kind`` for ``data`` (seeded by ``seed``), checking they fit.

    ``num_parameters`` is the model's number of trainable coordinates (gradient canaries).
    Raises ``ValueError`` naming ``dp_audit.count`` when the population (or the model) is
    too small for them.
    """
    rng = np.random.default_rng([int(seed), _STREAM])
    m, n, classes = config.count, len(data.y), data.num_classes
    included = rng.random(m) < 0.5
    none = np.full(m, -1, dtype=np.int64)
    if config.kind == "gradient":
        if num_parameters is None or m > num_parameters:
            raise ValueError(f"dp_audit.count={m} is too many gradient canaries: the model has {num_parameters} "
                             "trainable coordinates, one per canary")
        columns = np.sort(rng.choice(num_parameters, m, replace=False)).astype(np.int64)
        return Canaries("gradient", included, columns, np.zeros(0, dtype=np.int64), none)
    if config.kind == "ood":
        return Canaries("ood", included, n + np.arange(m, dtype=np.int64), rng.integers(0, classes, m), none)
    if m > n // 2:
        raise ValueError(f"dp_audit.count={m} is too many canaries for the population: {config.kind} canaries are "
                         f"records taken out of the study's {n}, at most half of them ({n // 2}); lower "
                         "dp_audit.count, use a larger population or dp_audit.kind=ood")
    ids = np.sort(rng.choice(n, m, replace=False)).astype(np.int64)
    labels = data.y.cpu().numpy()[ids].astype(np.int64)
    if config.kind == "mislabeled":
        labels = (labels + rng.integers(1, classes, m)) % classes
    return Canaries(config.kind, included, ids, labels, ids.copy())


def _noise_images(data: Dataset, count: int, seed: int) -> torch.Tensor:
    """``count`` images of uniform noise between each channel's smallest and largest value in the population."""
    x = data.x
    channels = x.transpose(0, 1).reshape(x.shape[1], -1)
    low, high = channels.min(dim=1).values, channels.max(dim=1).values
    shape = (1, -1) + (1,) * (x.dim() - 2)
    generator = torch.Generator().manual_seed(int(seed))
    u = torch.rand((count, *x.shape[1:]), generator=generator, dtype=x.dtype)
    return (low.cpu().view(shape) + u * (high - low).cpu().view(shape)).to(x.device)


def _widen(mask: np.ndarray | None, extra: int) -> np.ndarray | None:
    """``mask`` (bool ``[..., N]``) with ``extra`` False columns appended."""
    if mask is None or extra == 0:
        return None if mask is None else mask.copy()
    return np.concatenate([mask, np.zeros((*mask.shape[:-1], extra), dtype=bool)], axis=-1)


def add_canaries(data: Dataset, splits: Splits, canaries: Canaries, *, target: int, seed: int) -> tuple[Dataset, Splits]:
    """The data and splits of the audited run: the canaries in the target's training set by their bits.

    Record canaries are columns of the population (``ood`` images appended, seeded by
    ``seed``; ``mislabeled`` records relabelled); no other model trains on them and the
    study's evaluation leaves them out. Gradient canaries change neither.
    """
    if canaries.kind == "gradient":
        return data, splits
    extra = len(canaries) if canaries.kind == "ood" else 0
    x, y, indices = data.x, data.y.clone(), data.indices
    labels = torch.from_numpy(canaries.labels).to(y.device)
    if canaries.kind == "ood":
        x = torch.cat([x, _noise_images(data, extra, seed)])
        y = torch.cat([y, labels])
        indices = torch.cat([indices, torch.full((extra,), -1, dtype=indices.dtype)])
    else:
        y[torch.from_numpy(canaries.columns).to(y.device)] = labels
    keep, eval_mask, validation = (_widen(a, extra) for a in (splits.keep, splits.eval_mask, splits.validation))
    keep[:, canaries.columns] = False
    keep[target, canaries.columns] = canaries.included
    eval_mask[canaries.columns] = False
    if validation is not None:
        validation[:, canaries.columns] = False
    return (replace(data, x=x, y=y, indices=indices),
            replace(splits, keep=keep, eval_mask=eval_mask, validation=validation))
