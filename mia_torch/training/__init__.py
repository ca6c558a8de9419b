"""Model training: validated hyperparameters and the device-resident trainer."""

from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import TrainResult, evaluate, train_model

__all__ = ["TrainConfig", "TrainResult", "evaluate", "train_model"]
