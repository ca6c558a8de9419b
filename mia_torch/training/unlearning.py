"""Ways to remove records from a trained model (machine unlearning), checked by ``experiment=forget``.

- ``retrain``: train from scratch with the same seed and recipe on the retained records (exact
  unlearning, the gold standard; built by the pipeline like any model);
- ``finetune``: continue training the original model on the retained records only;
- ``gradient_ascent``: ascend the loss on the forgotten records, then repair on the retained ones;
- ``checkpoint``: a model the user unlearned elsewhere (loaded like ``audit.checkpoint``).
"""
from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import TrainResult, train_model

__all__ = ["FORGET_METHODS", "finetune", "gradient_ascent"]

FORGET_METHODS = ("retrain", "finetune", "gradient_ascent", "checkpoint")


def finetune(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    retain_idx: torch.Tensor,
    cfg: TrainConfig,
    *,
    epochs: int,
    lr: float,
    seed: int,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> TrainResult:
    """Continue training ``model`` in place on ``x[retain_idx]`` for ``epochs`` with the recipe ``cfg`` at ``lr``.

    It runs all ``epochs``: ``cfg``'s early stopping is turned off (there is no validation split here).
    """
    recipe = replace(cfg, epochs=epochs, lr=lr, warmup_epochs=0.0,
                     early_stopping=replace(cfg.early_stopping, patience=None))
    return train_model(model, x, y, retain_idx, recipe, seed=seed, x_test=x_test, y_test=y_test)


def gradient_ascent(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    forget_idx: torch.Tensor,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> None:
    """Raise ``model``'s loss on ``x[forget_idx]`` in place: plain SGD on the negated cross-entropy.

    Batches are drawn from a generator seeded with ``seed``; no host synchronisation in the
    loop. Usually followed by :func:`finetune` on the retained records (the repair step).
    """
    device = x.device
    model.to(device).train()
    forget_idx = forget_idx.to(device)
    generator = torch.Generator(device=device).manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    num_batches = max(1, round(len(forget_idx) / batch_size))
    for _ in range(epochs):
        order = forget_idx[torch.randperm(len(forget_idx), generator=generator, device=device)]
        for batch in torch.tensor_split(order, num_batches):
            loss = -F.cross_entropy(model(x[batch]).float(), y[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
