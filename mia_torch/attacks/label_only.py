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

Calibration. For example n, the IN (OUT) reference models give a handful of counts. With
few references (a typical study has 5-30 per group and example) the empirical distribution
over Q + 1 values is mostly empty, and the counts are not binomial (the queries are
different views, not exchangeable draws), so instead of a parametric fit (e.g.
beta-binomial) each group's count distribution is the posterior predictive of a Dirichlet
prior centred on that group's pooled distribution over all examples:

    P(k | n) = (h_n[k] + alpha * g[k]) / (r_n + alpha)

with ``h_n[k]`` the number of the group's reference models with count k on example n,
``r_n`` their number, ``g`` the group's pooled count distribution (add-one smoothed, so
every probability is positive and every score finite) and ``alpha`` (``prior_strength``)
its weight in pseudo-models. Many references make the estimate empirical; none make it
the pooled one.

* online: score = log P_in(k | n) - log P_out(k | n), the likelihood ratio of the target's
  count. An example that OUT models usually get wrong but the target gets right under
  every query scores high; one every model gets right scores about 0.
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

import warnings

import torch

from mia_torch.attacks.base import (
    Attack,
    ReferenceSignals,
    balanced_accuracy_threshold,
    check_choice,
    check_number,
    check_target,
)

__all__ = ["GapAttack", "LabelOnlyAttack", "RECOMMENDED_QUERIES", "correct_counts"]

RECOMMENDED_QUERIES = (
    "identity", "flip", "shift_1_0", "shift_-1_0", "shift_0_1", "shift_0_-1", "flip_shift_1_0", "flip_shift_-1_0",
)


