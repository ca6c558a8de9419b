"""Label-only attacks: membership from whether the predicted label is correct.

Both attacks read only the arg-max of the served output, so they run on ``output=label``
as well as on full logits or probabilities.

* ``gap`` — Yeom et al. (2018)'s baseline: member if the prediction on one query (the
  first, ``identity`` in the default ``queries``) is correct. Scores are 0 or 1; the
  threshold is 1 ("correct = member").
* ``label_only`` — Choquette-Choo et al. (2021), "Label-Only Membership Inference
  Attacks": a training example's label tends to stay correct under small augmentations
  (flips, pixel shifts), a non-member's less so. The statistic is the count
  ``k in 0..Q`` of queries whose predicted label is correct. It is calibrated per example
  on the reference models, LiRA-style.

Calibration. For example n, the IN (OUT) reference models give a handful of counts (a
typical study has 5-30 per group and example). A histogram over Q + 1 values from so few
counts is mostly empty, so, as LiRA fits a Gaussian with a per-example mean and a pooled
variance, each group's counts are modelled by a beta-binomial distribution with a
per-example mean and a pooled dispersion (a count of Q queries that each model gets right
with its own probability p, p ~ Beta across models):

* mean: ``mu_n = (t_n + alpha * Q * mu) / (Q * (r_n + alpha))``, with ``t_n`` the group's
  total correct queries on n over its ``r_n`` models, shrunk towards the group's pooled
  mean ``mu`` (add-one smoothed) with a weight of ``alpha`` (``prior_strength``) models, so
  it stays inside (0, 1) and every score is finite;
* dispersion: the intra-model correlation ``rho`` from the method of moments, pooled over
  examples: ``Var K = Q mu (1 - mu) (1 + (Q - 1) rho)``; pooled within-example variance
  below binomial (queries of unequal difficulty) gives ``rho`` at its floor, i.e. binomial.

On synthetic counts with a known per-example structure (tests/test_label_only.py) this comes
within about 0.01 of the Bayes-optimal AUC with 8 or more references; a Dirichlet-smoothed
per-example histogram (the nonparametric alternative) lost 0.03-0.05 there and about two
thirds of the TPR at 1% FPR.

* online: score = log P_in(k | n) - log P_out(k | n), the likelihood ratio of the target's
  count. An example that OUT models often get wrong but the target gets right under every
  query scores high; one every model gets right scores about 0.
* offline (OUT references only): score = -log of the one-sided mid-p-value
  ``P_out(K > k | n) + P_out(K = k | n) / 2``: how surprisingly robust the target's label
  is for a model that did not train on n (the discrete counterpart of LiRA offline).

Online scoring with no IN observation at all falls back to the offline score (with a
warning). ``fit`` calibrates ``threshold`` (max balanced accuracy) by leave-one-out, each
reference model scored against the others, in closed form (needs R >= 2).

With a single query the count is 0 or 1 and the attack is a per-example calibrated gap
attack; ``fit`` warns. Recommended queries (flips and 1-pixel shifts)::

    queries=[identity,flip,shift_1_0,shift_-1_0,shift_0_1,shift_0_-1,flip_shift_1_0,flip_shift_-1_0]
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from mia_torch.attacks.base import ReferenceSignals, balanced_accuracy_threshold, check_choice, check_number
from mia_torch.attacks.feature_attack import (
    CHUNK_ELEMENTS, FeatureAttack, Knobs, ReferenceFeatures, check_examples, positions_without,
)
from mia_torch.signals.features import Feature, correct_feature, correct_queries

__all__ = ["GapAttack", "LabelOnlyAttack", "RECOMMENDED_QUERIES", "correct_counts"]

RECOMMENDED_QUERIES = (
    "identity", "flip", "shift_1_0", "shift_-1_0", "shift_0_1", "shift_0_-1", "flip_shift_1_0", "flip_shift_-1_0",
)


def correct_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of queries with a correct predicted label: int64 ``[..., N]`` from ``[..., N, Q, C]``."""
    return correct_queries(logits, labels).sum(-1)


