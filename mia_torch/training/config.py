"""Validated training hyperparameters (the ``train`` config group)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Optional

from mia_torch.settings.checks import check_values, known_keys
from mia_torch.data.augment import AugmentConfig

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("cosine", "linear", "onecycle", "step", "constant")
STOPPING_METRICS = ("loss", "acc")
#: Older spellings of ``train.augment.*`` keys, still accepted: ``train.crop_padding``, ``train.flip``.
AUGMENT_ALIASES = ("crop_padding", "flip")


@dataclass
class EarlyStoppingConfig:
    """The ``train.early_stopping`` keys: stop when the validation metric stops improving.

    The validation split is carved from each model's own training half
    (:func:`mia_torch.data.splits.carve_validation`); those records are not trained on.
    """

    patience: Optional[int] = None  # epochs without improvement before stopping; null = no early stopping
    metric: str = "loss"  # loss | acc, on the validation split
    validation_fraction: float = 0.1  # share of each model's training half held out for validation

    def __post_init__(self) -> None:
        check_values(self, "train.early_stopping", [
            (self.patience is None or (isinstance(self.patience, int) and self.patience >= 1), "patience",
             "null (off) or an integer >= 1"),
            (self.metric in STOPPING_METRICS, "metric", f"one of {STOPPING_METRICS}"),
            (0 < self.validation_fraction < 1, "validation_fraction", "in (0, 1)"),
        ])

    @property
    def enabled(self) -> bool:
        """Whether models hold out a validation split and stop early."""
        return self.patience is not None


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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    compile: bool = False
    eval_batch_size: int = 2048
    # older spellings of augment.crop_padding / augment.flip; folded into `augment` (then None)
    crop_padding: Optional[int] = None
    flip: Optional[bool] = None

    def __post_init__(self) -> None:
        if isinstance(self.augment, Mapping):
            self.augment = AugmentConfig.from_mapping(self.augment)
        if isinstance(self.early_stopping, Mapping):
            self.early_stopping = EarlyStoppingConfig(**known_keys(self.early_stopping, EarlyStoppingConfig,
                                                                     "train.early_stopping"))
        self._fold_aliases()
        check_values(self, "train", [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", f"one of {OPTIMIZERS}"),
            (self.lr > 0, "lr", "> 0"),
            (0 <= self.momentum < 1, "momentum", "in [0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (self.schedule in SCHEDULES, "schedule", f"one of {SCHEDULES}"),
            (0 <= self.warmup_epochs < self.epochs, "warmup_epochs", "in [0, epochs)"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "in [0, 1)"),
            (self.eval_batch_size >= 1, "eval_batch_size", ">= 1"),
        ])

    def _fold_aliases(self) -> None:
        for key in AUGMENT_ALIASES:
            value = getattr(self, key)
            if value is None:
                continue
            current, default = getattr(self.augment, key), getattr(AugmentConfig(), key)
            if current not in (default, value):
                raise ValueError(f"train.{key}={value!r} and train.augment.{key}={current!r} disagree: "
                                 f"set only train.augment.{key}")
            setattr(self.augment, key, value)
            setattr(self, key, None)
        self.augment.__post_init__()

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "TrainConfig":
        """Build from a plain mapping, rejecting unknown keys by name."""
        return cls(**known_keys(values, cls, "train"))

    def to_dict(self) -> dict[str, Any]:
        """Plain dict, e.g. for artifact keys (the folded older spellings left out)."""
        return {k: v for k, v in asdict(self).items() if k not in AUGMENT_ALIASES}

