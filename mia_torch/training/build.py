"""Build a model from its config with a seeded initialisation."""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import hydra
import torch
from torch import nn

from mia_torch.training.dp import make_private_compatible

__all__ = ["build_model"]


def build_model(
    model_cfg: Mapping[str, Any], *, input_shape: Sequence[int], num_classes: int, seed: int, private: bool = False
) -> nn.Module:
    """Instantiate the ``model`` config (its ``_target_``) for the data's shape, seeded by ``seed``.

    ``private`` (a DP-SGD-trained model) makes it DP-compatible (GroupNorm for BatchNorm),
    both to train it and to rebuild it for loading its saved weights.
    """
    torch.manual_seed(seed)
    model = hydra.utils.instantiate(model_cfg, input_shape=tuple(input_shape), num_classes=num_classes)
    return make_private_compatible(model) if private else model
