"""Early stopping on a validation split: keep the best epoch's weights, stop after ``patience`` epochs without progress.

Used by every trainer (one model, several at once, DP-SGD) so they stop at the same
epoch. The validation records are carved from the model's own training half by
:func:`mia_torch.data.splits.carve_validation` and are never trained on.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mia_torch.training.config import EarlyStoppingConfig

__all__ = ["EarlyStopping"]


class EarlyStopping:
    """Track a model's validation metric epoch by epoch.

    After each epoch call :meth:`update` with the validation loss and accuracy; it
    snapshots the weights when the configured metric improved (strictly: lower loss or
    higher accuracy) and returns True once ``patience`` epochs have passed without
    improvement. :meth:`restore` loads the best epoch's weights (and buffers, e.g.
    BatchNorm statistics) back into the model.
    """

    def __init__(self, cfg: EarlyStoppingConfig) -> None:
        if cfg.patience is None:
            raise ValueError("EarlyStopping needs train.early_stopping.patience (an integer >= 1)")
        self.patience = cfg.patience
        self.metric = cfg.metric
        self.best_epoch = 0
        self.epochs = 0
        self.best_score = float("inf")
        self.best_state: dict[str, torch.Tensor] | None = None
        self.val_loss: list[float] = []
        self.val_acc: list[float] = []

    @property
    def stopped(self) -> bool:
        """Whether ``patience`` epochs have passed since the best one."""
        return self.epochs - self.best_epoch >= self.patience

    def update(self, model: nn.Module, *, loss: float, acc: float) -> bool:
        """Record one finished epoch's validation ``loss`` and ``acc``; returns whether to stop now."""
        self.epochs += 1
        self.val_loss.append(loss)
        self.val_acc.append(acc)
        score = -acc if self.metric == "acc" else loss
        if score < self.best_score or self.best_state is None:
            self.best_score, self.best_epoch = score, self.epochs
            self.best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return self.stopped

    def restore(self, model: nn.Module) -> None:
        """Load the best epoch's weights into ``model``."""
        if self.best_state is not None:
            model.load_state_dict(self.best_state)

    def metrics(self) -> dict[str, Any]:
        """``best_epoch`` (1-based, restored), ``stopped_epoch`` (epochs run) and the validation curves."""
        best = self.best_epoch - 1
        return {
            "best_epoch": self.best_epoch,
            "stopped_epoch": self.epochs,
            "val_loss": self.val_loss[best] if self.val_loss else float("nan"),
            "val_acc": self.val_acc[best] if self.val_acc else float("nan"),
            "epoch_val_loss": list(self.val_loss),
            "epoch_val_acc": list(self.val_acc),
        }
