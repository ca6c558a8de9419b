"""The shipped training recipes learn on data available offline."""

import torch
from omegaconf import OmegaConf

from helpers import CONFIG_DIR
from mia_torch.data.datasets import load_dataset
from mia_torch.models import FastCifarCNN
from mia_torch.training import TrainConfig, train_model


def recipe(name: str) -> TrainConfig:
    values = OmegaConf.to_container(OmegaConf.load(CONFIG_DIR / "train" / f"{name}.yaml"))
    values.pop("defaults", None)
    return TrainConfig.from_mapping(values)


def test_fast_cifar_cnn_with_its_recipe_learns_digits():
    data = load_dataset("digits", root=None, seed=0)
    torch.manual_seed(0)
    model = FastCifarCNN(input_shape=data.input_shape, num_classes=data.num_classes)
    result = train_model(model, data.x, data.y, torch.arange(len(data.y)), recipe("cifar_fast"), seed=0,
                         x_test=data.x_test, y_test=data.y_test)
    losses = result.metrics["epoch_train_loss"]
    assert losses[-1] < losses[0] / 2
    assert result.metrics["test_acc"] > 0.9
