"""Run K models of one architecture as one: stacked parameters under ``torch.func.vmap``.

Used to train several models at once (:mod:`mia_torch.training.ensemble`) and to query
them at once (:mod:`mia_torch.signals.collect_many`). The K models' parameters and
buffers are stacked (:func:`stack_models`) and one ``vmap``-ed
:func:`torch.func.functional_call` of a parameter-free copy of the architecture
(:class:`StackedNet`) runs all K forward passes as single batched kernels.

BatchNorm under vmap. Running statistics are kept as stacked per-model buffers passed to
``functional_call``; BatchNorm's in-place running-stat update then writes into each
model's slice of the stacked buffer, so trained models end with their own correct
running statistics (no ``replace_all_batch_norm_modules_``, which would drop them).

Mixed precision under vmap (CUDA). Autocast and vmap do not compose well: a vmapped conv
runs in float32 under autocast, and BatchNorm, which has no autocast policy, may receive
bf16 input next to float32 running statistics, a mix its batching rules reject
("Expected running_mean to have type BFloat16 but got Float"). :class:`StackedNet`
therefore does its own mixed precision instead of autocast: conv and linear layers run
with bf16 copies of their float32 weights on bf16 input, and normalisation layers run on
float32 input with float32 parameters and statistics, casting their output back to bf16.
"""

from __future__ import annotations

import copy
from typing import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "STRATEGIES",
    "StackedNet",
    "VmapUnsupported",
    "compute_dtype",
    "resolve_strategy",
    "stack_models",
    "write_back",
]

#: Strategies for running several models: ``auto`` (vmap on CUDA with several models, else loop), ``vmap``, ``loop``.
STRATEGIES = ("auto", "vmap", "loop")

#: Layers whose weights run in the low-precision dtype (their input is cast to it).
_MATMUL_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
#: Layers that always run in float32 (their output is cast back to the input's dtype).
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


class VmapUnsupported(Exception):
    """The models cannot run as one stacked ensemble; use the loop strategy."""


def resolve_strategy(strategy: str, device: torch.device, num_models: int) -> str:
    """The strategy ``"auto"`` stands for here: vmap on CUDA with several models, else loop."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "vmap" if device.type == "cuda" and num_models > 1 else "loop"
    return strategy


def compute_dtype(device: torch.device) -> torch.dtype | None:
    """The stacked forward's dtype: bf16 on CUDA (as the trainer's autocast), else float32 (``None``)."""
    return torch.bfloat16 if device.type == "cuda" else None


def _cast_input(forward: Callable[[Tensor], Tensor], dtype: torch.dtype | None) -> Callable[[Tensor], Tensor]:
    """Wrap a layer's forward to cast its input: to ``dtype``, or (``None``) to float32 and back."""

    def to_dtype(inp: Tensor) -> Tensor:
        return forward(inp.to(dtype))

    def in_float32(inp: Tensor) -> Tensor:
        if inp.dtype in (torch.float16, torch.bfloat16):
            return forward(inp.float()).to(inp.dtype)
        return forward(inp)

    return in_float32 if dtype is None else to_dtype


class StackedNet:
    """A parameter-free (meta) copy of a model, run with stacked parameters under ``vmap``.

    Mixed precision is explicit rather than through autocast, which ``vmap`` partly
    bypasses (a vmapped conv runs in float32 under autocast): with a ``dtype``, conv and
    linear layers run with weights cast to it (float32 master weights, gradients flow
    through the cast) and their input cast to it, and normalisation layers always run on
    float32 input with float32 parameters and running statistics.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype | None) -> None:
        self.template = copy.deepcopy(model).to("meta")
        self.dtype = dtype
        self.low_precision: set[str] = set()
        for prefix, module in self.template.named_modules():
            if isinstance(module, _NORM_LAYERS):
                module.forward = _cast_input(module.forward, None)  # type: ignore[method-assign]
            elif isinstance(module, _MATMUL_LAYERS) and dtype is not None:
                module.forward = _cast_input(module.forward, dtype)  # type: ignore[method-assign]
                names = (n for n, _ in module.named_parameters(recurse=False))
                self.low_precision.update(f"{prefix}.{n}" if prefix else n for n in names)

    def cast(self, params: dict[str, Tensor]) -> dict[str, Tensor]:
        """The parameters the forward uses: conv/linear ones in ``dtype`` (differentiable cast)."""
        if self.dtype is None:
            return params
        return {k: v.to(self.dtype) if k in self.low_precision else v for k, v in params.items()}

    def __call__(self, params: dict[str, Tensor], buffers: dict[str, Tensor], x: Tensor) -> Tensor:
        return torch.func.functional_call(self.template, (params, buffers), (x,))


def stack_models(models: Sequence[nn.Module]) -> tuple[dict[str, nn.Parameter], dict[str, Tensor]]:
    """Stacked copies ``[K, ...]`` of the models' parameters (as new leaf Parameters) and buffers.

    Raises :class:`VmapUnsupported` when the models differ in architecture.
    """
    names = [tuple((n, p.shape, p.requires_grad) for n, p in m.named_parameters()) for m in models]
    bufs = [tuple((n, b.shape, b.dtype) for n, b in m.named_buffers()) for m in models]
    if any(n != names[0] for n in names) or any(b != bufs[0] for b in bufs):
        raise VmapUnsupported("the models differ in architecture (parameter or buffer names/shapes)")
    all_params = [dict(m.named_parameters()) for m in models]
    all_buffers = [dict(m.named_buffers()) for m in models]
    with torch.no_grad():
        params = {
            name: nn.Parameter(torch.stack([p[name] for p in all_params]), requires_grad=rg) for name, _, rg in names[0]
        }
        buffers = {name: torch.stack([b[name] for b in all_buffers]) for name, _, _ in bufs[0]}
    return params, buffers


def write_back(models: Sequence[nn.Module], params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
    """Copy slice ``k`` of the stacked parameters and buffers into ``models[k]``."""
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
            for name, b in model.named_buffers():
                b.copy_(buffers[name][k])
