"""Per-example statistics derived from a model's logits.

Every function takes ``logits: Tensor[..., C]`` (any float dtype) and, where the true
class matters, ``labels: LongTensor`` broadcastable to ``logits.shape[:-1]`` (standard
broadcasting: for logits ``[R, N, Q, C]`` and labels of shape ``[N]`` pass
``labels[None, :, None]``). Inputs in float64 are computed in float64, everything else in
float32; the result is always a float32 tensor of shape ``logits.shape[:-1]`` on the
logits' device. Large inputs are processed in row chunks so temporaries stay bounded.

All statistics are computed from log-probabilities obtained with ``logsumexp``, never by
taking the log of a softmax, so they stay finite and accurate for logits of magnitude
1e4 and beyond.

The registry :data:`STATISTICS` maps names to the raw statistics. Their direction is
not normalised: a low loss and a high confidence both indicate membership; the attacks
choose the sign.
"""
from __future__ import annotations

from typing import Callable

import torch

__all__ = [
    "cross_entropy",
    "confidence",
    "entropy",
    "modified_entropy",
    "logit_scaled_confidence",
    "STATISTICS",
]

# Rows per chunk are chosen so a chunk holds at most this many logits.
_CHUNK_ELEMENTS = 1 << 22


def _work_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.float64 if logits.dtype == torch.float64 else torch.float32


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
) -> torch.Tensor:
    """Run ``fn(z [M, C], y [M] | None) -> [M]`` over row chunks of the flattened input."""
    lead = logits.shape[:-1]
    num_classes = logits.shape[-1]
    z = logits.reshape(-1, num_classes)
    y = None
    if labels is not None:
        y = labels.to(device=logits.device, dtype=torch.long).broadcast_to(lead).reshape(-1)
        if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
            raise ValueError(f"labels must lie in [0, {num_classes - 1}]")
    dtype = _work_dtype(logits)
    rows = z.shape[0]
    step = max(1, _CHUNK_ELEMENTS // max(1, num_classes))
    out = torch.empty(rows, dtype=torch.float32, device=logits.device)
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        zc = z[start:stop].to(dtype)
        yc = None if y is None else y[start:stop]
        out[start:stop] = fn(zc, yc).to(torch.float32)
    return out.reshape(lead)


def _log_softmax_true(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # Shifting by z_y first keeps the result accurate to its own magnitude even when the
    # logits are large (logsumexp(z) - z_y would lose digits to the rounding of 1e4).
    return -torch.logsumexp(z - z.gather(-1, y[:, None]), dim=-1)


def _cross_entropy(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return -_log_softmax_true(z, y)


def _confidence(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    return torch.exp(_log_softmax_true(z, y))


def _entropy(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    return -torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1)


def _log1m_softmax(z: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
    """log(1 - p_i) for every class, accurate also when p_i is close to 1.

    Only the arg-max class can have p > 1/2; for it log(1 - p) is computed exactly as
    logsumexp over the other classes minus logsumexp over all; for the rest ``log1p(-p)``
    is accurate because p <= 1/2.
    """
    p = logp.exp()
    out = torch.log1p(-p)
    top = z.argmax(dim=-1, keepdim=True)
    shifted = z - z.gather(-1, top)
    masked = shifted.scatter(-1, top, float("-inf"))
    top_val = torch.logsumexp(masked, dim=-1, keepdim=True) - torch.logsumexp(shifted, dim=-1, keepdim=True)
    return out.scatter(-1, top, top_val)


def _modified_entropy(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    p = logp.exp()
    log1mp = _log1m_softmax(z, logp)
    onehot = torch.zeros_like(z, dtype=torch.bool).scatter(-1, y[:, None], True)
    true_term = -(log1mp.exp() * logp)  # -(1 - p_y) log p_y
    other_term = -(p * log1mp)  # -p_i log(1 - p_i)
    return torch.where(onehot, true_term, other_term).sum(-1)


def _phi(z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
    # z_y - logsumexp_{y' != y} z_y' = -logsumexp_{y' != y} (z_y' - z_y): the true class is
    # masked to -inf; the shift by z_y keeps full relative accuracy for large logits.
    shifted = z - z.gather(-1, y[:, None])
    others = shifted.scatter(-1, y[:, None], float("-inf"))
    return -torch.logsumexp(others, dim=-1)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-element cross-entropy loss ``-log p_y``, computed as ``logsumexp(z - z_y)``.

    Returns a float32 tensor of shape ``logits.shape[:-1]``; lower values are typical of
    training members (the Yeom et al. loss attack thresholds it).
    """
    _check(logits, labels)
    return _apply(_cross_entropy, logits, labels)


def confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Softmax probability of the true class ``p_y``, in [0, 1], as float32."""
    _check(logits, labels)
    return _apply(_confidence, logits, labels)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of the softmax distribution, in ``[0, log C]``, as float32."""
    _check(logits, None)
    return _apply(_entropy, logits, None)


def modified_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Modified prediction entropy of Song & Mittal (2021), ``Mentr``.

    ``Mentr = -(1 - p_y) log p_y - sum_{i != y} p_i log(1 - p_i)``. It is 0 for a
    perfectly confident correct prediction and grows without bound for a confident wrong
    one, so, unlike the entropy, it uses the label. ``log(1 - p)`` is computed from
    logits (exact near ``p = 1``). Returns float32, lower = more member-like.
    """
    _check(logits, labels, min_classes=2)
    return _apply(_modified_entropy, logits, labels)


def logit_scaled_confidence(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logit-scaled confidence ``phi = log p_y - log sum_{y' != y} p_{y'}`` (LiRA's statistic).

    Computed exactly as ``z_y - logsumexp_{y' != y} z_{y'}`` (evaluated as
    ``-logsumexp_{y' != y}(z_{y'} - z_y)``) by masking the true class to ``-inf``; it never takes the log of a softmax, so it is finite and exact even when
    ``p_y`` rounds to 0 or 1 (for two classes it equals ``z_y - z_other``). Needs at least
    two classes. Returns float32, higher = more member-like.
    """
    _check(logits, labels, min_classes=2)
    return _apply(_phi, logits, labels)


STATISTICS: dict[str, Callable[..., torch.Tensor]] = {
    "loss": cross_entropy,
    "confidence": confidence,
    "entropy": lambda logits, labels=None: entropy(logits),
    "modified_entropy": modified_entropy,
    "phi": logit_scaled_confidence,
}
"""Raw statistics by name; every entry is callable as ``fn(logits, labels)``."""
