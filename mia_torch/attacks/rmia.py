"""Relative membership inference attack (RMIA), Zarifzadeh et al., ICML 2024,
"Low-Cost High-Power Membership Inference Attacks".

For an example x with label y:

* Pr(x | theta) = target's softmax probability of y, averaged over the Q queries;
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

Defaults: gamma = 2 offline, as in the paper's offline setting, and gamma = 1 online
(the plain ratio comparison); with a fixed population gamma shifts which samples count,
not the order of the scores. Offline, ``a`` is calibrated when it is None. Calibration picks a from the
grid {0, 0.1, ..., 1} maximizing the AUC (of the ratio, which orders examples as the
score does) when each reference model in turn plays the target against the others,
averaged over the R folds; with one reference model it falls back to a = 0.33.
Examples with no OUT reference model use the mean OUT probability over all examples
(and, if there is no OUT observation at all, the mean over all reference models).

``fit`` also calibrates ``threshold`` (max balanced accuracy) from the same
leave-one-out scores (needs R >= 2; otherwise ``None``).
"""
from __future__ import annotations

import math

import torch

from mia_torch.attacks.base import (
    Attack,
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    check_number,
    check_target,
    roc_auc,
)
from mia_torch.signals.stats import cross_entropy

__all__ = ["RMIA"]

_A_GRID = tuple(i / 10 for i in range(11))
_A_FALLBACK = 0.33


def _log_mean_prob(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """log of the true-class probability averaged over queries (dim -2 of the logits): float64 ``[...]``."""
    logp = -cross_entropy(logits / temperature if temperature != 1.0 else logits, labels).double()
    return torch.logsumexp(logp, dim=-1) - math.log(logp.shape[-1])


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


def _offline_denominator(log_mean_out: torch.Tensor, a: float) -> torch.Tensor:
    """log Pr(x) = log((1 + a)/2 * mean_OUT + (1 - a)/2) from log mean_OUT."""
    first = log_mean_out + math.log((1.0 + a) / 2.0)
    if a >= 1.0:
        return first
    return torch.logaddexp(first, torch.full_like(first, math.log((1.0 - a) / 2.0)))


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
        temperature: softmax temperature applied to all logits (default 1).
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
        temperature: float = 1.0,
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
        self.temperature = float(check_number("temperature", temperature, low=0.0, low_open=True))
        self.seed = int(check_number("seed", seed, integer=True))
        self.calibrate_threshold = bool(check_choice("calibrate_threshold", calibrate_threshold, (True, False)))
        self.threshold: float | None = None
        self.a_: float | None = None  # the a actually used (given or calibrated)
        self.population_index: torch.Tensor | None = None
        self._log_pr_x: torch.Tensor | None = None

    # ----------------------------------------------------------------- helpers
    def _denominators(
        self, lp_ref: torch.Tensor, keep: torch.Tensor, a: float, leave_one_out: bool
    ) -> torch.Tensor:
        """log Pr(x) from reference log-probabilities ``[R, N]``: ``[N]`` or, leave-one-out, ``[R, N]``."""
        if self.online:
            if not leave_one_out:
                return torch.logsumexp(lp_ref, dim=0) - math.log(lp_ref.shape[0])
            return _loo_logsumexp(lp_ref) - math.log(max(1, lp_ref.shape[0] - 1))
        return _offline_denominator(self._log_mean_out(lp_ref, keep, leave_one_out), a)

    @staticmethod
    def _log_mean_out(lp_ref: torch.Tensor, keep: torch.Tensor, leave_one_out: bool) -> torch.Tensor:
        """log of the mean OUT probability per example: ``[N]`` or, leave-one-out, ``[R, N]``.

        Examples without OUT models get the mean OUT probability over all examples (of the
        same set of reference models), else the mean over everything.
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

    def _population_scores(self, log_ratio: torch.Tensor) -> torch.Tensor:
        """Fraction of population z with log ratio(z) < log ratio(x) - log gamma, along the last dim."""
        idx = self.population_index.to(log_ratio.device)
        pop = torch.sort(log_ratio[..., idx], dim=-1).values.contiguous()
        query = (log_ratio - math.log(self.gamma)).contiguous()
        count = torch.searchsorted(pop, query, side="left")
        return (count.double() / idx.numel()).to(torch.float32)

    # --------------------------------------------------------------------- API
    def fit(self, ref: ReferenceSignals) -> "RMIA":
        """Estimate Pr(x) from the references, draw the population, calibrate ``a`` and ``threshold``."""
        ref = self._check_references(ref)
        r, n = ref.num_models, ref.num_examples
        lp_ref = _log_mean_prob(ref.logits, ref.labels[None, :, None], self.temperature)  # [R, N]
        keep = ref.keep

        gen = torch.Generator().manual_seed(self.seed)
        size = n if self.num_population is None else min(n, self.num_population)
        self.population_index = torch.randperm(n, generator=gen)[:size].sort().values.to(lp_ref.device)

        if self.online:
            a = 1.0  # unused online
        elif self.a is not None:
            a = self.a
        elif r >= 2:
            loo_out = self._log_mean_out(lp_ref, keep, leave_one_out=True)
            aucs = [float(roc_auc(lp_ref - _offline_denominator(loo_out, cand), keep).mean()) for cand in _A_GRID]
            a = _A_GRID[max(range(len(aucs)), key=lambda i: (aucs[i], -i))]
        else:
            a = _A_FALLBACK
        self.a_ = None if self.online else a
        self._log_pr_x = self._denominators(lp_ref, keep, a, leave_one_out=False)
        self._num_examples = n

        self.threshold = None
        if self.calibrate_threshold and r >= 2:
            self.threshold = balanced_accuracy_threshold(self._reference_scores(lp_ref, keep), keep)
        return self

    def _reference_scores(self, lp_ref: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        a = 1.0 if self.online else self.a_
        return self._population_scores(lp_ref - self._denominators(lp_ref, keep, a, leave_one_out=True))

    def reference_scores(self, ref: ReferenceSignals) -> torch.Tensor:
        """Leave-one-out scores float32 ``[R, N]``: each reference model scored as the target
        against the others (with the fitted ``a`` and population); needs R >= 2 and ``fit``."""
        if self._log_pr_x is None:
            raise RuntimeError("RMIA used before fit")
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        lp_ref = _log_mean_prob(ref.logits, ref.labels[None, :, None], self.temperature)
        return self._reference_scores(lp_ref, ref.keep)

    def log_ratio(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log Pr(x | theta) - log Pr(x) for target logits ``[N, Q, C]``: float64 ``[N]``."""
        if self._log_pr_x is None:
            raise RuntimeError("RMIA used before fit")
        logits, labels = check_target(logits, labels, self._num_examples)
        lp = _log_mean_prob(logits, labels[:, None], self.temperature)
        return lp - self._log_pr_x.to(lp.device)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores in [0, 1], float32 ``[N]``: fraction of population samples x dominates."""
        return self._population_scores(self.log_ratio(logits, labels))