def correct_queries(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Whether the predicted label (arg-max) is the true one: bool ``[..., N, Q]`` from ``[..., N, Q, C]``.

    ``labels`` must broadcast to ``logits.shape[:-1]``.
    """
    return logits.argmax(-1) == labels


def correct_counts(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Number of queries with a correct predicted label: int64 ``[..., N]`` from ``[..., N, Q, C]``."""
    return correct_queries(logits, labels).sum(-1)


class GapAttack(Attack):
    """Yeom et al.'s gap attack: score 1 if the label predicted on query ``query`` is correct, else 0.

    Args:
        query: index of the query used (default 0, ``identity`` in the default ``queries``).
    """

    requires_references = False
    needs_scores = False

    def __init__(self, query: int = 0) -> None:
        self.query = int(check_number("query", query, low=0, integer=True))
        self.threshold = 1.0

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores in {0, 1}, float32 ``[N]``, higher = member."""
        logits, labels = check_target(logits, labels)
        if self.query >= logits.shape[1]:
            raise ValueError(f"query={self.query} is out of range: the signals have {logits.shape[1]} queries")
        return correct_queries(logits[:, self.query], labels).to(torch.float32)


def _pooled_prior(pooled: torch.Tensor) -> torch.Tensor:
    """Add-one smoothed distribution ``[..., Q+1]`` from pooled count histograms ``[..., Q+1]``."""
    return (pooled + 1.0) / (pooled.sum(-1, keepdim=True) + pooled.shape[-1])


def _above(x: torch.Tensor) -> torch.Tensor:
    """``out[..., k] = sum_{j > k} x[..., j]``."""
    return x.flip(-1).cumsum(-1).flip(-1) - x


class _Group:
    """Count histograms of one group (IN or OUT) of reference models.

    ``hist [N, Q+1]``: the group's models with each count, per example; ``size [N]``: the
    group's models per example; ``per_model [R, Q+1]``: each model's histogram pooled over
    examples; ``prior [Q+1]``: the group's pooled, add-one smoothed count distribution.
    """

    def __init__(self, counts: torch.Tensor, mask: torch.Tensor, num_values: int) -> None:
        weight = mask.to(torch.float64)
        r, n = counts.shape
        self.hist = torch.zeros(n, num_values, dtype=torch.float64, device=counts.device)
        self.hist.scatter_add_(1, counts.T, weight.T)
        self.size = weight.sum(0)
        self.per_model = torch.zeros(r, num_values, dtype=torch.float64, device=counts.device)
        self.per_model.scatter_add_(1, counts, weight)
        self.prior = _pooled_prior(self.per_model.sum(0))

    @property
    def total(self) -> int:
        """Number of (model, example) observations in the group."""
        return int(self.size.sum())

    def log_prob(self, k: torch.Tensor, alpha: float, *, tail: bool, own: torch.Tensor | None = None) -> torch.Tensor:
        """log P(k | n), or of the mid-p tail ``P(K > k) + P(K = k) / 2``, for counts ``k [S, N]``.

        With ``own`` (bool ``[R, N]``; then ``k`` is ``[R, N]``, the references' own counts),
        row r leaves model r out of the statistics that score it (leave-one-out).
        """
        hist = self.hist.T.gather(0, k)  # [S, N]
        above = _above(self.hist).T.gather(0, k)
        size = self.size.expand_as(hist)
        prior = self.prior.expand(k.shape[0], -1)
        if own is not None:
            w = own.to(torch.float64)
            hist, size = hist - w, size - w  # a model's own count k sits in hist[k], never above it
            prior = _pooled_prior(self.per_model.sum(0) - self.per_model)
        g = prior.gather(1, k)
        if tail:
            numerator = above + 0.5 * hist + alpha * (_above(prior).gather(1, k) + 0.5 * g)
        else:
            numerator = hist + alpha * g
        return torch.log(numerator) - torch.log(size + alpha)


class LabelOnlyAttack(Attack):
    """Augmentation-robustness label-only attack with per-example calibration (see the module docstring).

    Args:
        online: likelihood ratio of IN and OUT count distributions (True) or the one-sided
            OUT-only test (False).
        prior_strength: alpha > 0, the weight in pseudo-models of the pooled count
            distribution in each example's estimate (default 1).
        calibrate_threshold: compute the leave-one-out decision threshold in ``fit``.
    """

    requires_references = True
    needs_scores = False

    def __init__(self, online: bool = True, prior_strength: float = 1.0, *, calibrate_threshold: bool = True) -> None:
        self.online = bool(check_choice("online", online, (True, False)))
        self.prior_strength = float(check_number("prior_strength", prior_strength, low=0.0, low_open=True))
        self.calibrate_threshold = bool(check_choice("calibrate_threshold", calibrate_threshold, (True, False)))
        self.threshold: float | None = None
        self._groups: tuple[_Group, _Group] | None = None
        self._score_online = self.online

    def fit(self, ref: ReferenceSignals) -> "LabelOnlyAttack":
        """Count histograms per example from the references; optionally calibrate ``threshold``."""
        ref = self._check_references(ref)
        num_queries = int(ref.logits.shape[2])
        if num_queries == 1:
            warnings.warn(
                "label_only with a single query (config key `queries`) is a per-example calibrated gap attack; "
                f"query several augmentations, e.g. queries=[{','.join(RECOMMENDED_QUERIES)}]",
                stacklevel=2,
            )
        counts = correct_counts(ref.logits, ref.labels[None, :, None])  # [R, N]
        groups = (_Group(counts, ref.keep, num_queries + 1), _Group(counts, ~ref.keep, num_queries + 1))
        self._groups = groups
        self._num_examples = ref.num_examples
        self._num_queries = num_queries
        self._score_online = self.online
        if self.online and groups[0].total == 0:
            warnings.warn("label_only online: no reference model trained on any example; using the offline score")
            self._score_online = False
        self.threshold = None
        if self.calibrate_threshold and ref.num_models >= 2:
            self.threshold = balanced_accuracy_threshold(self._scores(counts, own=ref.keep), ref.keep)
        return self

    def _scores(self, k: torch.Tensor, own: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``[S, N]`` of counts ``k [S, N]`` (leave-one-out when ``own`` is the references' keep)."""
        group_in, group_out = self._groups
        a = self.prior_strength
        if not self._score_online:
            own_out = None if own is None else ~own
            return (-group_out.log_prob(k, a, tail=True, own=own_out)).to(torch.float32)
        log_in = group_in.log_prob(k, a, tail=False, own=own)
        log_out = group_out.log_prob(k, a, tail=False, own=None if own is None else ~own)
        return (log_in - log_out).to(torch.float32)

    def reference_scores(self, ref: ReferenceSignals) -> torch.Tensor:
        """Leave-one-out scores float32 ``[R, N]``: each reference model scored as the target
        against the other R - 1 (closed form, all folds at once; refits on ``ref``)."""
        if ref.num_models < 2:
            raise ValueError("reference_scores needs at least two reference models")
        fitted = LabelOnlyAttack(self.online, self.prior_strength, calibrate_threshold=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fit already warned about these signals
            fitted.fit(ref)
        return fitted._scores(correct_counts(ref.logits, ref.labels[None, :, None]), own=ref.keep)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Target scores, float32 ``[N]``, higher = member."""
        if self._groups is None:
            raise RuntimeError("LabelOnlyAttack.score called before fit")
        logits, labels = check_target(logits, labels, self._num_examples)
        if logits.shape[1] != self._num_queries:
            raise ValueError(f"target has Q = {logits.shape[1]} queries but the references had Q = {self._num_queries}")
        k = correct_counts(logits, labels[:, None]).to(self._groups[0].hist.device)
        return self._scores(k[None])[0].to(logits.device)
