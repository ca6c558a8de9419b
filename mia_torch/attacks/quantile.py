"""Quantile-regression membership inference (Bertran et al., NeurIPS 2023): no reference models.

Reference attacks (LiRA, RMIA) learn how a model scores each record when it did not train
on it from many reference models trained like the target: costly for the models people
most need to audit. Bertran et al. learn it from the record instead: one regression model,
trained on public records the target never saw, predicts from a record (and its class) the
distribution of the target's score on it as a non-member. A member scores higher than its
own prediction. The attack's score is the standardised residual

    z = (s - mu(x, y)) / sigma(x, y),

with ``s`` the target's score (LiRA's log-odds φ, or the hinge: the true-class logit minus
the largest other logit; averaged over the queries) and ``mu``, ``sigma`` the regression's
predicted mean and spread (:mod:`mia_torch.attacks.quantile_models`). Thresholding z at the
standard Gaussian's (1 - α) quantile is the paper's test at false-positive rate α.

It needs only the target: :meth:`QuantileAttack.fit_public` trains the regression on the
public records, :meth:`~QuantileAttack.bind` predicts for the records to score and
:meth:`~QuantileAttack.score` scores the target's output on them. The records the
regression trained on must never be evaluated: the attack stage keeps them apart.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn

from mia_torch.attacks.base import Attack, check_choice, check_number, check_target
from mia_torch.attacks.quantile_models import BoostedQuantiles, NetworkRegressor, ScoreRegressor
from mia_torch.models.mlp import MLP
from mia_torch.signals.stats import logit_scaled_confidence

__all__ = ["QUANTILE_MODELS", "QUANTILE_STATISTICS", "QuantileAttack", "hinge", "split_public"]

#: ``auto``: the target's architecture for images, gradient-boosted trees for tabular records.
QUANTILE_MODELS = ("auto", "target", "mlp", "hgb")
QUANTILE_STATISTICS = ("phi", "hinge")
#: Hidden layers of the ``mlp`` regression model.
MLP_HIDDEN = (256, 128)


def hinge(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other logit, float64 ``logits.shape[:-1]`` (labels broadcast to it)."""
    z = logits.double()
    index = labels.expand(z.shape[:-1]).unsqueeze(-1)
    true = z.gather(-1, index).squeeze(-1)
    return true - z.scatter(-1, index, -torch.inf).amax(-1)


