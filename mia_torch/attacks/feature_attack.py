"""Attacks that read per-example features of the served outputs instead of the logits.

A :class:`FeatureAttack` declares the features it reads (:meth:`~FeatureAttack.required_features`,
see :mod:`mia_torch.signals.features`); the signals stage reduces every model's stored
logits to them once, so a study holds ``[M, N, Q]``-sized arrays, never ``[M, N, Q, C]``.
It is fitted on the features of its reference models (:class:`ReferenceFeatures`) and
scores a target's features; the logits interface of :class:`~mia_torch.attacks.base.Attack`
(``fit(ReferenceSignals)``, ``score(logits, labels)``) keeps working: it computes the
features from the logits and calls the same code.

Attacks whose fit is a sum over reference models also offer a :class:`Pool`: sums over
all models of a study, computed once, from which the fit on any subset (a target's
references: all models but the target and its twin) follows by subtracting the left-out
models' terms, equal to a fit from scratch up to rounding.

``knobs`` are what an attack chooses on data besides its sums (the decision threshold,
RMIA's ``a`` and temperature): :meth:`FeatureAttack.fitted_params` of a fit. Passing them
to a fit skips choosing them, e.g. to use knobs calibrated on other reference models.
"""
from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from mia_torch.attacks.base import Attack, ReferenceSignals, check_target
from mia_torch.signals.features import Feature, compute_features, unique

__all__ = ["FeatureAttack", "Knobs", "Pool", "ReferenceFeatures", "positions_without"]

Knobs = Mapping[str, Any]
#: Elements of float64 temporaries per chunk when a fit walks over the reference models.
CHUNK_ELEMENTS = 1 << 21


def positions_without(num_models: int, removed: Sequence[int], device: torch.device | str) -> torch.Tensor:
    """Positions ``0 .. num_models - 1`` except ``removed``, in order: int64 on ``device``."""
    gone = set(removed)
    return torch.tensor([m for m in range(num_models) if m not in gone], dtype=torch.long, device=device)


