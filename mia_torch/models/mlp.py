"""A fully connected network on flattened images or tabular feature vectors."""

from __future__ import annotations

import math
from typing import Sequence

from torch import Tensor, nn

from mia_torch.models.cnn import check_dropout, check_shape

__all__ = ["MLP"]

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class MLP(nn.Module):
    """Flatten, then ``Linear-activation[-Dropout]`` per entry of ``hidden_sizes``, then a linear output.

    ``input_shape`` is ``(C, H, W)`` for images or ``(F,)`` for tabular records.
    ``hidden_sizes=()`` gives multinomial logistic regression. ``activation`` is
    ``"relu"``, ``"gelu"`` or ``"tanh"``. Has no normalisation layers (DP-SGD ready).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        hidden_sizes: Sequence[int] = (256, 128),
        activation: str = "relu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        shape, num_classes = check_shape(input_shape, num_classes, images_only=False)
        sizes = tuple(int(v) for v in hidden_sizes)
        if any(v < 1 for v in sizes):
            raise ValueError(f"model option `hidden_sizes` must be positive integers, got {list(hidden_sizes)}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"model option `activation` must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        dropout = check_dropout(dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        fan_in = math.prod(shape)
        for size in sizes:
            layers += [nn.Linear(fan_in, size), _ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            fan_in = size
        layers.append(nn.Linear(fan_in, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)
