"""Gradient canaries: Dirac gradients added to DP-SGD's clipped batch gradient (white-box DP auditing).

A gradient canary is a gradient of norm ``max_grad_norm`` in one coordinate of the
model's trainable parameters (a Dirac canary, Steinke, Nasr & Jagielski 2023, Section 7).
An included canary is treated as one more training record: each DP-SGD step samples it
with the run's Poisson rate and adds its gradient to the sum of clipped per-example
gradients, whose noise covers it as it covers every record. It is added through Opacus'
step hook (:func:`mia_torch.training.dp.train_private`'s ``step_hooks``), after the noise
and the division by the expected batch size, which is the same as adding it before them.
Its membership score is how far training moved its coordinate against it:
``initial - final`` (the update's dot product with the canary direction, negated).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["canary_step_hook", "flat_parameters", "num_trainable", "trainable"]


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """The parameters a canary coordinate indexes into, in order (flattened and concatenated)."""
    return [p for p in model.parameters() if p.requires_grad]


def num_trainable(model: nn.Module) -> int:
    """How many coordinates the trainable parameters have."""
    return sum(p.numel() for p in trainable(model))


def flat_parameters(model: nn.Module) -> torch.Tensor:
    """The trainable parameters as one float64 vector on the CPU (a copy)."""
    return torch.cat([p.detach().reshape(-1).double().cpu() for p in trainable(model)])


def canary_step_hook(params: Sequence[nn.Parameter], coordinates: np.ndarray, *, max_grad_norm: float,
                     sample_rate: float, seed: int) -> Callable[[Any], None]:
    """An Opacus step hook that adds the included canaries at flat ``coordinates`` of ``params``.

    At each step every canary is drawn independently with probability ``sample_rate`` (from
    its own seeded generator, so the training's own randomness is untouched) and adds
    ``max_grad_norm / expected batch size`` to its coordinate of the already scaled noisy
    gradient; no host synchronisation.
    """
    device = params[0].device
    sizes = np.cumsum([0] + [p.numel() for p in params])
    coordinates = np.asarray(coordinates, dtype=np.int64)
    if coordinates.size and (coordinates.min() < 0 or coordinates.max() >= sizes[-1]):
        raise ValueError(f"canary coordinates must lie in [0, {sizes[-1]}) (the trainable parameters)")
    owner = np.searchsorted(sizes, coordinates, side="right") - 1
    groups = [(params[i], torch.from_numpy(coordinates[owner == i] - sizes[i]).to(device))
              for i in np.unique(owner)]
    generator = torch.Generator(device=device).manual_seed(int(seed))

    def hook(optimizer: Any) -> None:
        scale = max_grad_norm / optimizer.expected_batch_size if optimizer.loss_reduction == "mean" else max_grad_norm
        drawn = (torch.rand(len(coordinates), generator=generator, device=device) < sample_rate).double() * scale
        start = 0
        for param, idx in groups:
            param.grad.view(-1).index_add_(0, idx, drawn[start:start + len(idx)].to(param.grad.dtype))
            start += len(idx)

    return hook