class GapAttack(FeatureAttack):
    """Yeom et al.'s gap attack: score 1 if the label predicted on query ``query`` is correct, else 0.

    Args:
        query: index of the query used (default 0, ``identity`` in the default ``queries``).
    """

    requires_references = False
    needs_scores = False

    def __init__(self, query: int = 0) -> None:
        self.query = int(check_number("query", query, low=0, integer=True))
        self.threshold = 1.0

    def required_features(self) -> tuple[Feature, ...]:
        """Whether each query's predicted label is correct."""
        return (correct_feature(),)

    def fit_features(self, ref: ReferenceFeatures | None = None, *, knobs: Knobs | None = None) -> GapAttack:
        """Nothing to fit: the threshold is 1 ("correct = member")."""
        return self

    @property
    def calibrates(self) -> bool:
        """Nothing is chosen on the references."""
        return False

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target scores in {0, 1}, float64 ``[N]``, higher = member."""
        correct = target["correct"]
        if self.query >= correct.shape[1]:
            raise ValueError(f"query={self.query} is out of range: the signals have {correct.shape[1]} queries")
        return correct[:, self.query].to(torch.float64)


_RHO_MIN, _RHO_MAX = 1e-6, 1.0 - 1e-6


def _sums(counts: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Models ``r``, total count ``t`` and centred sum of squares ``ss`` per example, ``[N]`` each."""
    r = weight.sum(0)
    t = (weight * counts).sum(0)
    mean = t / r.clamp(min=1.0)
    ss = (weight * (counts - mean) ** 2).sum(0)
    return r, t, ss


