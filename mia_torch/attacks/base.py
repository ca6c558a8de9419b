"""The shared attack interface and small helpers used by every attack family.

An attack is fitted on the signals of reference (shadow) models, whose training sets
are known through their keep rows, and then scores a target model's signals: one float
per example, higher = more likely a member. Attacks never see the target's membership
and never compute metrics.

Two interfaces, one contract:

* :class:`Attack` reads logits: ``fit(ReferenceSignals)`` with ``logits [R, N, Q, C]`` and
  ``score(logits [N, Q, C], labels)``. A study that runs such an attack builds every
  model's served logits ``[M, N, Q, C]`` in memory and refits it on each target's
  references.
* :class:`~mia_torch.attacks.feature_attack.FeatureAttack` (every built-in attack) declares
  the per-example features it reads (``required_features()``, see
  :mod:`mia_torch.signals.features`), is fitted on the references' features
  (``fit_features(ReferenceFeatures, knobs=None)``) and scores a target's features
  (``score_features``); the study's attack stage reduces each stored model to those
  features once, so it holds ``[M, N, Q]``-sized arrays only. An attack whose fit is a sum
  over reference models also offers ``pool(base)``, from which each target's fit takes the
  target and its twin out (:mod:`mia_torch.stages.attack_runs`). Its ``fit``/``score`` on
  logits come for free, so both kinds run anywhere an :class:`Attack` does (audits,
  forget checks, the DP audit).
"""
from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch

__all__ = [
    "ReferenceSignals",
    "Attack",
    "balanced_accuracy_threshold",
    "roc_auc",
    "sorted_balanced_accuracy_threshold",
    "check_choice",
    "check_number",
    "check_target",
]


#: Candidate thresholds :func:`balanced_accuracy_threshold` scores at a time.
THRESHOLD_CHUNK = 1 << 20


