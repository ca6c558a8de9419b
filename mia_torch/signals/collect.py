"""Query a model on every example under a list of augmentation views."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from mia_torch.compute import CPU_EVAL_BATCH, autocast
from mia_torch.data.queries import apply_query

SIGNAL_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@torch.no_grad()
def collect_logits(
    model: nn.Module,
    x: torch.Tensor,
    queries: Sequence[str],
    *,
    batch_size: int = 2048,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Logits ``[N, Q, C]`` of ``model`` on ``x`` for each query view, on ``x``'s device.

    All query views of a batch go through the model in one forward pass (bf16 autocast
    on CUDA) and are written straight into the preallocated output.
    """
    model.eval()
    device = x.device
    out: torch.Tensor | None = None
    num_queries = len(queries)
    if device.type == "cpu":  # cache-sized forward batches
        batch_size = max(1, min(batch_size, CPU_EVAL_BATCH // num_queries))
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        views = torch.cat([apply_query(xb, q) for q in queries])
        if device.type == "cuda" and views.ndim == 4:  # images: NHWC
            views = views.contiguous(memory_format=torch.channels_last)
        with autocast(device):
            logits = model(views)
        logits = logits.view(num_queries, len(xb), -1).transpose(0, 1)
        if out is None:
            out = torch.empty((len(x), num_queries, logits.shape[-1]), dtype=dtype, device=device)
        out[start : start + len(xb)] = logits.to(dtype)
    assert out is not None, "collect_logits needs at least one example"
    return out