@dataclass(frozen=True)
class ReferenceFeatures:
    """Features of R reference models on the N attacked examples, read from a table of B >= R models.

    ``features[name]`` is ``[B, N, ...]`` (the table's models), ``keep`` bool ``[B, N]``
    (training membership), ``labels`` int64 ``[N]``, ``num_classes`` the C of the served
    outputs, and ``rows`` the positions (int64 ``[R]``) of the reference models among the B
    (None: all of them). Nothing is copied until :meth:`take` gathers reference models.
    """

    features: Mapping[str, torch.Tensor]
    keep: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    rows: torch.Tensor | None = None

    @classmethod
    def from_signals(cls, ref: ReferenceSignals, features: Sequence[Feature]) -> ReferenceFeatures:
        """The ``features`` of reference signals ``ref`` (logits ``[R, N, Q, C]``), one model at a time."""
        names = unique(features)
        if len(ref.logits) == 0:  # no reference model (an attack that needs none): [0, N, ...] of the right shape
            blank = compute_features(ref.logits.new_zeros(ref.logits.shape[1:]), ref.labels, features)
            return cls({name: blank[name][None][:0] for name in names}, ref.keep, ref.labels,
                       int(ref.logits.shape[-1]))
        per_model = [compute_features(z, ref.labels, features) for z in ref.logits]
        stacked = {name: torch.stack([f[name] for f in per_model]) for name in names}
        return cls(stacked, ref.keep, ref.labels, int(ref.logits.shape[-1]))

    @property
    def num_models(self) -> int:
        """R, the number of reference models."""
        return int(self.keep.shape[0] if self.rows is None else self.rows.numel())

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return int(self.keep.shape[1])

    def _base(self, which: torch.Tensor | slice | None) -> torch.Tensor | slice:
        if self.rows is None:
            return slice(None) if which is None else which
        return self.rows if which is None else self.rows[which]

    def take_entries(self, name: str, which: torch.Tensor, examples: torch.Tensor) -> torch.Tensor:
        """Feature ``name`` of single entries: reference model ``which[i]`` (position among the R) on example
        ``examples[i]``: ``[k, ...]``."""
        models = which if self.rows is None else self.rows[which]
        return self.features[name][models, examples]

    def take(self, name: str, which: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Feature ``name`` of reference models ``which`` (positions among the R; None: all): ``[k, N, ...]``."""
        return self.features[name][self._base(which)]

    def keep_of(self, which: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Membership rows of reference models ``which``: bool ``[k, N]``."""
        return self.keep[self._base(which)]

    def subset(self, which: torch.Tensor) -> ReferenceFeatures:
        """The references ``which`` (positions among the R) only."""
        base = self._base(which)
        rows = torch.arange(self.keep.shape[0], device=self.keep.device)[base]
        return ReferenceFeatures(self.features, self.keep, self.labels, self.num_classes, rows)

    def without(self, removed: Sequence[int]) -> ReferenceFeatures:
        """Every reference but ``removed`` (positions among the R)."""
        return self.subset(positions_without(self.num_models, removed, self.keep.device))

    def chunks(self, per_model: int, *, max_elements: int = CHUNK_ELEMENTS) -> Iterator[slice]:
        """Consecutive slices of the R reference models, each holding at most ``max_elements`` of
        ``per_model`` elements per model (at least one model)."""
        step = max(1, max_elements // max(1, per_model))
        for start in range(0, self.num_models, step):
            yield slice(start, min(self.num_models, start + step))


class Pool(Protocol):
    """An attack's sums over the B models of a table, from which any subset's fit follows."""

    def fit(self, removed: Sequence[int], *, knobs: Knobs | None = None) -> FeatureAttack:
        """A copy of the attack fitted on the table's models except positions ``removed``
        (with ``knobs`` when given, else knobs chosen on those models)."""


class FeatureAttack(Attack):
    """An attack computed from per-example features; see the module docstring.

    Subclasses implement :meth:`features`, :meth:`fit_features` and :meth:`score_features`,
    and :meth:`pool` when their fit is a sum over reference models.
    """

    @abstractmethod
    def required_features(self) -> tuple[Feature, ...]:
        """The features this attack reads, for references and targets alike."""

    @abstractmethod
    def fit_features(self, ref: ReferenceFeatures | None, *, knobs: Knobs | None = None) -> FeatureAttack:
        """Fit on the references' features (never a target's); ``knobs``: use these instead of choosing them."""

    @abstractmethod
    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Scores float64 ``[N]`` of a target from its features ``{name: [N, ...]}``, higher = member."""

    @property
    def calibrates(self) -> bool:
        """Whether the fit chooses knobs on the references (then :meth:`fit_features` also takes them)."""
        return True

    def pool(self, base: ReferenceFeatures) -> Pool | None:
        """Sums over every model of ``base`` (see :class:`Pool`); None when the fit is no such sum (refit instead)."""
        return None

    def fit(self, ref: ReferenceSignals | None = None) -> FeatureAttack:
        """Fit on reference signals (logits): their features, then :meth:`fit_features`."""
        ref = self._check_references(ref)
        return self.fit_features(None if ref is None else ReferenceFeatures.from_signals(ref, self.required_features()))

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scores float64 ``[N]`` of a target's logits ``[N, Q, C]``: its features, then :meth:`score_features`."""
        logits, labels = check_target(logits, labels)
        return self.score_features(compute_features(logits, labels, self.required_features()), labels)

    def _as_features(self, ref: ReferenceSignals | ReferenceFeatures) -> ReferenceFeatures:
        """``ref`` as features (computed from the logits of reference signals)."""
        return ReferenceFeatures.from_signals(ref, self.required_features()) if isinstance(ref, ReferenceSignals) else ref

    def _check_features(self, ref: ReferenceFeatures | None) -> ReferenceFeatures | None:
        """``ref`` after the checks :meth:`Attack._check_references` makes on reference signals."""
        return self._check_references(ref, expected=ReferenceFeatures)


def check_examples(target: Mapping[str, torch.Tensor], name: str, num_examples: int | None) -> torch.Tensor:
    """Target feature ``name``, checked against the N the attack was fitted on."""
    value = target[name]
    if num_examples is not None and value.shape[0] != num_examples:
        raise ValueError(
            f"the attack was fitted on N = {num_examples} examples but the target logits have N = {value.shape[0]}"
        )
    return value
