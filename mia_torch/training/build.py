"""Build a model from its config with a seeded initialisation."""
from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from mia_torch.settings import trusted

__all__ = ["build_model", "data_arguments"]


def data_arguments(target: Any, *, input_shape: Sequence[int], num_classes: int) -> dict[str, Any]:
    """The data's ``input_shape`` and ``num_classes`` for those of them that ``target`` accepts.

    The zoo's models take both; a class of your own (``model._target_=my_pkg.MyNet``) gets
    the ones its signature names. A builder that only forwards ``**kwargs`` (as
    torchvision's ``resnet18``) gets ``num_classes``, the one argument such builders share.
    """
    offered = {"input_shape": tuple(input_shape), "num_classes": num_classes}
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):  # no introspectable signature: offer both
        return offered
    named = {name: value for name, value in offered.items() if name in parameters}
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        named.setdefault("num_classes", num_classes)
    return named


def build_model(
    model_cfg: Mapping[str, Any], *, input_shape: Sequence[int], num_classes: int, seed: int
) -> nn.Module:
    """Build the ``model`` config (its ``_target_``, through :func:`mia_torch.settings.trusted.build`) for the
    data's shape, seeded by ``seed``.

    ``input_shape`` and ``num_classes`` are passed when the class takes them (see
    :func:`data_arguments`); values set in the config win. A training-time defense adapts
    the result (:meth:`mia_torch.training.defense.Defense.adapt`).
    """
    target = trusted.resolve_target(model_cfg, kind="model", key="model")
    extra = {k: v for k, v in data_arguments(target, input_shape=input_shape, num_classes=num_classes).items()
             if k not in model_cfg}
    torch.manual_seed(seed)
    return trusted.build(model_cfg, kind="model", key="model", **extra)
