"""Model training: validated hyperparameters, the device-resident trainers, DP-SGD."""

from mia_torch.training.config import EarlyStoppingConfig, TrainConfig
from mia_torch.training.dp import DefenseConfig, train_private
from mia_torch.training.ensemble import train_models
from mia_torch.training.trainer import TrainResult, evaluate, train_model

__all__ = [
    "DefenseConfig",
    "EarlyStoppingConfig",
    "TrainConfig",
    "TrainResult",
    "evaluate",
    "train_model",
    "train_models",
    "train_private",
]
