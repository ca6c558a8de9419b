"""Per-example statistics derived from a model's logits, without underflow.

Every function takes ``logits: Tensor[..., C]`` (any float dtype) and, where the true
class matters, ``labels: LongTensor`` broadcastable to ``logits.shape[:-1]`` (standard
broadcasting: for logits ``[R, N, Q, C]`` and labels of shape ``[N]`` pass
``labels[None, :, None]``). Results are float64 on the logits' device; large inputs are
processed in row chunks so temporaries stay bounded.

**Numerics.** A confident model's true-class probability rounds to 1 (float32 once the
logit margin exceeds about 17, float64 about 37), so a loss computed as ``-log softmax``
is exactly 0 and members and non-members tie at the top of every ranking, which is
where TPR at low FPR is measured. Here every statistic is computed in float64 from
forms that keep the information in the small quantity:

* ``phi = z_y - logsumexp_{j != y} z_j`` (the log-odds of ``p_y``) is exact at any margin;
* loss ``= log(1 + exp(-phi))`` and ``log(1 - p_y) = -log(1 + exp(phi))``, via ``logaddexp``;
* the log-softmax of the arg-max class is ``-log1p(sum_{j != top} exp(z_j - z_top))``,
  not ``z_top - logsumexp(z)``, so it keeps its tiny value instead of rounding to 0.

So the loss and entropy stay distinct for margins up to about 700 (the float64 range),
the modified entropy up to about 350 (it scales as ``exp(-2 margin)``), and ``phi`` and
log-odds forms at every margin. Attacks keep float64 scores so this resolution reaches
the metrics.

The registry :data:`STATISTICS` maps each statistic's name to a :class:`Statistic`: the
function, the sign that makes "higher = more likely member", how the Q augmentation
queries are averaged, and, for a function of φ, how it follows from φ.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = [
    "cross_entropy",
    "confidence",
    "entropy",
    "modified_entropy",
    "logit_scaled_confidence",
    "log_softmax",
    "log1m_softmax",
    "probability_logits",
    "logit_mean_probability",
    "Statistic",
    "STATISTICS",
]

# Rows per chunk are chosen so a chunk holds at most this many logits.
_CHUNK_ELEMENTS = 1 << 22


def _check(logits: torch.Tensor, labels: torch.Tensor | None, min_classes: int = 1) -> None:
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise TypeError("logits must be a floating-point torch.Tensor")
    if logits.dim() < 1:
        raise ValueError("logits must have at least one dimension (classes last)")
    if logits.shape[-1] < min_classes:
        raise ValueError(
            f"logits must have at least {min_classes} classes, got {logits.shape[-1]}"
        )
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex():
            raise TypeError("labels must be an integer torch.Tensor")
        try:
            torch.broadcast_shapes(labels.shape, logits.shape[:-1])
        except RuntimeError as exc:
            raise ValueError(
                f"labels of shape {tuple(labels.shape)} do not broadcast to "
                f"logits.shape[:-1] = {tuple(logits.shape[:-1])}"
            ) from exc


def _apply(
    fn: Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor],
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    *,
    per_class: bool = False,
) -> torch.Tensor:
    """Run ``fn(z [M, C] float64, y [M] | None)`` over row chunks of the flattened input.

    ``fn`` returns ``[M]`` (the result has shape ``logits.shape[:-1]``) or, with
    ``per_class``, ``[M, C]`` (the result has the logits' shape); always float64.
    """
    lead = logits.shape[:-1]
    num_classes = logits.shape[-1]
    z = logits.reshape(-1, num_classes)
    y = None
    if labels is not None:
        y = labels.to(device=logits.device, dtype=torch.long).broadcast_to(lead).reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    rows = z.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, num_classes))
    out = torch.empty((rows, num_classes) if per_class else (rows,), dtype=torch.float64, device=logits.device)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        yc = None if y is None else y[start:stop]
        out[start:stop] = fn(z[start:stop].to(torch.float64), yc)
    return out.reshape(logits.shape if per_class else lead)


def _softplus(x: torch.Tensor) -> torch.Tensor:
    """``log(1 + exp(x))`` accurate for every x (torch's softplus returns x above 20)."""
    return torch.logaddexp(x, torch.zeros_like(x))


def _phi(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # z_y - logsumexp_{y' != y} z_y' = -logsumexp_{y' != y} (z_y' - z_y): the true class is
    # masked to -inf; the shift by z_y keeps full relative accuracy for large logits.
    others = (z - z.gather(-1, y[:, None])).scatter_(-1, y[:, None], float("-inf"))
    return -torch.logsumexp(others, dim=-1)


def _log_softmax_parts(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``log p [M, C]``, the arg-max class ``top [M, 1]`` and ``log_rest [M, 1]`` =
    ``log sum_{k != top} exp(z_k - z_top)``, from which both log-softmax forms follow."""
    # log p_j = (z_j - z_top) - log1p(sum_{k != top} exp(z_k - z_top)): for the arg-max
    # class this is -log1p(tiny) = -tiny, where z_top - logsumexp(z) rounds to 0.
    top = z.argmax(dim=-1, keepdim=True)
    shifted = z - z.gather(-1, top)
    log_rest = torch.logsumexp(shifted.scatter(-1, top, float("-inf")), dim=-1, keepdim=True)
    return shifted - _softplus(log_rest), top, log_rest


def _log_softmax_and_log1m(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p, log(1 - p))`` for every class, from one pass over the logits."""
    logp, top, log_rest = _log_softmax_parts(z)
    # Only the arg-max class can have p > 1/2; for it log(1 - p) = log(rest / (1 + rest))
    # with rest = sum_{k != top} exp(z_k - z_top); for the others log1p(-p) is accurate.
    log1mp = torch.log1p(-logp.exp()).scatter(-1, top, log_rest - _softplus(log_rest))
    return logp, log1mp


def _log_softmax(z: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    return _log_softmax_parts(z)[0]


def _log1m_softmax(z: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    return _log_softmax_and_log1m(z)[1]


def _probability_logits(z: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    logp, log1mp = _log_softmax_and_log1m(z)
    return logp - log1mp


def _loss_from_phi(phi: torch.Tensor) -> torch.Tensor:
    """The cross-entropy ``log(1 + exp(-φ))`` from φ."""
    return _softplus(-phi)


def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _loss_from_phi(_phi(z, y))


def _confidence(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(_phi(z, y))


def _entropy(z: torch.Tensor, _: torch.Tensor | None = None) -> torch.Tensor:
    logp = _log_softmax(z)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def _modified_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logp, log1mp = _log_softmax_and_log1m(z)
    onehot = torch.zeros_like(z, dtype=torch.bool).scatter(-1, y[:, None], True)
    true_term = -(log1mp.exp() * logp)  # -(1 - p_y) log p_y
    other_term = -(logp.exp() * log1mp)  # -p_i log(1 - p_i)
    return torch.where(onehot, true_term, other_term).sum(-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-element cross-entropy loss ``-log p_y``, as float64 ``logits.shape[:-1]``.

    Computed as ``log(1 + exp(-phi))`` from the exact log-odds ``phi``, so a confident
    prediction's loss is ``~exp(-margin)``, not 0; lower values are typical of training
    members (the Yeom et al. loss attack thresholds it).
    """
    _check(logits, labels)
    return _apply(_cross_entropy, logits, labels)


def confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true class ``p_y`` in [0, 1], as float64.

    ``p_y`` itself rounds to 1 for margins above about 37; rank by
    :func:`logit_scaled_confidence` (its log-odds) where that matters, as the
    ``confidence`` entry of :data:`STATISTICS` does.
    """
    _check(logits, labels)
    return _apply(_confidence, logits, labels)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax distribution, in ``[0, log C]``, as float64."""
    _check(logits, None)
    return _apply(_entropy, logits, None)


def modified_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Modified prediction entropy of Song & Mittal (2021), ``Mentr``, as float64.

    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``. It is 0 for a
    perfectly confident correct prediction and grows without bound for a confident wrong
    one, so, unlike the entropy, it uses the label. ``log p`` and ``log(1 - p)`` are
    computed from logits (exact near ``p = 1``). Lower = more member-like.
    """
    _check(logits, labels, min_classes=2)
    return _apply(_modified_entropy, logits, labels)


def logit_scaled_confidence(
    logits: torch.Tensor, labels: torch.Tensor, *, temperature: float = 1.0
) -> torch.Tensor:
    """Logit-scaled confidence ``phi = log p_y - log sum_{y' != y} p_{y'}`` (LiRA's statistic).

    Computed exactly as ``-logsumexp_{y' != y}(z_{y'} - z_y)`` by masking the true class
    to ``-inf``; it never takes the log of a softmax, so it is finite and exact even when
    ``p_y`` rounds to 0 or 1 (for two classes it equals ``z_y - z_other``). With a
    ``temperature`` T the softmax of ``z / T`` is used (divided in float64). Needs at
    least two classes. Returns float64, higher = more member-like.
    """
    _check(logits, labels, min_classes=2)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature == 1.0:
        return _apply(_phi, logits, labels)
    return _apply(lambda z, y: _phi(z / temperature, y), logits, labels)


def log_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log p`` for every class, float64 of the logits' shape, accurate also for ``p`` near 1."""
    _check(logits, None)
    return _apply(_log_softmax, logits, None, per_class=True)


def log1m_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``log(1 - p)`` for every class, float64 of the logits' shape, accurate also for ``p`` near 1."""
    _check(logits, None)
    return _apply(_log1m_softmax, logits, None, per_class=True)


def probability_logits(logits: torch.Tensor) -> torch.Tensor:
    """Log-odds ``log p_j - log(1 - p_j)`` of every class's softmax probability, float64.

    An order-preserving transform of each probability that stays distinct where the
    probabilities round to 0 or 1; for the true class it equals ``phi``.
    """
    _check(logits, None, min_classes=2)
    return _apply(_probability_logits, logits, None, per_class=True)


def logit_mean_probability(logit_p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Log-odds of the mean probability along ``dim``, given log-odds ``logit_p``: float64.

    ``p = sigmoid(logit_p)`` is averaged exactly in log space, both as ``log mean p`` and
    as ``log mean (1 - p)``; their difference keeps full accuracy where the mean is close
    to 0 or to 1. An all-``+inf`` (all ``-inf``) slice gives ``+inf`` (``-inf``).
    """
    x = logit_p.to(torch.float64)
    log_n = math.log(x.shape[dim])
    log_mean_p = torch.logsumexp(torch.nn.functional.logsigmoid(x), dim=dim) - log_n
    log_mean_q = torch.logsumexp(torch.nn.functional.logsigmoid(-x), dim=dim) - log_n
    return log_mean_p - log_mean_q


def _query_mean(stat: torch.Tensor) -> torch.Tensor:
    return stat.mean(-1)


def _query_mean_probability(phi: torch.Tensor) -> torch.Tensor:
    return logit_mean_probability(phi, dim=-1)


def _identity(phi: torch.Tensor) -> torch.Tensor:
    return phi


def _entropy_statistic(logits: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    return entropy(logits)


@dataclass(frozen=True)
class Statistic:
    """A per-example statistic of a model's output and the direction that means "member".

    ``function(logits, labels)`` returns the statistic per query, float64
    ``logits.shape[:-1]``; ``member_sign`` is +1 when higher values indicate membership
    and -1 when lower ones do; ``query_mean`` averages the last dimension (the Q
    augmentation queries) of the statistic. ``from_phi``, for a statistic that is a function
    of φ (:func:`logit_scaled_confidence`), computes it from φ, bit for bit as ``function``
    does from the logits (None: it needs the whole output).
    """

    name: str
    function: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    member_sign: float
    description: str
    query_mean: Callable[[torch.Tensor], torch.Tensor] = _query_mean
    from_phi: Callable[[torch.Tensor], torch.Tensor] | None = None

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Membership score ``member_sign * query_mean(function(logits, labels))``: float64
        ``logits.shape[:-2]`` for logits ``[..., Q, C]``, higher = more likely member."""
        return self._signed_mean(self.function(logits, labels))

    def score_from_phi(self, phi: torch.Tensor) -> torch.Tensor:
        """The same score from φ per query ``[..., Q]`` (only for a statistic with ``from_phi``)."""
        if self.from_phi is None:
            raise ValueError(f"the statistic {self.name!r} does not follow from phi")
        return self._signed_mean(self.from_phi(phi))

    def _signed_mean(self, per_query: torch.Tensor) -> torch.Tensor:
        return self.member_sign * self.query_mean(per_query)


STATISTICS: dict[str, Statistic] = {
    s.name: s
    for s in (
        Statistic("loss", cross_entropy, -1.0, "cross-entropy loss -log p_y (Yeom et al. 2018); mean over queries",
                  from_phi=_loss_from_phi),
        Statistic(
            "confidence",
            logit_scaled_confidence,
            1.0,
            "true-class probability p_y, ranked on the log-odds scale log(p/(1 - p)) of its mean over "
            "queries: an order-preserving transform of the mean confidence that stays distinct near 1",
            query_mean=_query_mean_probability,
            from_phi=_identity,
        ),
        Statistic("entropy", _entropy_statistic, -1.0, "Shannon entropy of the prediction; mean over queries"),
        Statistic(
            "modified_entropy", modified_entropy, -1.0, "modified entropy Mentr (Song & Mittal 2021); mean over queries"
        ),
        Statistic("phi", logit_scaled_confidence, 1.0, "logit-scaled confidence phi (LiRA's); mean over queries",
                  from_phi=_identity),
    )
}
"""Every threshold statistic by name: function, member sign, query averaging and φ form in one place."""