def split_public(nonmembers: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """The sorted ids of a seeded ``fraction`` of ``nonmembers`` (at least one, leaving at least one)."""
    nonmembers = np.asarray(nonmembers)
    if len(nonmembers) < 2:
        raise ValueError(f"the quantile attack needs at least two non-members to split, got {len(nonmembers)}")
    count = min(max(1, round(fraction * len(nonmembers))), len(nonmembers) - 1)
    return np.sort(np.random.default_rng([int(seed), 0x51]).permutation(nonmembers)[:count])


class QuantileAttack(Attack):
    """Bertran et al.'s attack: a regression model of the target's non-member score (see the module docstring).

    Args:
        model: the regression model: ``target`` (the target's architecture with two
            outputs per class), ``mlp``, ``hgb`` (gradient-boosted quantile regression) or
            ``auto`` (``target`` for images, ``hgb`` for tabular records).
        statistic: the target's score it models: ``phi`` (log-odds of the true class) or ``hinge``.
        public: the public non-member records of a study: ``test`` (the dataset's test
            split, which no model trains on), ``nonmembers`` (a seeded ``public_fraction`` of
            each target's non-members, then left out of its evaluation) or ``both``. An audit
            uses ``audit.public`` instead.
        public_fraction: the share of each target's non-members that train the regression.
        ensemble: regression models averaged (as a mixture: its mean and standard deviation).
        epochs, lr, weight_decay, batch_size, patience, validation_fraction: the networks'
            training (Adam, early stopping on the validation share of the public records).
        min_std: floor of the predicted standard deviation.
        seed: seeds the split and the regression models.
    """

    requires_references = False
    reads_records = True

    def __init__(self, model: str = "auto", statistic: str = "phi", public: str = "both", public_fraction: float = 0.5,
                 ensemble: int = 1, epochs: int = 100, lr: float = 1e-3, weight_decay: float = 5e-4,
                 batch_size: int = 128, patience: int = 10, validation_fraction: float = 0.2, min_std: float = 1e-3,
                 seed: int = 0) -> None:
        self.model = check_choice("attack.quantile.model", model, QUANTILE_MODELS)
        self.statistic = check_choice("attack.quantile.statistic", statistic, QUANTILE_STATISTICS)
        self.public = check_choice("attack.quantile.public", public, ("test", "nonmembers", "both"))
        self.public_fraction = check_number("attack.quantile.public_fraction", public_fraction, low=0, high=1,
                                            low_open=True, high_open=True)
        self.ensemble = check_number("attack.quantile.ensemble", ensemble, low=1, integer=True)
        self.epochs = check_number("attack.quantile.epochs", epochs, low=1, integer=True)
        self.lr = check_number("attack.quantile.lr", lr, low=0, low_open=True)
        self.weight_decay = check_number("attack.quantile.weight_decay", weight_decay, low=0)
        self.batch_size = check_number("attack.quantile.batch_size", batch_size, low=2, integer=True)
        self.patience = check_number("attack.quantile.patience", patience, low=1, integer=True)
        self.validation_fraction = check_number("attack.quantile.validation_fraction", validation_fraction, low=0,
                                                high=1, low_open=True, high_open=True)
        self.min_std = check_number("attack.quantile.min_std", min_std, low=0, low_open=True)
        self.seed = check_number("attack.quantile.seed", seed, low=0, integer=True)
        self._regressors: list[ScoreRegressor] = []
        self._prediction: tuple[torch.Tensor, torch.Tensor] | None = None
        self._fitted: dict[str, Any] = {}

    def resolved_model(self, kind: str) -> str:
        """The regression model for data of ``kind`` (``image`` or ``tabular``): ``auto`` resolved."""
        if self.model != "auto":
            return self.model
        return "target" if kind == "image" else "hgb"

    def statistic_of(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The modelled score of served outputs ``[N, Q, C]``: float64 ``[N]``, the mean over queries."""
        logits, labels = check_target(logits, labels)
        if self.statistic == "phi":
            return logit_scaled_confidence(logits, labels[:, None]).mean(-1)
        return hinge(logits, labels[:, None]).mean(-1)

    def _regressor(self, kind: str, num_classes: int, input_shape: tuple[int, ...],
                   network: Callable[[int], nn.Module] | None, seed: int) -> ScoreRegressor:
        model = self.resolved_model(kind)
        if model == "hgb":
            return BoostedQuantiles(seed=seed)
        if model == "mlp":
            network = lambda outputs: MLP(input_shape=input_shape, num_classes=outputs, hidden_sizes=MLP_HIDDEN)  # noqa: E731
        elif network is None:
            raise ValueError("attack.quantile.model=target needs the target's architecture (network builder)")
        return NetworkRegressor(network, num_classes, epochs=self.epochs, lr=self.lr, weight_decay=self.weight_decay,
                                batch_size=self.batch_size, patience=self.patience,
                                validation_fraction=self.validation_fraction, seed=seed)

    def fit_public(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor, *, num_classes: int,
                   kind: str, network: Callable[[int], nn.Module] | None = None,
                   sources: Mapping[str, int] | None = None) -> "QuantileAttack":
        """Train the regression on public non-member ``records`` ``[n, ...]`` of classes ``labels`` ``[n]``, on which
        the target scores ``values`` ``[n]`` (:meth:`statistic_of`). ``kind`` is ``image`` or ``tabular``;
        ``network(outputs)`` builds the target's architecture with ``outputs`` outputs (``model=target``);
        ``sources`` says where the public records came from (how many of each), for the report."""
        values = torch.as_tensor(values, dtype=torch.float64)
        if not (len(records) == len(labels) == len(values)) or len(values) < 4:
            raise ValueError(f"the quantile attack needs at least 4 public records with one label and score each, "
                             f"got {len(records)} records, {len(labels)} labels, {len(values)} scores")
        if not bool(torch.isfinite(values).all()):
            raise ValueError("the target's scores on the public records are not all finite")
        started = time.perf_counter()
        input_shape = tuple(int(v) for v in records.shape[1:])
        self._regressors = [self._regressor(kind, num_classes, input_shape, network, self.seed + 1000 * i)
                            .fit(records, labels, values.to(records.device)) for i in range(self.ensemble)]
        self._prediction = None
        self._fitted = {"regression_model": self.resolved_model(kind), "num_public": int(len(values)),
                        "public_sources": dict(sources or {}), "fit_seconds": round(time.perf_counter() - started, 3)}
        return self

    def predict(self, records: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predicted mean and standard deviation (floored at ``min_std``) of the target's score on ``records``:
        float64 ``[N]`` each; an ensemble's as a mixture of its members' Gaussians."""
        if not self._regressors:
            raise RuntimeError("the quantile attack is not fitted: call fit_public on public records first")
        predictions = [r.predict(records, labels) for r in self._regressors]
        mean = torch.stack([m for m, _ in predictions]).mean(0)
        second = torch.stack([s ** 2 + m ** 2 for m, s in predictions]).mean(0)
        return mean, (second - mean ** 2).clamp(min=0).sqrt().clamp(min=self.min_std)

    def residuals(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """The standardised residuals ``(values - mu) / sigma`` of scores ``values`` ``[n]`` on ``records``: float64
        ``[n]`` (e.g. of held-out public records, whose residuals calibrate p-values)."""
        mean, std = self.predict(records, labels)
        values = torch.as_tensor(values, dtype=torch.float64, device=mean.device)
        return (values - mean) / std

    def bind(self, records: torch.Tensor, labels: torch.Tensor) -> "QuantileAttack":
        """Predict for the records that :meth:`score` will score (row ``i`` of the target's output is record ``i``)."""
        started = time.perf_counter()
        self._prediction = self.predict(records, labels)
        self._fitted["predict_seconds"] = round(time.perf_counter() - started, 3)
        return self

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The standardised residual ``(s - mu) / sigma`` of the target's output ``[N, Q, C]`` on the bound
        records: float64 ``[N]``, higher = member."""
        if self._prediction is None:
            raise RuntimeError("the quantile attack has no records to score: call fit_public, then bind")
        mean, std = self._prediction
        values = self.statistic_of(logits, labels)
        if values.shape != mean.shape:
            raise ValueError(f"the quantile attack was bound to {len(mean)} records but the target's output has "
                             f"{len(values)}")
        return (values - mean.to(values.device)) / std.to(values.device)

    def fitted_params(self) -> dict[str, Any]:
        """The threshold (none) and what the regression was fitted on: model, public records, seconds."""
        return {**super().fitted_params(), **self._fitted}