def _leave_one_out(
    counts: torch.Tensor, weight: torch.Tensor, r: torch.Tensor, t: torch.Tensor, ss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The sums of :func:`_sums` without model i, for every i at once: ``[R, N]`` each."""
    r_i = r - weight
    t_i = t - weight * counts
    mean, mean_i = t / r.clamp(min=1.0), t_i / r_i.clamp(min=1.0)
    # Removing x from a group with mean m (new mean m'): SS' = SS - (x - m)(x - m').
    ss_i = torch.where(r_i > 1, (ss - weight * (counts - mean) * (counts - mean_i)).clamp(min=0.0), 0.0)
    return r_i, t_i, ss_i


class _BetaBinomial:
    """Per-example beta-binomial count distributions of one group, from the sums of :func:`_sums`.

    ``r``, ``t``, ``ss`` are ``[N]`` (or ``[S, N]``: S independent fits, e.g. leave-one-out
    folds); the fitted ``a``, ``b`` have the same shape.
    """

    def __init__(self, r: torch.Tensor, t: torch.Tensor, ss: torch.Tensor, *, num_queries: int, alpha: float):
        q = float(num_queries)
        pooled = (t.sum(-1, keepdim=True) + 1.0) / (q * r.sum(-1, keepdim=True) + 2.0)
        mean = (t + alpha * q * pooled) / (q * (r + alpha))
        m = t / (q * r.clamp(min=1.0))
        binomial_ss = ((r - 1.0).clamp(min=0.0) * q * m * (1.0 - m)).sum(-1, keepdim=True)
        ratio = ss.sum(-1, keepdim=True) / binomial_ss.clamp(min=1e-12)
        if num_queries > 1:
            rho = torch.where(binomial_ss > 0, (ratio - 1.0) / (q - 1.0), _RHO_MIN).clamp(_RHO_MIN, _RHO_MAX)
        else:
            rho = torch.full_like(ratio, _RHO_MIN)  # one query: Bernoulli(mean), whatever rho
        concentration = 1.0 / rho - 1.0
        self.num_queries = num_queries
        self.a, self.b = mean * concentration, (1.0 - mean) * concentration

    def log_pmf(self, k: torch.Tensor) -> torch.Tensor:
        """log P(K = k) for counts ``k`` broadcastable to the fitted shape."""
        q, a, b = float(self.num_queries), self.a, self.b
        k = k.to(a.dtype)
        log_choose = math.lgamma(q + 1.0) - torch.lgamma(k + 1.0) - torch.lgamma(q - k + 1.0)
        return log_choose + _log_beta(k + a, q - k + b) - _log_beta(a, b)

    def log_mid_p(self, k: torch.Tensor) -> torch.Tensor:
        """log of the one-sided mid-p-value ``P(K > k) + P(K = k) / 2``, summed in log space."""
        q, a, b = self.num_queries, self.a, self.b
        k = k.to(a.dtype)
        log_p = _log_beta(a, q + b) - _log_beta(a, b)  # log P(K = 0)
        total = torch.full(torch.broadcast_shapes(k.shape, a.shape), -math.inf, dtype=a.dtype, device=a.device)
        for j in range(q + 1):
            weight = torch.where(k < j, 0.0, torch.where(k == j, math.log(0.5), -math.inf))
            total = torch.logaddexp(total, log_p + weight)
            if j < q:  # P(K = j + 1) / P(K = j) = (Q - j)(j + a) / ((j + 1)(Q - j - 1 + b))
                log_p = log_p + torch.log((q - j) * (j + a)) - torch.log((j + 1) * (q - j - 1 + b))
        return total

def _log_beta(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(a + b)


def _counts(ref: ReferenceFeatures) -> torch.Tensor:
    """Correct queries per reference model and example, float64 ``[R, N]``, a chunk of models at a time."""
    n, q = ref.features["correct"].shape[1:]
    return torch.cat([ref.take("correct", sl).sum(-1).double() for sl in ref.chunks(n * q)])


class LabelOnlyAttack(FeatureAttack):
    """Augmentation-robustness label-only attack with per-example calibration (see the module docstring).

    Args:
        online: likelihood ratio of IN and OUT count distributions (True) or the one-sided
            OUT-only test (False).
        prior_strength: alpha > 0, the weight (in reference models) of the group's pooled
            mean in each example's mean (default 1).
        calibrate_threshold: compute the leave-one-out decision threshold in ``fit``.
    """

    requires_references = True
    needs_scores = False

    def __init__(self, online: bool = True, prior_strength: float = 1.0, *, calibrate_threshold: bool = True) -> None:
        self.online = bool(check_choice("online", online, (True, False)))
        self.prior_strength = float(check_number("prior_strength", prior_strength, low=0.0, low_open=True))
        self.calibrate_threshold = bool(check_choice("calibrate_threshold", calibrate_threshold, (True, False)))
        self.threshold: float | None = None
        self._fits: tuple[_BetaBinomial, _BetaBinomial] | None = None
        self._score_online = self.online

    def required_features(self) -> tuple[Feature, ...]:
        """Whether each query's predicted label is correct."""
        return (correct_feature(),)

    def fit_features(self, ref: ReferenceFeatures, *, knobs: Knobs | None = None) -> LabelOnlyAttack:
        """Fit per-example IN and OUT count distributions on the references; ``threshold`` from ``knobs`` or by
        leave-one-out."""
        ref = self._check_features(ref)
        counts, keep = _counts(ref), ref.keep_of()
        sums = tuple(_sums(counts, w) for w in (keep.double(), (~keep).double()))
        return self._fit_sums(sums, counts, keep, num_queries=int(ref.features["correct"].shape[-1]), knobs=knobs)

    @property
    def calibrates(self) -> bool:
        """Whether ``fit`` calibrates the threshold (its one knob)."""
        return self.calibrate_threshold

    def pool(self, base: ReferenceFeatures) -> LabelOnlyPool:
        """Sums of every model's counts, from which each subset's fit follows."""
        return LabelOnlyPool(self, base)

    def _fit_sums(self, sums: Sequence[tuple[torch.Tensor, ...]], counts: torch.Tensor, keep: torch.Tensor, *,
                  num_queries: int, knobs: Knobs | None) -> LabelOnlyAttack:
        """Fit from the references' IN and OUT ``sums``, their ``counts [R, N]`` and membership ``keep``."""
        if num_queries == 1:
            warnings.warn(
                "label_only with a single query (config key `queries`) is a per-example calibrated gap attack; "
                f"query several augmentations, e.g. queries=[{','.join(RECOMMENDED_QUERIES)}]",
                stacklevel=3,
            )
        self._num_examples, self._num_queries = int(counts.shape[1]), num_queries
        self._fits = tuple(self._fit(s, num_queries) for s in sums)
        self._score_online = self.online
        if self.online and int(sums[0][0].sum()) == 0:
            warnings.warn("label_only online: no reference model trained on any example; using the offline score")
            self._score_online = False
        self.threshold = None
        if knobs is not None:
            self.threshold = knobs["threshold"]
        elif self.calibrate_threshold and len(counts) >= 2:
            self.threshold = balanced_accuracy_threshold(self._loo_scores(counts, keep, sums), keep)
        return self

    def _fit(self, sums: tuple[torch.Tensor, torch.Tensor, torch.Tensor], num_queries: int) -> _BetaBinomial:
        return _BetaBinomial(*sums, num_queries=num_queries, alpha=self.prior_strength)

    def _loo_scores(self, counts: torch.Tensor, keep: torch.Tensor, sums: Sequence[tuple]) -> torch.Tensor:
        """Each reference model scored against (IN, OUT) fits without it (closed form, a chunk of folds at a
        time): float64 ``[R, N]``."""
        step = max(1, CHUNK_ELEMENTS // max(1, counts.shape[1]))
        out = []
        for start in range(0, len(counts), step):
            part, member = counts[start : start + step], keep[start : start + step]
            fits = tuple(self._fit(_leave_one_out(part, w, *s), self._num_queries)
                         for w, s in zip((member.double(), (~member).double()), sums))
            out.append(self._scores(part, fits))
        return torch.cat(out)

    def _scores(self, counts: torch.Tensor, fits: Sequence[_BetaBinomial]) -> torch.Tensor:
        """Scores of ``counts`` under the (IN, OUT) fits, float64, shaped like the broadcast of both."""
        fit_in, fit_out = fits
        if not self._score_online:
            return (-fit_out.log_mid_p(counts)).to(torch.float64)
        return (fit_in.log_pmf(counts) - fit_out.log_pmf(counts)).to(torch.float64)

    def reference_scores(self, ref: ReferenceSignals | ReferenceFeatures) -> torch.Tensor:
        """Leave-one-out scores float64 ``[R, N]``: each reference model scored as the target
        against fits on the other R - 1 (closed form, all folds at once); needs ``fit``."""
        if self._fits is None:
            raise RuntimeError("LabelOnlyAttack used before fit")
        ref = self._as_features(ref)
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        counts, keep = _counts(ref), ref.keep_of()
        return self._loo_scores(counts, keep, tuple(_sums(counts, w) for w in (keep.double(), (~keep).double())))

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float64 ``[N]``, higher = member."""
        if self._fits is None:
            raise RuntimeError("LabelOnlyAttack.score called before fit")
        correct = check_examples(target, "correct", self._num_examples)
        if correct.shape[1] != self._num_queries:
            raise ValueError(f"target has Q = {correct.shape[1]} queries but the references had Q = {self._num_queries}")
        counts = correct.sum(-1).double().to(self._fits[0].a.device)
        return self._scores(counts, self._fits).to(correct.device)


class LabelOnlyPool:
    """The label-only attack's IN and OUT count sums over every model of a table; a subset's fit subtracts
    the left-out models."""

    def __init__(self, attack: LabelOnlyAttack, base: ReferenceFeatures) -> None:
        self.attack, self.base = attack, base
        self.counts, self.keep = _counts(base), base.keep_of()
        self.sums = tuple(_sums(self.counts, w) for w in (self.keep.double(), (~self.keep).double()))

    def fit(self, removed: Sequence[int], *, knobs: Knobs | None = None) -> LabelOnlyAttack:
        """The attack fitted on the table's models except ``removed`` (positions), equal to a fit from scratch."""
        sums = self.sums
        for r in removed:
            counts, member = self.counts[r : r + 1], self.keep[r : r + 1]
            sums = tuple(tuple(v[0] for v in _leave_one_out(counts, w, *s))
                         for w, s in zip((member.double(), (~member).double()), sums))
        rows = positions_without(len(self.counts), removed, self.counts.device)
        num_queries = int(self.base.features["correct"].shape[-1])
        return copy.deepcopy(self.attack)._fit_sums(sums, self.counts[rows], self.keep[rows], num_queries=num_queries,
                                                    knobs=knobs)
