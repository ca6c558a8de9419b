"""Likelihood-ratio attack (LiRA), Carlini et al. 2022, "Membership Inference Attacks From First Principles".

The statistic is the logit-scaled confidence phi of the true class, per augmentation
query. For every example n and query q, Gaussians are fitted to the reference models'
phi: N(mu_in, sigma_in^2) over the models that trained on n and N(mu_out, sigma_out^2)
over those that did not.

* online: score = mean_q [log N(phi_t; mu_in, sigma_in) - log N(phi_t; mu_out, sigma_out)]
* offline: score = mean_q log Phi((phi_t - mu_out) / sigma_out), the one-sided test
  (a target phi above the OUT models' is evidence of membership).

``variance="global"`` uses one pooled within-example variance per query (separately for
IN and OUT), which the paper finds better with fewer than ~64 reference models;
``variance="per_example"`` uses each example's own variance (unbiased), falling back to
the global one for examples with fewer than two observations.

Missing references are handled without NaNs:

* an example with no IN (or no OUT) reference model gets mu_in = mu_out + delta (or
  mu_out = mu_in - delta), where delta is the per-query mean IN-OUT shift over examples
  that have both (else the difference of the global IN and OUT means, else 0), and the
  pooled variance of that group;
* a group with no within-example degrees of freedom (e.g. one reference model) uses the
  pooled variance of both groups, else the spread of all phi values across examples;
* online scoring with no IN observation at all falls back to the offline score (with a
  warning); standard deviations are floored at ``min_std``.

``fit`` also calibrates ``threshold`` (max balanced accuracy) by leave-one-out: each
reference model in turn plays the target against the Gaussians of the others, all folds
computed in closed form from the full statistics (needs R >= 2; otherwise ``threshold``
is ``None``). phi is computed exactly from the logits (never from a rounded softmax),
and statistics and scores are computed and returned in float64.
"""
from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence

import torch

from mia_torch.attacks.base import ReferenceSignals, balanced_accuracy_threshold, check_choice, check_number, check_target
from mia_torch.attacks.feature_attack import FeatureAttack, Knobs, ReferenceFeatures, check_examples
from mia_torch.signals.features import Feature, phi_feature
from mia_torch.signals.stats import logit_scaled_confidence

__all__ = ["LiRA"]

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)
#: Elements per float64 temporary when the leave-one-out folds are scored (:meth:`LiRA._reference_scores` makes a
#: few dozen per fold: with 2^21-element chunks a fit on 64 models x 20,000 examples x 18 queries peaked 0.35 GiB
#: above its features, with these not at all).
LOO_CHUNK_ELEMENTS = 1 << 18
_NO_OUT_WARNING = (
    "LiRA offline: every reference model trained on every example; OUT Gaussians are "
    "extrapolated from IN ones and the scores carry little information"
)


Stats = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _sufficient(phi: torch.Tensor, mask: torch.Tensor) -> Stats:
    """Counts ``[N, 1]``, means and centred sums of squares ``[N, Q]`` of phi ``[R, N, Q]`` over masked models."""
    m = mask[..., None].to(phi.dtype)  # [R, N, 1]
    cnt = m.sum(0)
    mean = (phi * m).sum(0) / cnt.clamp(min=1.0)
    ss = (((phi - mean) * m) ** 2).sum(0)
    return cnt, mean, ss


def _sufficient_of(ref: ReferenceFeatures, member: bool) -> Stats:
    """:func:`_sufficient` of the references' phi over their IN (``member``) or OUT models, a chunk of models
    at a time (one chunk: the same sums)."""
    n, q = ref.features["phi"].shape[1:]
    chunks = list(ref.chunks(n * q))
    if len(chunks) == 1:
        keep = ref.keep_of()
        return _sufficient(ref.take("phi").double(), keep if member else ~keep)
    cnt = total = None
    for sl in chunks:
        keep = ref.keep_of(sl)
        m = (keep if member else ~keep)[..., None].double()
        part_cnt, part_total = m.sum(0), (ref.take("phi", sl).double() * m).sum(0)
        cnt, total = (part_cnt, part_total) if cnt is None else (cnt + part_cnt, total + part_total)
    mean = total / cnt.clamp(min=1.0)
    ss = torch.zeros_like(mean)
    for sl in chunks:
        keep = ref.keep_of(sl)
        m = (keep if member else ~keep)[..., None].double()
        ss += (((ref.take("phi", sl).double() - mean) * m) ** 2).sum(0)
    return cnt, mean, ss


