"""Model training: validated hyperparameters, the device-resident trainers, training-time defenses (DP-SGD)."""

from mia_torch.training.config import EarlyStoppingConfig, TrainConfig
from mia_torch.training.defense import Defense, NoDefense
from mia_torch.training.dp import DPSGD, train_private
from mia_torch.training.ensemble import train_models
from mia_torch.training.trainer import TrainResult, evaluate, train_model

__all__ = [
    "DPSGD",
    "Defense",
    "EarlyStoppingConfig",
    "NoDefense",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "train_model",
    "train_models",
    "train_private",
]
