"""The ``forget`` keys of the right-to-be-forgotten check (``experiment=forget``)."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mia_torch.audit.config import _check_fpr, _check_ids
from mia_torch.settings.checks import known_keys
from mia_torch.training.unlearning import FORGET_METHODS

__all__ = ["ForgetConfig"]


def _positive(key: str, value: Any, *, integer: bool, optional: bool = False) -> None:
    if optional and value is None:
        return
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{key}={value!r} is invalid: expected {'an integer' if integer else 'a number'} > 0")


@dataclass(frozen=True)
class ForgetConfig:
    """Validated ``forget.*`` keys; the check runs when ``method`` is set.

    ``ids`` (or ``count`` random members of the target) are the records to forget;
    ``method`` removes them (:mod:`mia_torch.training.unlearning`); ``epochs``/``lr`` are the
    fine-tuning (and repair) epochs and learning rate on the retained records (``lr`` null:
    ``train.lr``, the recipe's); ``ascent_epochs``/``ascent_lr`` the gradient-ascent phase
    (``ascent_lr`` null: ``train.lr``); ``checkpoint`` the "after" model of
    ``method=checkpoint``; ``fpr`` the p-value at which a forgotten record still counts as
    flagged.
    """

    method: str | None = None
    ids: Any = None
    count: int = 100
    epochs: int = 5
    lr: float | None = None
    ascent_epochs: int = 1
    ascent_lr: float | None = None
    checkpoint: str | None = None
    fpr: float = 0.01

    @property
    def enabled(self) -> bool:
        """Whether this run is a forget check."""
        return self.method is not None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "ForgetConfig":
        """Validate ``forget.*`` (a missing section means off)."""
        out = cls(**known_keys(values or {}, cls, "forget"))
        if out.method is not None and out.method not in FORGET_METHODS:
            raise ValueError(f"forget.method={out.method!r} is invalid: expected one of {FORGET_METHODS}")
        _check_ids("forget.ids", out.ids)
        _positive("forget.count", out.count, integer=True)
        _positive("forget.epochs", out.epochs, integer=True)
        _positive("forget.ascent_epochs", out.ascent_epochs, integer=True)
        _positive("forget.lr", out.lr, integer=False, optional=True)
        _positive("forget.ascent_lr", out.ascent_lr, integer=False, optional=True)
        _check_fpr("forget.fpr", out.fpr)
        if (out.method == "checkpoint") != (out.checkpoint is not None):
            raise ValueError("forget.method=checkpoint needs forget.checkpoint (the model after removal), and "
                             "forget.checkpoint only applies to forget.method=checkpoint")
        return out