def _without(stats: Stats, phi: torch.Tensor, mask: torch.Tensor) -> Stats:
    """``stats`` without one model's phi ``[N, Q]`` where ``mask [N]`` (the same as recomputing them)."""
    cnt, mean, ss = _leave_one_out(phi[None], mask[None], *stats)
    return cnt[0], mean[0], ss[0]


def _leave_one_out(
    phi: torch.Tensor, mask: torch.Tensor, cnt: torch.Tensor, mean: torch.Tensor, ss: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Statistics without model r, for every r at once: ``[R, N, 1]``, ``[R, N, Q]``, ``[R, N, Q]``."""
    m = mask[..., None].to(phi.dtype)
    cnt_r = cnt - m
    mean_r = (cnt * mean - m * phi) / cnt_r.clamp(min=1.0)
    mean_r = torch.where(cnt_r > 0, mean_r, torch.zeros_like(mean_r))
    # Removing x from a group with mean mu (new mean mu'): SS' = SS - (x - mu)(x - mu').
    ss_r = ss - m * (phi - mean) * (phi - mean_r)
    ss_r = torch.where(cnt_r > 1, ss_r.clamp(min=0.0), torch.zeros_like(ss_r))
    return cnt_r, mean_r, ss_r


def _gaussians(
    cnt_in: torch.Tensor,
    mean_in: torch.Tensor,
    ss_in: torch.Tensor,
    cnt_out: torch.Tensor,
    mean_out: torch.Tensor,
    ss_out: torch.Tensor,
    *,
    per_example: bool,
    min_std: float,
) -> dict[str, torch.Tensor]:
    """Gaussian parameters ``[..., N, Q]`` from sufficient statistics (examples on dim -2), with fallbacks."""
    has_in, has_out = cnt_in > 0, cnt_out > 0
    both = has_in & has_out
    zero = torch.zeros_like(mean_in)

    # Mean IN - OUT shift per query, used for examples that lack one of the two groups.
    n_both = both.to(mean_in.dtype).sum(-2, keepdim=True)
    d_both = torch.where(both, mean_in - mean_out, zero).sum(-2, keepdim=True) / n_both.clamp(min=1.0)
    tot_in, tot_out = cnt_in.sum(-2, keepdim=True), cnt_out.sum(-2, keepdim=True)
    g_in = (cnt_in * mean_in).sum(-2, keepdim=True) / tot_in.clamp(min=1.0)
    g_out = (cnt_out * mean_out).sum(-2, keepdim=True) / tot_out.clamp(min=1.0)
    d_glob = torch.where((tot_in > 0) & (tot_out > 0), g_in - g_out, torch.zeros_like(g_in))
    delta = torch.where(n_both > 0, d_both, d_glob)
    mu_in = torch.where(has_in, mean_in, mean_out + delta)
    mu_out = torch.where(has_out, mean_out, mean_in - delta)

    # Pooled within-example variances per query.
    dof_in = (cnt_in - 1.0).clamp(min=0.0).sum(-2, keepdim=True)
    dof_out = (cnt_out - 1.0).clamp(min=0.0).sum(-2, keepdim=True)
    sss_in, sss_out = ss_in.sum(-2, keepdim=True), ss_out.sum(-2, keepdim=True)
    dof_all = dof_in + dof_out
    pooled_all = (sss_in + sss_out) / dof_all.clamp(min=1.0)
    # Last resort: spread of all phi values around their group's global mean.
    spread_in = sss_in + (cnt_in * (mean_in - g_in) ** 2).sum(-2, keepdim=True)
    spread_out = sss_out + (cnt_out * (mean_out - g_out) ** 2).sum(-2, keepdim=True)
    spread = (spread_in + spread_out) / (tot_in + tot_out).clamp(min=1.0)
    fallback = torch.where(dof_all > 0, pooled_all, spread)
    var_in = torch.where(dof_in > 0, sss_in / dof_in.clamp(min=1.0), fallback)
    var_out = torch.where(dof_out > 0, sss_out / dof_out.clamp(min=1.0), fallback)
    if per_example:
        var_in = torch.where(cnt_in > 1, ss_in / (cnt_in - 1.0).clamp(min=1.0), var_in)
        var_out = torch.where(cnt_out > 1, ss_out / (cnt_out - 1.0).clamp(min=1.0), var_out)
    min_var = min_std**2
    std_in = var_in.clamp(min=min_var).sqrt().expand_as(mu_in)
    std_out = var_out.clamp(min=min_var).sqrt().expand_as(mu_out)
    return {"mu_in": mu_in, "std_in": std_in, "mu_out": mu_out, "std_out": std_out}


def _log_normal(x: torch.Tensor, mu: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((x - mu) / std) ** 2 - torch.log(std) - _HALF_LOG_2PI


def _lira_score(phi: torch.Tensor, p: dict[str, torch.Tensor], online: bool) -> torch.Tensor:
    """Scores ``[..., N]`` of phi ``[..., N, Q]`` under Gaussian parameters ``[..., N, Q]``."""
    if online:
        llr = _log_normal(phi, p["mu_in"], p["std_in"]) - _log_normal(phi, p["mu_out"], p["std_out"])
    else:
        llr = torch.special.log_ndtr((phi - p["mu_out"]) / p["std_out"])
    return llr.mean(-1)


class LiRA(FeatureAttack):
    """LiRA, online (IN and OUT Gaussians) or offline (OUT only, one-sided).

    Args:
        online: fit IN and OUT Gaussians (True) or OUT only (False).
        variance: ``global`` (one pooled variance per query and group; default) or
            ``per_example``.
        min_std: floor on every fitted standard deviation (default 1e-4).
        calibrate_threshold: compute the leave-one-out decision threshold in ``fit``.
    """

    requires_references = True

    def __init__(
        self,
        online: bool = True,
        variance: str = "global",
        *,
        min_std: float = 1e-4,
        calibrate_threshold: bool = True,
    ) -> None:
        self.online = bool(check_choice("online", online, (True, False)))
        self.variance = check_choice("variance", variance, ("global", "per_example"))
        self.min_std = float(check_number("min_std", min_std, low=0.0, low_open=True))
        self.calibrate_threshold = bool(check_choice("calibrate_threshold", calibrate_threshold, (True, False)))
        self.threshold: float | None = None
        self._params: dict[str, torch.Tensor] | None = None
        self._score_online = self.online

    def required_features(self) -> tuple[Feature, ...]:
        """phi per query."""
        return (phi_feature(),)

    @property
    def calibrates(self) -> bool:
        """Whether ``fit`` calibrates the threshold (its one knob)."""
        return self.calibrate_threshold

    def fit_features(self, ref: ReferenceFeatures, *, knobs: Knobs | None = None) -> LiRA:
        """Fit per-example Gaussians on reference phi; ``threshold`` from ``knobs`` or by leave-one-out."""
        ref = self._check_features(ref)
        return self._fit_stats((_sufficient_of(ref, True), _sufficient_of(ref, False)), ref, knobs)

    def pool(self, base: ReferenceFeatures) -> LiRAPool:
        """IN and OUT sums of every model's phi, from which each subset's Gaussians follow."""
        return LiRAPool(self, base)

    def _fit_stats(self, stats: tuple[Stats, Stats], ref: ReferenceFeatures, knobs: Knobs | None) -> LiRA:
        """Fit from the references' IN and OUT sufficient statistics ``stats``."""
        stats_in, stats_out = stats
        n_in, n_out = int(stats_in[0].sum()), int(stats_out[0].sum())
        self._score_online = self.online
        if self.online and n_in == 0:
            warnings.warn("LiRA online: no reference model trained on any example; using the offline score")
            self._score_online = False
        if not self._score_online and n_out == 0:
            warnings.warn(_NO_OUT_WARNING)
        per_example = self.variance == "per_example"
        self._params = _gaussians(*stats_in, *stats_out, per_example=per_example, min_std=self.min_std)
        self._num_examples = ref.num_examples
        self.threshold = None
        if knobs is not None:
            self.threshold = knobs["threshold"]
        elif self.calibrate_threshold and ref.num_models >= 2:
            self.threshold = balanced_accuracy_threshold(self._reference_scores(ref, stats), ref.keep_of())
        return self

    def _reference_scores(self, ref: ReferenceFeatures, stats: tuple[Stats, Stats]) -> torch.Tensor:
        """Leave-one-out scores ``[R, N]`` from the references' full statistics ``stats``."""
        per_example = self.variance == "per_example"
        full_in, full_out = stats
        n, q = ref.features["phi"].shape[1:]
        # Folds are independent given the full statistics: process them in chunks so the
        # float64 temporaries (a few dozen per fold) stay bounded.
        out = []
        for sl in ref.chunks(n * q, max_elements=LOO_CHUNK_ELEMENTS):
            phi, keep = ref.take("phi", sl).double(), ref.keep_of(sl)
            loo_in = _leave_one_out(phi, keep, *full_in)
            loo_out = _leave_one_out(phi, ~keep, *full_out)
            params = _gaussians(*loo_in, *loo_out, per_example=per_example, min_std=self.min_std)
            out.append(_lira_score(phi, params, self._score_online))
        return torch.cat(out)

    def reference_scores(self, ref: ReferenceSignals | ReferenceFeatures) -> torch.Tensor:
        """Leave-one-out scores float64 ``[R, N]``: each reference model scored as the target
        against Gaussians fitted on the other R - 1 (closed form, all folds at once)."""
        ref = self._as_features(ref)
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        return self._reference_scores(ref, (_sufficient_of(ref, True), _sufficient_of(ref, False)))

    def score_features(self, target: Mapping[str, torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float64 ``[N]``, higher = member."""
        if self._params is None:
            raise RuntimeError("LiRA.score called before fit")
        phi = check_examples(target, "phi", self._num_examples).double()  # [N, Q]
        params = {k: v.to(phi.device) for k, v in self._params.items()}
        if phi.shape[-1] != params["mu_in"].shape[-1]:
            raise ValueError(
                f"target has Q = {phi.shape[-1]} queries but the references had Q = {params['mu_in'].shape[-1]}"
            )
        return _lira_score(phi, params, self._score_online)

    def out_zscores(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """How far the target's phi lies above the OUT Gaussians, float64 ``[N, Q]``: ``(phi - mu_out) / std_out``."""
        if self._params is None:
            raise RuntimeError("LiRA.out_zscores called before fit")
        logits, labels = check_target(logits, labels, self._num_examples)
        phi = logit_scaled_confidence(logits, labels[:, None]).double()
        return (phi - self._params["mu_out"].to(phi.device)) / self._params["std_out"].to(phi.device)


class LiRAPool:
    """LiRA's IN and OUT sums over every model of a table; a subset's fit subtracts the left-out models."""

    def __init__(self, attack: LiRA, base: ReferenceFeatures) -> None:
        self.attack, self.base = attack, base
        self.stats = (_sufficient_of(base, True), _sufficient_of(base, False))

    def fit(self, removed: Sequence[int], *, knobs: Knobs | None = None) -> LiRA:
        """The attack fitted on the table's models except ``removed`` (positions), equal to a fit from scratch."""
        stats_in, stats_out = self.stats
        for r in removed:
            phi, keep = self.base.take("phi", r).double(), self.base.keep_of(r)
            stats_in, stats_out = _without(stats_in, phi, keep), _without(stats_out, phi, ~keep)
        return copy.deepcopy(self.attack)._fit_stats((stats_in, stats_out), self.base.without(removed), knobs)
