"""Structured-config schemas registered with Hydra's ConfigStore (typed, named keys)."""

from hydra.core.config_store import ConfigStore

from mia_torch.training.config import TrainConfig


def register_configs() -> None:
    """Register ``train/base`` so every ``train`` option is type-checked by Hydra."""
    ConfigStore.instance().store(group="train", name="base", node=TrainConfig)