@dataclass(frozen=True)
class ReferenceSignals:
    """Signals of R reference models on the N attacked examples.

    ``logits`` is float ``[R, N, Q, C]`` (R models, N examples, Q augmentation queries,
    C classes; a 3-d ``[R, N, C]`` tensor is read as Q = 1), ``keep`` is bool ``[R, N]``
    with ``keep[r, n]`` true when example n was in reference model r's training set, and
    ``labels`` is int64 ``[N]``. Shapes are checked on construction; all three tensors
    should live on the same device.
    """

    logits: torch.Tensor
    keep: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        logits = self.logits
        if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
            raise TypeError("ReferenceSignals.logits must be a floating-point tensor")
        if logits.dim() == 3:
            logits = logits.unsqueeze(2)
        if logits.dim() != 4:
            raise ValueError(
                f"ReferenceSignals.logits must be [R, N, Q, C], got shape {tuple(self.logits.shape)}"
            )
        keep = torch.as_tensor(self.keep, device=logits.device)
        if keep.dtype != torch.bool:
            if keep.is_floating_point() or not bool(((keep == 0) | (keep == 1)).all()):
                raise ValueError("ReferenceSignals.keep must be boolean (or 0/1 integers)")
            keep = keep.bool()
        labels = torch.as_tensor(self.labels, device=logits.device)
        if labels.is_floating_point():
            raise TypeError("ReferenceSignals.labels must be integers")
        labels = labels.long()
        r, n = logits.shape[:2]
        if tuple(keep.shape) != (r, n):
            raise ValueError(f"ReferenceSignals.keep must be [R, N] = [{r}, {n}], got {tuple(keep.shape)}")
        if tuple(labels.shape) != (n,):
            raise ValueError(f"ReferenceSignals.labels must be [N] = [{n}], got {tuple(labels.shape)}")
        object.__setattr__(self, "logits", logits)
        object.__setattr__(self, "keep", keep)
        object.__setattr__(self, "labels", labels)

    @property
    def num_models(self) -> int:
        """R, the number of reference models."""
        return int(self.logits.shape[0])

    @property
    def num_examples(self) -> int:
        """N, the number of examples."""
        return int(self.logits.shape[1])

    def statistic(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """Apply a per-example statistic ``fn(logits, labels)`` to every model and query: ``[R, N, Q]``."""
        return fn(self.logits, self.labels[None, :, None])


class Attack(ABC):
    """``fit(reference signals) -> score(target logits)``.

    Scores are one float per example, higher = more likely member, on the device of the
    target logits; the built-in attacks return float64, so that the small differences
    between a confident model's outputs on members and non-members survive to the
    metrics (float32 cannot hold e.g. a confidence of 1 - 1e-9). ``threshold`` is an
    optional decision threshold on the score scale (predict member when
    ``score >= threshold``), calibrated on reference models only; ``None`` when the
    attack has none. ``requires_references`` says whether ``fit`` needs at least one
    reference model. ``needs_scores`` says whether the attack reads the served score
    vector (False: it works on the predicted labels alone, so it can run on
    ``output=label``). Every knob ``fit`` chooses from data is chosen on the reference
    models only and reported by :meth:`fitted_params`.
    """

    requires_references: bool = False
    needs_scores: bool = True
    threshold: float | None = None

    @property
    def needs_in_references(self) -> bool:
        """Whether ``fit`` needs references trained on the attacked examples (online attacks: LiRA, RMIA)."""
        return bool(getattr(self, "online", False))

    def fit(self, ref: ReferenceSignals) -> "Attack":
        """Fit the attack on reference signals; the default does nothing and returns ``self``."""
        return self

    @abstractmethod
    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Score the target model's logits ``[N, Q, C]``: float ``[N]``, higher = member."""

    def fitted_params(self) -> dict[str, Any]:
        """What ``fit`` chose from the reference models, as JSON-ready values (for ``results.json``).

        The base reports the decision ``threshold``; attacks with more fitted knobs
        (e.g. RMIA's ``a`` and ``temperature``) extend the dict.
        """
        return {"threshold": None if self.threshold is None else float(self.threshold)}

    def _check_references(self, ref: Any, *, expected: type = ReferenceSignals) -> Any:
        """``ref`` (an ``expected`` instance, or None where the attack needs no references), checked."""
        if ref is None:
            if self.requires_references:
                raise ValueError(f"{type(self).__name__} needs reference models (ref is None)")
            return None
        if not isinstance(ref, expected):
            raise TypeError(f"fit expects a {expected.__name__} instance")
        if self.requires_references and ref.num_models < 1:
            raise ValueError(f"{type(self).__name__} needs at least one reference model, got R = 0")
        return ref

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in sorted(vars(self).items()) if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> Any:
    """Raise ``ValueError`` naming ``name`` and the allowed values unless ``value`` is one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value


def check_number(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    integer: bool = False,
) -> Any:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a finite number in the given range."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
        raise ValueError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    lo_ok = low is None or (value > low if low_open else value >= low)
    hi_ok = high is None or (value < high if high_open else value <= high)
    if not (lo_ok and hi_ok):
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        bracket = ("(" if low_open or low is None else "[") + f"{lo}, {hi}" + (")" if high_open or high is None else "]")
        raise ValueError(f"{name} must be in {bracket}, got {value!r}")
    return value


def check_target(logits: torch.Tensor, labels: torch.Tensor, num_examples: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate target inputs; returns logits ``[N, Q, C]`` (a 2-d ``[N, C]`` input gets Q = 1) and int64 labels ``[N]``."""
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point tensor [N, Q, C]")
    if logits.dim() == 2:
        logits = logits.unsqueeze(1)
    if logits.dim() != 3:
        raise ValueError(f"logits must be [N, Q, C], got shape {tuple(logits.shape)}")
    labels = torch.as_tensor(labels, device=logits.device)
    if labels.is_floating_point():
        raise TypeError("labels must be integers")
    labels = labels.long()
    if tuple(labels.shape) != (logits.shape[0],):
        raise ValueError(f"labels must be [N] = [{logits.shape[0]}], got {tuple(labels.shape)}")
    if num_examples is not None and logits.shape[0] != num_examples:
        raise ValueError(
            f"the attack was fitted on N = {num_examples} examples but the target logits have N = {logits.shape[0]}"
        )
    return logits, labels


def balanced_accuracy_threshold(scores: torch.Tensor, member: torch.Tensor) -> float | None:
    """Score threshold maximizing balanced accuracy of the rule ``score >= threshold``.

    ``scores`` and boolean ``member`` have the same shape (any); non-finite scores are
    ignored. The threshold is one of the observed scores (the lowest score predicted
    member; of several equally good ones, the highest). Returns ``None`` when there are no
    members or no non-members.

    Members' and non-members' scores are sorted apart and every observed score is tried as
    the threshold a chunk at a time (binary search for its true and false positives), so
    the memory beyond the scores is one sorted float64 copy of them, not several.
    """
    s = scores.reshape(-1)
    m = member.reshape(-1).to(device=s.device, dtype=torch.bool)
    ok = torch.isfinite(s)
    pos = torch.sort(s[m & ok].double()).values
    neg = torch.sort(s[~m & ok].double()).values
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        return None
    best_bal, best = -1.0, -math.inf
    for values in (pos, neg):
        for start in range(0, values.numel(), THRESHOLD_CHUNK):
            candidates = values[start:start + THRESHOLD_CHUNK]
            tp = (n_pos - torch.searchsorted(pos, candidates)).double()  # members scored >= the candidate
            fp = (n_neg - torch.searchsorted(neg, candidates)).double()
            bal = 0.5 * (tp / n_pos + 1.0 - fp / n_neg)
            top = float(bal.max())
            if top >= best_bal:
                highest = float(candidates[bal == top].max())
                best = highest if top > best_bal else max(best, highest)
                best_bal = top
    return best


def sorted_balanced_accuracy_threshold(s_sorted: torch.Tensor, m_sorted: torch.Tensor) -> float | None:
    """:func:`balanced_accuracy_threshold` of finite float64 scores already sorted in descending order
    (stably: tied scores in their original order) with their membership ``m_sorted``."""
    n_pos = int(m_sorted.sum())
    n_neg = int(m_sorted.numel() - n_pos)
    if n_pos == 0 or n_neg == 0:
        return None
    tp = torch.cumsum(m_sorted.double(), 0)
    fp = torch.cumsum((~m_sorted).double(), 0)
    bal = 0.5 * (tp / n_pos + 1.0 - fp / n_neg)
    # A cut is only realisable after the last element of a group of tied scores.
    last = torch.ones_like(m_sorted)
    last[:-1] = s_sorted[:-1] != s_sorted[1:]
    bal = torch.where(last, bal, torch.full_like(bal, -1.0))
    return float(s_sorted[int(torch.argmax(bal))])


def roc_auc(scores: torch.Tensor, member: torch.Tensor) -> torch.Tensor:
    """Area under the ROC curve along the last dimension (Mann-Whitney, ties count 1/2).

    ``scores`` ``[..., n]`` and boolean ``member`` of the same shape; returns float64
    ``[...]``. Rows without members or without non-members get 0.5. Used for
    calibration on reference models; reporting uses scikit-learn.
    """
    s = scores.double()
    m = member.to(device=s.device, dtype=torch.bool).broadcast_to(s.shape)
    n = s.shape[-1]
    sorted_s, order = torch.sort(s, dim=-1)
    m_sorted = m.gather(-1, order)
    # Average 1-based rank of each group of tied scores: (first + last position) / 2 + 1.
    pos = torch.arange(n, device=s.device).expand(s.shape)
    new = torch.ones_like(m_sorted)
    new[..., 1:] = sorted_s[..., 1:] != sorted_s[..., :-1]
    last = torch.ones_like(m_sorted)
    last[..., :-1] = new[..., 1:]
    first_pos = torch.where(new, pos, torch.zeros_like(pos)).cummax(-1).values
    last_pos = torch.where(last, pos, torch.full_like(pos, n - 1)).flip(-1).cummin(-1).values.flip(-1)
    rank = 0.5 * (first_pos + last_pos).double() + 1.0
    n_pos = m.double().sum(-1)
    n_neg = (~m).double().sum(-1)
    u = torch.where(m_sorted, rank, torch.zeros_like(rank)).sum(-1) - n_pos * (n_pos + 1.0) / 2.0
    denom = n_pos * n_neg
    return torch.where(denom > 0, u / denom.clamp(min=1.0), torch.full_like(u, 0.5))
