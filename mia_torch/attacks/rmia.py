"""Relative membership inference attack (RMIA), Zarifzadeh et al., ICML 2024,
"Low-Cost High-Power Membership Inference Attacks".

For an example x with label y:

* Pr(x | theta) = target's softmax probability of y (at temperature T), averaged over
  the Q queries;
* Pr(x) from the reference models (each also averaged over queries):
  - online: mean over all reference models;
  - offline (only models that did not train on x): Pr(x) = (1 + a)/2 * mean_OUT + (1 - a)/2,
    the paper's linear approximation of the missing IN models;
* ratio(x) = Pr(x | theta) / Pr(x).

Population samples z are a seeded random subset of the N examples (``num_population``),
their ratio computed exactly as for x (in the offline mode that is the OUT-only
estimate, as in the paper's offline setting). The score of x is the fraction of z with
ratio(x) / ratio(z) > gamma. All ratios are kept in log space, so the test is
``log ratio(z) < log ratio(x) - log gamma``; it is evaluated by sorting the population's
log ratios once and binary-searching every x (``torch.searchsorted``), O(N log N) time
and O(N) memory, with no pairwise x-by-z matrix. Because the population is fixed, the
score is a non-decreasing function of ratio(x).

Numerics: every probability (and every mean of probabilities) is carried as its
log-odds, computed exactly from the logits and averaged with
:func:`~mia_torch.signals.stats.logit_mean_probability`, so ``log Pr`` keeps its value
where the probability rounds to 1 (a confident model) and ratios of two such
probabilities stay exact.

Knobs, none chosen on the target: gamma = 2 offline (the paper's offline setting) and
1 online (the plain ratio comparison), fixed; with a fixed population gamma shifts which
samples count, not the order of the scores. ``a`` (offline) and the temperature T are
calibrated on the reference models when left as None: each reference model in turn
plays the target against the others, and the pair maximizing the mean leave-one-out AUC
of the attack's scores over the grid a in {0, 0.1, ..., 1} x T in {1, 2, 4, 8} is kept
(ties go to the smaller value; with more than 16 references, 16 evenly spaced ones
play the target, which bounds the cost and estimates the AUC as well). The scores, not the bare ratios, are compared because
gamma > 1 can collapse a temperature's compressed ratios into ties. With one
reference model nothing can be calibrated: a = 0.33 and T = 2, the values of the
authors' released CIFAR-10 configurations. Examples with no OUT reference model use the
mean OUT probability over all examples (and, if there is no OUT observation at all, the
mean over all reference models).

``fit`` also calibrates ``threshold`` (max balanced accuracy) from the same
leave-one-out scores (needs R >= 2; otherwise ``None``). :meth:`RMIA.fitted_params`
reports a, T, the calibration AUC and the threshold.

Every mean over reference models is a sum kept by :class:`~mia_torch.attacks.log_sums.LogSums`,
so the leave-one-out folds, and the fits of a study's targets from one :meth:`RMIA.pool`
of all its models, take models out of one sum instead of summing again.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch.nn.functional import logsigmoid

from mia_torch.attacks.base import (
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    check_number,
    check_target,
)
from mia_torch.attacks.feature_attack import FeatureAttack, Knobs, ReferenceFeatures, check_examples, positions_without
from mia_torch.attacks.log_sums import TOP
from mia_torch.attacks.rmia_sums import ReferenceProbabilities
from mia_torch.signals.features import Feature, compute_features, probability_logit_feature

__all__ = ["RMIA"]

_A_GRID = tuple(i / 10 for i in range(11))
_A_FALLBACK = 0.33
_TEMPERATURE_GRID = (1.0, 2.0, 4.0, 8.0)
_TEMPERATURE_FALLBACK = 2.0
_MAX_CALIBRATION_FOLDS = 16
#: Elements of the largest temporaries of a chunk of leave-one-out folds.
_FOLD_CHUNK_ELEMENTS = 1 << 21


def _count_auc(counts: torch.Tensor, member: torch.Tensor, num_values: int) -> torch.Tensor:
    """AUC of each row of integer scores in ``[0, num_values)`` (ties count 1/2): float64 ``[rows]``.

    A histogram replaces the sort of :func:`~mia_torch.attacks.base.roc_auc`: O(N + num_values) per row.
    """
    rows = counts.shape[0]
    index = counts + torch.arange(rows, device=counts.device)[:, None] * num_values
    hist_in = torch.bincount(index[member], minlength=rows * num_values).view(rows, num_values).double()
    hist_out = torch.bincount(index[~member], minlength=rows * num_values).view(rows, num_values).double()
    below = torch.cumsum(hist_out, dim=1) - hist_out  # non-members scored strictly lower
    pairs = hist_in.sum(1) * hist_out.sum(1)
    wins = (hist_in * (below + 0.5 * hist_out)).sum(1)
    return torch.where(pairs > 0, wins / pairs.clamp(min=1.0), torch.full_like(wins, 0.5))


def _offline_logit(logit_out: torch.Tensor, a: float) -> torch.Tensor:
    """Log-odds of Pr(x) = (1 + a)/2 * mean_OUT + (1 - a)/2 from the log-odds of mean_OUT."""
    log_c1 = math.log((1.0 + a) / 2.0)
    log_pr = log_c1 + logsigmoid(logit_out)
    if a < 1.0:
        log_pr = torch.logaddexp(log_pr, torch.full_like(log_pr, math.log((1.0 - a) / 2.0)))
    # 1 - Pr(x) = (1 + a)/2 * (1 - mean_OUT), exact also where Pr(x) rounds to 1.
    return log_pr - (log_c1 + logsigmoid(-logit_out))


class RMIA(FeatureAttack):
    """RMIA with a sorted-population pairwise test.

    Args:
        online: Pr(x) from all reference models (True) or from OUT models only with the
            ``a`` correction (False, default: the paper's few-reference setting).
        a: offline interpolation parameter in [0, 1], or None to calibrate it on the
            reference models (ignored online).
        gamma: likelihood-ratio threshold > 0 of the pairwise test; None = 2 offline
            (the paper's offline setting), 1 online.
        num_population: number of population samples z drawn from the N examples
            (default 5000; all of them if fewer or None). Larger values refine the
            score resolution at low FPR at O(N log N) cost.
        temperature: softmax temperature T > 0 applied to all logits, or None (default)
            to calibrate it on the reference models from {1, 2, 4, 8}.
        seed: seed of the population sample.
        calibrate_threshold: compute the leave-one-out decision threshold in ``fit``.
    """

    requires_references = True

    def __init__(
        self,
        online: bool = False,
        a: float | None = None,
        gamma: float | None = None,
        num_population: int | None = 5000,
        *,
        temperature: float | None = None,
        seed: int = 0,
        calibrate_threshold: bool = True,
    ) -> None:
        self.online = bool(check_choice("online", online, (True, False)))
        self.a = None if a is None else float(check_number("a", a, low=0.0, high=1.0))
        if gamma is None:
            gamma = 1.0 if self.online else 2.0
        self.gamma = float(check_number("gamma", gamma, low=0.0, low_open=True))
        self.num_population = (
            None if num_population is None else int(check_number("num_population", num_population, low=1, integer=True))
        )
        self.temperature = (
            None if temperature is None else float(check_number("temperature", temperature, low=0.0, low_open=True))
        )
        self.seed = int(check_number("seed", seed, integer=True))
        self.calibrate_threshold = bool(check_choice("calibrate_threshold", calibrate_threshold, (True, False)))
        self.threshold: float | None = None
        self.a_: float | None = None  # the a actually used (given or calibrated; None online)
        self.temperature_: float | None = None  # the temperature actually used
        self.calibration_auc_: float | None = None  # mean leave-one-out AUC at the chosen knobs
        self.population_index: torch.Tensor | None = None
        self._denominator: torch.Tensor | None = None  # log-odds of Pr(x), [N]

    # ----------------------------------------------------------------- helpers
    def required_features(self) -> tuple[Feature, ...]:
        """The log-odds of the query-averaged true-class probability at every temperature the fit may use."""
        temperatures = _TEMPERATURE_GRID if self.temperature is None else (self.temperature,)
        return tuple(probability_logit_feature(t) for t in temperatures)

    @property
    def calibrates(self) -> bool:
        """Whether ``fit`` chooses the threshold, the temperature or ``a``."""
        return self.calibrate_threshold or self.temperature is None or (not self.online and self.a is None)

    def _population_counts(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Number of population z with log ratio(z) < log ratio(x) - log gamma, along the last dim."""
        idx = self.population_index.to(log_ratio.device)
        pop = torch.sort(log_ratio[..., idx], dim=-1).values.contiguous()
        query = (log_ratio - math.log(self.gamma)).contiguous()
        return torch.searchsorted(pop, query, side="left")

    def _population_scores(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Fraction of population z with log ratio(z) < log ratio(x) - log gamma, along the last dim."""
        return self._population_counts(log_ratio).double() / self.population_index.numel()

    def _denominators(self, mean: torch.Tensor, a: float | None) -> torch.Tensor:
        """Log-odds of Pr(x) from the log-odds of the mean reference probability."""
        return mean if self.online else _offline_logit(mean, a)

    def _calibrate(
        self, probabilities: Callable[[float], ReferenceProbabilities], refs: torch.Tensor, removed: torch.Tensor
    ) -> tuple[float, float | None, float | None]:
        """Choose (T, a) on the references ``refs`` (positions; ``removed``: the table's other models): returns
        T, a and the mean leave-one-out AUC (None when nothing was chosen)."""
        can_fold = len(refs) >= 2
        if self.temperature is not None:
            temperatures = (self.temperature,)
        else:
            temperatures = _TEMPERATURE_GRID if can_fold else (_TEMPERATURE_FALLBACK,)
        if self.online:
            a_values: tuple[float | None, ...] = (None,)
        elif self.a is not None:
            a_values = (self.a,)
        else:
            a_values = _A_GRID if can_fold else (_A_FALLBACK,)
        if len(temperatures) * len(a_values) == 1:
            return temperatures[0], a_values[0], None
        # Folds: every reference model as the target, or evenly spaced ones when there are many.
        r = len(refs)
        folds = refs[torch.linspace(0, r - 1, min(r, _MAX_CALIBRATION_FOLDS)).round().long().unique().to(refs.device)]
        best: tuple[float, float, float | None] | None = None
        for t in temperatures:
            sums = probabilities(t)
            loo_mean = sums.mean_logit(_with_folds(removed, folds))
            log_p = logsigmoid(sums.logit(folds))
            member = sums.keep(folds)
            for a in a_values:
                counts = self._population_counts(log_p - logsigmoid(self._denominators(loo_mean, a)))
                auc = float(_count_auc(counts, member, self.population_index.numel() + 1).mean())
                if best is None or auc > best[0]:
                    best = (auc, t, a)
        auc, t, a = best
        return t, a, auc

    # --------------------------------------------------------------------- API
    def fit_features(self, ref: ReferenceFeatures, *, knobs: Knobs | None = None) -> RMIA:
        """Draw the population, choose T and a on the references (or take them from ``knobs``), estimate Pr(x),
        calibrate ``threshold``."""
        ref = self._check_features(ref)
        cache: dict[float, ReferenceProbabilities] = {}

        def probabilities(t: float) -> ReferenceProbabilities:
            if t not in cache:
                cache[t] = ReferenceProbabilities(ref, probability_logit_feature(t).name, self.online)
            return cache[t]

        return self._fit_sums(probabilities, ref.num_examples, num_models=ref.num_models, removed=(), knobs=knobs)

    def pool(self, base: ReferenceFeatures) -> RMIAPool:
        """The reference probabilities of every model of ``base``, from which each subset's Pr(x) follows."""
        return RMIAPool(self, base)

    def _fit_sums(self, probabilities: Callable[[float], ReferenceProbabilities], num_examples: int, *, num_models: int,
                  removed: Sequence[int], knobs: Knobs | None) -> RMIA:
        """Fit on the sums of a table of ``num_models`` models but ``removed`` (positions)."""
        device = probabilities(self._first_temperature(knobs)).ref.keep.device
        gone = torch.tensor(sorted(set(removed)), dtype=torch.long, device=device)
        refs = positions_without(num_models, removed, device)
        gen = torch.Generator().manual_seed(self.seed)
        size = num_examples if self.num_population is None else min(num_examples, self.num_population)
        self.population_index = torch.randperm(num_examples, generator=gen)[:size].sort().values.to(device)
        if knobs is not None:
            self.temperature_, self.a_ = knobs["temperature"], knobs["a"]
            self.calibration_auc_ = knobs["calibration_auc"]
        else:
            self.temperature_, self.a_, self.calibration_auc_ = self._calibrate(probabilities, refs, gone)
        sums = probabilities(self.temperature_)
        self._denominator = self._denominators(sums.mean_logit(gone[None])[0], self.a_)
        self._num_examples = num_examples
        self.threshold = None
        if knobs is not None:
            self.threshold = knobs["threshold"]
        elif self.calibrate_threshold and len(refs) >= 2:
            self.threshold = balanced_accuracy_threshold(self._reference_scores(sums, refs, gone), sums.keep(refs))
        return self

    def _first_temperature(self, knobs: Knobs | None) -> float:
        if knobs is not None:
            return knobs["temperature"]
        return self.temperature if self.temperature is not None else _TEMPERATURE_FALLBACK

    def fitted_params(self) -> dict[str, Any]:
        """``a`` (None online), ``temperature``, ``calibration_auc`` (None when nothing was calibrated) and ``threshold``."""
        return {**super().fitted_params(), "a": self.a_, "temperature": self.temperature_,
                "calibration_auc": self.calibration_auc_}

    def _reference_scores(self, sums: ReferenceProbabilities, refs: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
        """Leave-one-out scores ``[R, N]`` of references ``refs`` against the others, a chunk of folds at a time."""
        step = max(1, _FOLD_CHUNK_ELEMENTS // (TOP * sums.ref.num_examples))
        out = []
        for start in range(0, len(refs), step):
            folds = refs[start : start + step]
            denominator = self._denominators(sums.mean_logit(_with_folds(removed, folds)), self.a_)
            out.append(self._population_scores(logsigmoid(sums.logit(folds)) - logsigmoid(denominator)))
        return torch.cat(out)

    def reference_scores(self, ref: ReferenceSignals | ReferenceFeatures) -> torch.Tensor:
        """Leave-one-out scores float64 ``[R, N]``: each reference model scored as the target
        against the others (with the fitted ``a``, temperature and population); needs R >= 2 and ``fit``."""
        if self._denominator is None:
            raise RuntimeError("RMIA used before fit")
        ref = self._as_features(ref)
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        sums = ReferenceProbabilities(ref, probability_logit_feature(self.temperature_).name, self.online)
        refs = torch.arange(ref.num_models, device=ref.keep.device)
        return self._reference_scores(sums, refs, refs[:0])

    def _log_ratio(self, logit_target: torch.Tensor) -> torch.Tensor:
        return logsigmoid(logit_target) - logsigmoid(self._denominator.to(logit_target.device))

    def log_ratio(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log Pr(x | theta) - log Pr(x) for target logits ``[N, Q, C]``: float64 ``[N]``."""
        if self._denominator is None:
            raise RuntimeError("RMIA used before fit")
        logits, labels = check_target(logits, labels, self._num_examples)
        feature = probability_logit_feature(self.temperature_)
        return self._log_ratio(compute_features(logits, labels, (feature,))[feature.name])

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores in [0, 1], float64 ``[N]``: fraction of population samples x dominates."""
        return self._population_scores(self.log_ratio(logits, labels))

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target scores in [0, 1], float64 ``[N]``, from its features."""
        if self._denominator is None:
            raise RuntimeError("RMIA used before fit")
        logit = check_examples(target, probability_logit_feature(self.temperature_).name, self._num_examples)
        return self._population_scores(self._log_ratio(logit.double()))


def _with_folds(removed: torch.Tensor, folds: torch.Tensor) -> torch.Tensor:
    """One set per fold: ``removed`` and the fold, ``[F, D + 1]``."""
    return torch.cat([removed[None].expand(len(folds), -1), folds[:, None]], dim=1)


class RMIAPool:
    """RMIA's reference probabilities over every model of a table; a subset's fit takes the left-out models out."""

    def __init__(self, attack: RMIA, base: ReferenceFeatures) -> None:
        self.attack, self.base = attack, base
        self._cache: dict[float, ReferenceProbabilities] = {}

    def _probabilities(self, t: float) -> ReferenceProbabilities:
        if t not in self._cache:
            self._cache[t] = ReferenceProbabilities(self.base, probability_logit_feature(t).name, self.attack.online)
        return self._cache[t]

    def fit(self, removed: Sequence[int], *, knobs: Knobs | None = None) -> RMIA:
        """The attack fitted on the table's models except ``removed`` (positions), equal to a fit from scratch."""
        return copy.deepcopy(self.attack)._fit_sums(self._probabilities, self.base.num_examples,
                                                      num_models=self.base.num_models, removed=removed, knobs=knobs)
