"""Compute conventions shared by training and querying (no dependency on either)."""

from __future__ import annotations

import torch

__all__ = ["CPU_EVAL_BATCH", "autocast"]

#: Forward batch size for evaluation and querying on CPU: activations of larger batches spill out of cache.
CPU_EVAL_BATCH = 256


def autocast(device: torch.device) -> torch.autocast:
    """bf16 autocast on CUDA; a disabled context elsewhere (float32 on CPU)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
