"""Regression models for the quantile attack: a record's non-member score distribution from the record alone.

Each model learns, from public records the target never trained on, the mean and spread of
the target's score on a record given the record and its class, and predicts them for any
record. Two families:

* :class:`NetworkRegressor`: a torch network with two outputs per class (mean and log
  standard deviation of the score given the class), trained with the Gaussian negative
  log-likelihood (Adam, early stopping on a validation split of the public records). The
  network is the target's own architecture (``model=target``) or an MLP (``model=mlp``).
* :class:`BoostedQuantiles`: scikit-learn's HistGradientBoostingRegressor with the quantile
  (pinball) loss at the median and at the 15.9% and 84.1% quantiles (±1 standard deviation
  of a Gaussian), on the features the blind baseline reads (the class label as a
  categorical feature): mean = median, spread = half the distance between the two.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from mia_torch.attacks.blind import record_features, torch_threads

__all__ = ["BoostedQuantiles", "NetworkRegressor", "ScoreRegressor"]

#: Log standard deviations are clamped to this range (in units of the public scores' spread).
_LOG_STD_RANGE = (-7.0, 7.0)
#: Quantiles of a standard Gaussian at -1 and +1 standard deviation.
_ONE_SIGMA = (0.5 * math.erfc(1 / math.sqrt(2)), 1 - 0.5 * math.erfc(1 / math.sqrt(2)))


class ScoreRegressor(Protocol):
    """Predicts the mean and standard deviation of the target's score on a record of a given class."""

    def fit(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> "ScoreRegressor":
        """Fit on public records ``[n, ...]``, their classes ``[n]`` and the target's scores ``[n]``."""

    def predict(self, records: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation (float64 ``[N]``) of the score on each record."""


class NetworkRegressor:
    """A network with ``2 * num_classes`` outputs trained with the Gaussian NLL (see the module docstring).

    ``build(outputs)`` returns a fresh network with ``outputs`` outputs. Training: Adam at
    ``lr`` with ``weight_decay``, batches of ``batch_size``, at most ``epochs`` epochs, stopped
    when the validation NLL (on ``validation_fraction`` of the public records) has not
    improved for ``patience`` epochs; the best epoch's weights are kept.
    """

    def __init__(self, build: Callable[[int], nn.Module], num_classes: int, *, epochs: int, lr: float,
                 weight_decay: float, batch_size: int, patience: int, validation_fraction: float, seed: int) -> None:
        self.build, self.num_classes = build, num_classes
        self.epochs, self.lr, self.weight_decay = epochs, lr, weight_decay
        self.batch_size, self.patience, self.validation_fraction, self.seed = batch_size, patience, validation_fraction, seed
        self.network: nn.Module | None = None
        self.epochs_run = 0
        self._scale = (0.0, 1.0)

    def _outputs(self, records: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.network(records).float().view(len(records), self.num_classes, 2)
        picked = out[torch.arange(len(records), device=out.device), labels]
        return picked[:, 0], picked[:, 1].clamp(*_LOG_STD_RANGE)

    def _nll(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        mean, log_std = self._outputs(records, labels)
        return (0.5 * ((values - mean) * torch.exp(-log_std)) ** 2 + log_std).mean()

    def fit(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> "NetworkRegressor":
        """Train on the public records (see the class docstring)."""
        device = records.device
        center, spread = float(values.mean()), float(values.std()) or 1.0
        self._scale = (center, spread)
        target = ((values.double() - center) / spread).float().to(device)
        labels = labels.to(device)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(values), generator=generator).to(device)
        num_val = min(max(1, round(self.validation_fraction * len(values))), len(values) - 1)
        val, train = order[:num_val], order[num_val:]
        torch.manual_seed(self.seed)
        self.network = self.build(2 * self.num_classes).to(device)
        optimizer = torch.optim.Adam(self.network.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        best, best_state, waited = math.inf, None, 0
        for epoch in range(self.epochs):
            self.network.train()
            shuffled = train[torch.randperm(len(train), generator=generator).to(device)]
            for batch in shuffled.split(self.batch_size):
                if len(batch) < 2 and len(train) >= 2:  # batch norm needs two records
                    continue
                optimizer.zero_grad(set_to_none=True)
                self._nll(records[batch], labels[batch], target[batch]).backward()
                optimizer.step()
            self.network.eval()
            with torch.no_grad():
                loss = float(self._nll(records[val], labels[val], target[val]))
            self.epochs_run = epoch + 1
            if loss < best - 1e-4:
                best, waited = loss, 0
                best_state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}
            else:
                waited += 1
                if waited >= self.patience:
                    break
        if best_state is not None:
            self.network.load_state_dict(best_state)
        self.network.eval()
        return self

    @torch.no_grad()
    def predict(self, records: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and standard deviation of the score on each record, float64 ``[N]`` on the records' device."""
        if self.network is None:
            raise RuntimeError("NetworkRegressor.predict before fit")
        labels = labels.to(records.device)
        parts = [self._outputs(records[i:i + batch_size], labels[i:i + batch_size])
                 for i in range(0, len(records), batch_size)]
        center, spread = self._scale
        mean = torch.cat([m for m, _ in parts]).double() * spread + center
        return mean, torch.cat([s for _, s in parts]).double().exp() * spread


class BoostedQuantiles:
    """Gradient-boosted quantile regression at the median and ±1 standard deviation (see the module docstring)."""

    def __init__(self, *, image_size: int = 8, seed: int = 0) -> None:
        self.image_size, self.seed = image_size, seed
        self.models: dict[float, Any] = {}  # quantile level -> fitted HistGradientBoostingRegressor

    def _features(self, records: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
        return record_features(records, labels, image_size=self.image_size)

    def fit(self, records: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> "BoostedQuantiles":
        """Fit one quantile regressor per level on the public records."""
        from sklearn.ensemble import HistGradientBoostingRegressor  # scikit-learn loads when the regression fits

        features = self._features(records, labels)
        label = [features.shape[1] - 1] if features[:, -1].max() < 255 else None  # HGB's categories must be < 255
        target = values.detach().cpu().double().numpy()
        with torch_threads():
            self.models = {q: HistGradientBoostingRegressor(loss="quantile", quantile=q, categorical_features=label,
                                                            random_state=self.seed).fit(features, target)
                           for q in (_ONE_SIGMA[0], 0.5, _ONE_SIGMA[1])}
        return self

    def predict(self, records: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Median and half the ±1 standard deviation quantile distance, float64 ``[N]`` on the records' device."""
        if not self.models:
            raise RuntimeError("BoostedQuantiles.predict before fit")
        features = self._features(records, labels)
        with torch_threads():
            low, median, high = (torch.from_numpy(self.models[q].predict(features)) for q in sorted(self.models))
        return median.to(records.device), ((high - low) / 2).to(records.device)
