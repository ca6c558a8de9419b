"""Training-time defenses: what the ``defense`` config group builds (its ``_target_``).

A :class:`Defense` says which models it applies to (``apply_to``: all of them, as an
attacker who knows the recipe would train its references, or only the targets), how those
models are built (:meth:`Defense.adapt`) and trained (:meth:`Defense.train`, one model at a
time), which training options it refuses (:meth:`Defense.check_training`) and what, beyond
the recipe, determines a model it trained (:meth:`Defense.key`, part of the model's store
key). Models it does not apply to train with the plain trainer, several at once.

Shipped: ``defense=none`` (:class:`NoDefense`, the default) and ``defense=dpsgd``
(:class:`mia_torch.training.dp.DPSGD`). A defense of your own is a dataclass subclass whose
fields are its config keys; see the README's *Extending*.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch
from torch import nn

from mia_torch.settings.checks import check_values
from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import TrainResult, train_model

__all__ = ["APPLY_TO", "Defense", "NoDefense"]

#: ``defense.apply_to``: every model (targets and references) or only the targets.
APPLY_TO = ("all", "target")


@dataclass(frozen=True, kw_only=True)
class Defense:
    """A training-time defense; its dataclass fields are the ``defense`` config keys.

    ``name`` labels it in the summary and the sweep tables (default: the class name).
    Override :meth:`train` (and, where needed, :meth:`adapt`, :meth:`check_training`,
    :meth:`key` and :meth:`delta_for`); the defaults train like no defense.
    """

    name: str | None = None
    apply_to: str = "all"

    def __post_init__(self) -> None:
        check_values(self, "defense", [(self.apply_to in APPLY_TO, "apply_to", f"one of {APPLY_TO}")])

    def applies_to(self, index: int, target_ids: Sequence[int]) -> bool:
        """Whether model ``index`` trains under this defense (all models, or with ``apply_to=target`` the targets)."""
        return self.apply_to == "all" or index in target_ids

    def adapt(self, model: nn.Module) -> nn.Module:
        """The architecture it trains ``model`` as (also when a trained model is rebuilt to load its weights)."""
        return model

    def check_training(self, train: TrainConfig) -> None:
        """Refuse ``train`` options the defense cannot honour (raise ``ValueError`` naming the key)."""

    def train(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, member_idx: torch.Tensor, cfg: TrainConfig,
              *, seed: int, val_idx: torch.Tensor | None = None, x_test: torch.Tensor | None = None,
              y_test: torch.Tensor | None = None) -> TrainResult:
        """Train ``model`` (built by :meth:`adapt`) in place on ``x[member_idx]``, as
        :func:`mia_torch.training.trainer.train_model` does (which is the default), and return its metrics."""
        return train_model(model, x, y, member_idx, cfg, seed=seed, val_idx=val_idx, x_test=x_test, y_test=y_test)

    def key(self, population: int) -> dict[str, Any]:
        """What determines a model it trained beyond the recipe (in its store key): its class and every field
        but ``apply_to``, which only says which models it trains. ``population`` is the population's size."""
        values = asdict(self)
        values.pop("apply_to")
        return {"defense": f"{type(self).__module__}.{type(self).__qualname__}", **values}

    def delta_for(self, population: int) -> float:
        """The δ at which the report bounds ε empirically: 1 / population unless the defense sets one."""
        return 1.0 / population


@dataclass(frozen=True, kw_only=True)
class NoDefense(Defense):
    """``defense=none``: every model trains with the plain recipe (regularization lives in ``train.*``)."""

    name: str | None = "none"

    def applies_to(self, index: int, target_ids: Sequence[int]) -> bool:
        """Never: no model trains under a defense."""
        return False
