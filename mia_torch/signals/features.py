"""Per-example features of one model's served output: what the attacks consume instead of logits.

A :class:`Feature` reduces a model's served output ``[n, Q, C]`` (a chunk of examples at a
time) to a small array per example, e.g. LiRA's φ per query ``[n, Q]`` or a threshold
attack's query-averaged score ``[n]``. The signals stage computes every feature the
configured attacks declare, model by model, so memory holds ``[M, N, Q]``-sized arrays
instead of the ``[M, N, Q, C]`` logits. Every feature is computed exactly as the attacks
computed it from logits (float64, from the forms of :mod:`mia_torch.signals.stats`), so the
scores do not depend on which path produced them.

Built-in features (names are unique, so two attacks that read the same feature share it):

* ``phi``: φ per query, float64 ``[n, Q]`` (LiRA);
* ``score:<statistic>``: a threshold statistic's signed, query-averaged score, float64
  ``[n]`` (:data:`~mia_torch.signals.stats.STATISTICS`; the threshold and population attacks);
* ``probability_logit:T=<t>``: log-odds of the true-class probability at temperature t
  averaged over queries, float64 ``[n]`` (RMIA, one per temperature it may use);
* ``correct``: whether the predicted label is the true one, bool ``[n, Q]`` (label-only, gap);
* ``sorted:<logit|probability>:top_k=<k>``: the sorted query-averaged probability vector,
  float64 ``[n, K]`` (the Shokri attack network; K = top_k or C).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import torch

from mia_torch.signals.stats import (
    STATISTICS,
    log_softmax,
    logit_mean_probability,
    logit_scaled_confidence,
    probability_logits,
)

__all__ = [
    "Feature",
    "ServedChunk",
    "compute_features",
    "correct_feature",
    "correct_queries",
    "phi_feature",
    "probability_logit_feature",
    "sorted_probability_feature",
    "statistic_feature",
]

class ServedChunk:
    """Served output ``logits [..., n, Q, C]`` of one model (or a stack of models) on a chunk of examples with
    ``labels [n]``; φ is computed once per temperature, whichever features ask for it."""

    def __init__(self, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.logits = logits
        self.labels = labels[:, None]  # broadcasts over the queries (and any leading model dimension)
        self._phi: dict[float, torch.Tensor] = {}

    def phi(self, temperature: float = 1.0) -> torch.Tensor:
        """φ of the softmax at ``temperature``, float64 ``[..., n, Q]``."""
        if temperature not in self._phi:
            self._phi[temperature] = logit_scaled_confidence(self.logits, self.labels, temperature=temperature)
        return self._phi[temperature]


@dataclass(frozen=True)
class Feature:
    """A named per-example feature: ``compute(chunk)`` gives ``[n, ...]`` of ``dtype`` for a :class:`ServedChunk`."""

    name: str
    compute: Callable[[ServedChunk], torch.Tensor]
    dtype: torch.dtype = torch.float64


def phi_feature() -> Feature:
    """LiRA's statistic φ per query."""
    return Feature("phi", lambda chunk: chunk.phi())


def statistic_feature(statistic: str) -> Feature:
    """The signed, query-averaged score of a threshold statistic (``STATISTICS[statistic].score``); a function
    of φ is computed from the chunk's φ, shared with the other features."""
    stat = STATISTICS[statistic]

    def compute(chunk: ServedChunk) -> torch.Tensor:
        if stat.from_phi is None:
            return stat.score(chunk.logits, chunk.labels)
        return stat.score_from_phi(chunk.phi())

    return Feature(f"score:{statistic}", compute)


def probability_logit_feature(temperature: float) -> Feature:
    """Log-odds of the true-class probability at ``temperature``, averaged over the queries (RMIA)."""
    return Feature(f"probability_logit:T={temperature:g}",
                   lambda chunk: logit_mean_probability(chunk.phi(temperature), dim=-1))


def correct_queries(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether the predicted label (arg-max) is the true one: bool ``[..., N, Q]`` from ``[..., N, Q, C]``.

    ``labels`` must broadcast to ``logits.shape[:-1]``.
    """
    return logits.argmax(-1) == labels


def correct_feature() -> Feature:
    """Whether the arg-max of each query's served output is the true label."""
    return Feature("correct", lambda chunk: correct_queries(chunk.logits, chunk.labels), torch.bool)


def sorted_probability_feature(kind: str, top_k: int | None) -> Feature:
    """The query-averaged probability vector sorted in descending order, as log-odds (``kind="logit"``) or
    probabilities, cut to its ``top_k`` largest entries (the Shokri attack network's input)."""

    def compute(chunk: ServedChunk) -> torch.Tensor:
        if kind == "logit":
            mean = logit_mean_probability(probability_logits(chunk.logits), dim=-2)
        else:
            mean = log_softmax(chunk.logits).exp().mean(-2)
        ordered = torch.sort(mean, dim=-1, descending=True).values
        return ordered if top_k is None else ordered[..., :top_k]

    return Feature(f"sorted:{kind}:top_k={top_k}", compute)


def compute_features(logits: torch.Tensor, labels: torch.Tensor, features: Iterable[Feature]) -> dict[str, torch.Tensor]:
    """Every feature of served outputs ``logits [..., N, Q, C]`` (one model, or a stack of models) with
    ``labels [N]``: ``{name: [..., N, ...]}`` on the logits' device."""
    chunk = ServedChunk(logits, labels.to(logits.device).long())
    return {f.name: f.compute(chunk).to(f.dtype) for f in unique(features).values()}


def unique(features: Iterable[Feature]) -> Mapping[str, Feature]:
    """The features by name, each once (the first of several with one name)."""
    out: dict[str, Feature] = {}
    for feature in features:
        out.setdefault(feature.name, feature)
    return out
