"""RMIA's reference probabilities as sums from which models can be taken out (see :mod:`~mia_torch.attacks.log_sums`).

Pr(x), RMIA's estimate of an example's probability under models that did not see the
target, averages the references' probabilities of the true class. A study's targets, and
each leave-one-out fold, average over a different subset of the same models: each subset's
average is the sums over every model with a few models taken out.
"""
from __future__ import annotations

import math

import torch
from torch.nn.functional import logsigmoid

from mia_torch.attacks.feature_attack import ReferenceFeatures
from mia_torch.attacks.log_sums import LogSumsBuilder, model_chunks

__all__ = ["ReferenceProbabilities"]


def _masked_logsumexp(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``logsumexp`` of ``values`` (``[B]`` or ``[S, B]``) over ``mask [S, B]`` per row: ``[S]`` (-inf for an empty
    row)."""
    return torch.logsumexp(torch.where(mask, values, -math.inf), dim=1)


class ReferenceProbabilities:
    """The reference probabilities of one temperature over the models of ``ref``, as the sums Pr(x) reads.

    The models' feature ``name`` holds the log-odds of each one's query-averaged true-class
    probability, read from ``ref`` a chunk of models at a time (never copied whole). Pr(x)
    averages ``p`` and ``1 - p`` (in log space) over all models online and over each
    example's OUT models offline; an example with no OUT model takes the mean over all OUT
    entries of the models (else over all their entries), kept here per model.
    """

    def __init__(self, ref: ReferenceFeatures, name: str, online: bool) -> None:
        self.ref, self.name, self.online = ref, name, online
        p, q, parts = LogSumsBuilder(), LogSumsBuilder(), []
        for models in model_chunks(ref.num_models):  # the largest terms, the counts and the fallback's sums
            log_p, log_q, counted, out = self._terms(models)
            p.add_top(models.start, log_p, counted)
            q.add_top(models.start, log_q, counted)
            parts.append(torch.stack([out.sum(1).double(), _masked_logsumexp(log_p, out),
                                      _masked_logsumexp(log_q, out), torch.logsumexp(log_p, dim=1),
                                      torch.logsumexp(log_q, dim=1)]))
        for models in model_chunks(ref.num_models):  # the other terms, under the scale the first pass found
            log_p, log_q, counted, _ = self._terms(models)
            p.add_rest(models.start, log_p, counted)
            q.add_rest(models.start, log_q, counted)
        self.p, self.q = p.result(), q.result()
        self.out_count, self.out_p, self.out_q, self.all_p, self.all_q = torch.cat(parts, dim=1)

    def _terms(self, models: torch.Tensor | slice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``log p``, ``log(1 - p)``, the counted flags and the OUT flags of models ``models``: ``[k, N]`` each."""
        logit, out = self.logit(models), ~self.keep(models)
        return logsigmoid(logit), logsigmoid(-logit), torch.ones_like(out) if self.online else out, out

    def logit(self, models: torch.Tensor | slice) -> torch.Tensor:
        """The log-odds of models ``models`` (positions): float64 ``[k, N]``."""
        return self.ref.take(self.name, models).double()

    def keep(self, models: torch.Tensor | slice) -> torch.Tensor:
        """The membership of models ``models`` (positions): bool ``[k, N]``."""
        return self.ref.keep_of(models)

    def mean_logit(self, removed: torch.Tensor) -> torch.Tensor:
        """Log-odds of the mean reference probability over the models but ``removed [S, D]`` (positions),
        for each of S sets: ``[S, N]``."""
        models, at = torch.unique(removed, return_inverse=True)  # a model in several sets is read once
        log_p, log_q, counted, _ = self._terms(models)
        log_p, count = self.p.without(removed, log_p[at], counted[at])
        log_q, _ = self.q.without(removed, log_q[at], counted[at])
        log_count = torch.log(count.clamp(min=1.0))
        if self.online:
            return (log_p - log_count) - (log_q - log_count)
        glob_p, glob_q = self._fallback(removed)
        mean_p = torch.where(count > 0, log_p - log_count, glob_p[:, None])
        mean_q = torch.where(count > 0, log_q - log_count, glob_q[:, None])
        return mean_p - mean_q

    def _fallback(self, removed: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """log of the mean OUT ``p`` and ``1 - p`` over all entries of each set's models: ``[S]`` each."""
        b, n = self.ref.num_models, self.ref.num_examples
        member = torch.ones(len(removed), b, dtype=torch.bool, device=removed.device)
        member.scatter_(1, removed, False)
        count = (member * self.out_count).sum(1)
        log_count = torch.log(count.clamp(min=1.0))
        log_all = torch.log((member.sum(1) * n).double().clamp(min=1.0))  # every entry of the set's models
        glob = [torch.where(count > 0, _masked_logsumexp(out, member) - log_count,
                            _masked_logsumexp(every, member) - log_all)
                for out, every in ((self.out_p, self.all_p), (self.out_q, self.all_q))]
        return glob[0], glob[1]
