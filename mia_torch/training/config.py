"""Validated training hyperparameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "linear", "onecycle", "step", "constant")


@dataclass
class TrainConfig:
    """Everything that determines how one model is trained (the ``train`` config group)."""

    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop_padding: int = 0
    flip: bool = False
    compile: bool = False
    eval_batch_size: int = 2048

    def __post_init__(self) -> None:
        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}"),
            (self.lr > 0, "lr", "> 0"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "in [0, epochs)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.crop_padding >= 0, "crop_padding", ">= 0"),
            (self.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
        ]
        for ok, key, expected in checks:
            if not ok:
                raise ValueError(f"train.{key}={getattr(self, key)!r} is invalid: expected {expected}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping, rejecting unknown keys by name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown key(s) train.{', train.'.join(unknown)}; valid keys: {sorted(known)}")
        return cls(**dict(values))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for artifact keys."""
        return asdict(self)
