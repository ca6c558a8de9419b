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
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch.nn.functional import logsigmoid

from mia_torch.attacks.base import (
    Attack,
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    check_number,
    check_target,
)
from mia_torch.signals.stats import logit_mean_probability, logit_scaled_confidence

__all__ = ["RMIA"]

_A_GRID = tuple(i / 10 for i in range(11))
_A_FALLBACK = 0.33
_TEMPERATURE_GRID = (1.0, 2.0, 4.0, 8.0)
_TEMPERATURE_FALLBACK = 2.0
_MAX_CALIBRATION_FOLDS = 16


def _probability_logit(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Log-odds of the true-class probability averaged over queries (dim -2 of the logits): float64 ``[...]``."""
    phi = logit_scaled_confidence(logits, labels, temperature=temperature)
    return logit_mean_probability(phi, dim=-1)


def _global_log_mean(logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log of the mean of exp(logp) over all masked entries (0-d); mask must select at least one."""
    vals = logp[mask]
    return torch.logsumexp(vals, dim=0) - math.log(vals.numel())


def _loo_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``out[r] = logsumexp_{s != r} x[s]`` along dim 0, exactly (prefix/suffix cumulative logsumexp)."""
    r = x.shape[0]
    neg = torch.full_like(x[:1], -math.inf)
    prefix = torch.cat([neg, torch.logcumsumexp(x, dim=0)[:-1]], dim=0)
    suffix = torch.cat([torch.logcumsumexp(x.flip(0), dim=0).flip(0)[1:], neg], dim=0)
    out = torch.logaddexp(prefix, suffix)
    # logaddexp(-inf, -inf) is -inf (not NaN) in torch, but be explicit for r == 1.
    return out if r > 1 else torch.full_like(x, -math.inf)


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


def _log_mean_out(lp_ref: torch.Tensor, keep: torch.Tensor, leave_one_out: bool) -> torch.Tensor:
    """log of the mean OUT value of exp(lp_ref) per example: ``[N]`` or, leave-one-out, ``[R, N]``.

    Examples without OUT models get the mean OUT value over all examples (of the same
    set of reference models), else the mean over everything.
    """
    out = ~keep
    outf = out.to(lp_ref.dtype)
    masked = torch.where(out, lp_ref, torch.full_like(lp_ref, -math.inf))
    if leave_one_out:
        r, n = lp_ref.shape
        g_cnt_out = outf.sum() - outf.sum(1)  # [R]
        g_out = _loo_logsumexp(torch.logsumexp(masked, dim=1)) - torch.log(g_cnt_out.clamp(min=1.0))
        g_all = _loo_logsumexp(torch.logsumexp(lp_ref, dim=1)) - math.log(max(1, (r - 1) * n))
        global_out = torch.where(g_cnt_out > 0, g_out, g_all)[:, None]
        cnt = outf.sum(0, keepdim=True) - outf
        lse = _loo_logsumexp(masked)
    else:
        global_out = _global_log_mean(lp_ref, out if bool(out.any()) else torch.ones_like(out))
        cnt = outf.sum(0)
        lse = torch.logsumexp(masked, dim=0)
    return torch.where(cnt > 0, lse - torch.log(cnt.clamp(min=1.0)), global_out.expand_as(lse))


class RMIA(Attack):
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
    def _log_mean(self, lp_ref: torch.Tensor, keep: torch.Tensor, leave_one_out: bool) -> torch.Tensor:
        """log of the mean of exp(lp_ref) over the models Pr(x) uses: ``[N]`` or, leave-one-out, ``[R, N]``."""
        if not self.online:
            return _log_mean_out(lp_ref, keep, leave_one_out)
        if not leave_one_out:
            return torch.logsumexp(lp_ref, dim=0) - math.log(lp_ref.shape[0])
        return _loo_logsumexp(lp_ref) - math.log(max(1, lp_ref.shape[0] - 1))

    def _mean_logit(self, logit_ref: torch.Tensor, keep: torch.Tensor, leave_one_out: bool) -> torch.Tensor:
        """Log-odds of the mean reference probability (all models online, OUT models offline)."""
        log_p = self._log_mean(logsigmoid(logit_ref), keep, leave_one_out)
        log_q = self._log_mean(logsigmoid(-logit_ref), keep, leave_one_out)
        return log_p - log_q

    def _denominators(self, logit_ref: torch.Tensor, keep: torch.Tensor, a: float | None, leave_one_out: bool) -> torch.Tensor:
        """Log-odds of Pr(x) from reference log-odds ``[R, N]``: ``[N]`` or, leave-one-out, ``[R, N]``."""
        mean = self._mean_logit(logit_ref, keep, leave_one_out)
        return mean if self.online else _offline_logit(mean, a)

    def _population_counts(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Number of population z with log ratio(z) < log ratio(x) - log gamma, along the last dim."""
        idx = self.population_index.to(log_ratio.device)
        pop = torch.sort(log_ratio[..., idx], dim=-1).values.contiguous()
        query = (log_ratio - math.log(self.gamma)).contiguous()
        return torch.searchsorted(pop, query, side="left")

    def _population_scores(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Fraction of population z with log ratio(z) < log ratio(x) - log gamma, along the last dim."""
        return self._population_counts(log_ratio).double() / self.population_index.numel()

    def _calibrate(self, ref: ReferenceSignals) -> tuple[float, float | None, float | None, torch.Tensor]:
        """Choose (T, a) on the references: returns T, a, the mean leave-one-out AUC and the references' log-odds."""
        can_fold = ref.num_models >= 2
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
        labels = ref.labels[None, :, None]
        if len(temperatures) * len(a_values) == 1:
            return temperatures[0], a_values[0], None, _probability_logit(ref.logits, labels, temperatures[0])
        # Folds: every reference model as the target, or evenly spaced ones when there are many.
        r = ref.num_models
        folds = torch.linspace(0, r - 1, min(r, _MAX_CALIBRATION_FOLDS)).round().long().unique().to(ref.keep.device)
        best: tuple[float, float, float | None, torch.Tensor] | None = None
        for t in temperatures:
            logit_ref = _probability_logit(ref.logits, labels, t)  # [R, N]
            loo_mean = self._mean_logit(logit_ref, ref.keep, leave_one_out=True)[folds]
            log_p = logsigmoid(logit_ref[folds])
            for a in a_values:
                denominator = loo_mean if self.online else _offline_logit(loo_mean, a)
                counts = self._population_counts(log_p - logsigmoid(denominator))
                auc = float(_count_auc(counts, ref.keep[folds], self.population_index.numel() + 1).mean())
                if best is None or auc > best[0]:
                    best = (auc, t, a, logit_ref)
        auc, t, a, logit_ref = best
        return t, a, auc, logit_ref

    # --------------------------------------------------------------------- API
    def fit(self, ref: ReferenceSignals) -> "RMIA":
        """Draw the population, choose T and a on the references, estimate Pr(x), calibrate ``threshold``."""
        ref = self._check_references(ref)
        r, n = ref.num_models, ref.num_examples
        gen = torch.Generator().manual_seed(self.seed)
        size = n if self.num_population is None else min(n, self.num_population)
        self.population_index = torch.randperm(n, generator=gen)[:size].sort().values.to(ref.logits.device)

        self.temperature_, self.a_, self.calibration_auc_, logit_ref = self._calibrate(ref)
        self._denominator = self._denominators(logit_ref, ref.keep, self.a_, leave_one_out=False)
        self._num_examples = n

        self.threshold = None
        if self.calibrate_threshold and r >= 2:
            self.threshold = balanced_accuracy_threshold(self._reference_scores(logit_ref, ref.keep), ref.keep)
        return self

    def fitted_params(self) -> dict[str, Any]:
        """``a`` (None online), ``temperature``, ``calibration_auc`` (None when nothing was calibrated) and ``threshold``."""
        return {**super().fitted_params(), "a": self.a_, "temperature": self.temperature_,
                "calibration_auc": self.calibration_auc_}

    def _reference_scores(self, logit_ref: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        denominator = self._denominators(logit_ref, keep, self.a_, leave_one_out=True)
        return self._population_scores(logsigmoid(logit_ref) - logsigmoid(denominator))

    def reference_scores(self, ref: ReferenceSignals) -> torch.Tensor:
        """Leave-one-out scores float64 ``[R, N]``: each reference model scored as the target
        against the others (with the fitted ``a``, temperature and population); needs R >= 2 and ``fit``."""
        if self._denominator is None:
            raise RuntimeError("RMIA used before fit")
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        logit_ref = _probability_logit(ref.logits, ref.labels[None, :, None], self.temperature_)
        return self._reference_scores(logit_ref, ref.keep)

    def log_ratio(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log Pr(x | theta) - log Pr(x) for target logits ``[N, Q, C]``: float64 ``[N]``."""
        if self._denominator is None:
            raise RuntimeError("RMIA used before fit")
        logits, labels = check_target(logits, labels, self._num_examples)
        logit_target = _probability_logit(logits, labels[:, None], self.temperature_)
        return logsigmoid(logit_target) - logsigmoid(self._denominator.to(logit_target.device))

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores in [0, 1], float64 ``[N]``: fraction of population samples x dominates."""
        return self._population_scores(self.log_ratio(logits, labels))
