"""Train several models of one architecture at once on one device.

:func:`train_models` has the semantics of calling
:func:`~mia_torch.training.trainer.train_model` once per model: model ``k`` trains on
``x[member_idx[k]]`` with its own data order and augmentation drawn from a generator
seeded with ``seeds[k]``, with the same optimizer, learning-rate schedule, label
smoothing and weight decay. Two strategies compute it:

- ``"vmap"``: the K models' parameters and buffers are stacked
  (:func:`torch.func.stack_module_state`) and one ``vmap``-ed
  :func:`torch.func.functional_call` runs all K forward/backward passes as single
  batched kernels (a conv of K models becomes one grouped conv); one optimizer over the
  stacked parameters updates all models per step (fused kernels on CUDA). This divides
  kernel launches and Python overhead by K, which is what limits small models on a GPU.
- ``"loop"``: one :func:`train_model` call per model. On CPU this is as fast or faster:
  the batching rules move the model axis into the channel axis, and the layout copies
  this needs cost more than the dispatch overhead they save. Measured on a 2-core CPU,
  4 models, vmap throughput relative to loop: SmallCNN 0.66x (28x28) and 0.83x (8x8),
  MLP 0.95x (28x28) and 1.23x (8x8); for signal collection 0.5-0.65x for the CNNs.

``"auto"`` (default) uses ``"vmap"`` on CUDA with more than one model and ``"loop"``
otherwise. ``"vmap"`` falls back to ``"loop"``, with a logged warning, when the models
cannot be stacked (different architectures), when an operation of the architecture has
no batching rule (the attempt fails on its first step, before any model is modified),
or when the members' counts differ too much for equal-shaped batches (see below).

Both strategies draw the same random numbers from each model's generator in the same
order as :func:`train_model` (the permutation at each epoch start, then the crop offsets
and flip coin flips of each batch), so each model sees exactly the batches and
augmentations that :func:`train_model` would give it and the two strategies agree up to
floating-point rounding (dropout, where a model has it, draws from the global generator
in both, so it differs between them).

Batches of different member counts. All K models take the same number of steps per
epoch, ``num_batches = max(1, round(max_k n_k / batch_size))`` (what
:func:`train_model` uses for the largest member set). Each model splits its own epoch
permutation into ``num_batches`` near-equal chunks (:func:`torch.tensor_split`, as
:func:`train_model`), so every member is seen exactly once per epoch. Chunks shorter
than the longest chunk of the step are padded, to stack, by repeating that model's own
examples of the same chunk (with the same augmentation); padded slots carry weight 0 in
the loss and the accuracy, so the gradient equals that of the unpadded chunk. They do
enter BatchNorm batch statistics, but only as duplicates of the model's own members, so
no non-member ever influences a model. With equal member counts nothing is padded. If
padding would exceed :data:`MAX_PAD_FRACTION` of all slots, the vmap strategy is not
used.

BatchNorm under vmap. Running statistics are kept as stacked per-model buffers passed to
``functional_call``; BatchNorm's in-place running-stat update then writes into each
model's slice of the stacked buffer, so trained models end with their own correct
running statistics (no ``replace_all_batch_norm_modules_``, which would drop them).

Mixed precision under vmap (CUDA). Autocast and vmap do not compose well: a vmapped conv
runs in float32 under autocast, and BatchNorm, which has no autocast policy, may receive
bf16 input next to float32 running statistics, a mix its batching rules reject
("Expected running_mean to have type BFloat16 but got Float"). The vmap strategy
therefore does its own mixed precision instead of autocast: conv and linear layers run
with bf16 copies of their float32 weights on bf16 input, and normalisation layers run on
float32 input with float32 parameters and statistics, casting their output back to bf16;
the loss is computed in float32 and the optimizer updates float32 weights, as with
autocast in :func:`train_model`.
"""

from __future__ import annotations

import copy
import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mia_torch.data.augment import apply_query, crop_flip, draw_crop_flip
from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import (
    TrainResult,
    _lr_lambda,
    evaluate,
    make_optimizer,
    train_model,
)

__all__ = ["MAX_PAD_FRACTION", "STRATEGIES", "collect_logits_many", "train_models"]

log = logging.getLogger(__name__)

#: Strategies accepted by :func:`train_models` and :func:`collect_logits_many`.
STRATEGIES = ("auto", "vmap", "loop")

#: Largest fraction of padded batch slots the vmap strategy accepts for unequal member counts.
MAX_PAD_FRACTION = 0.1


class _VmapUnsupported(Exception):
    """The models cannot be trained as one stacked ensemble; use the loop strategy."""


def resolve_strategy(strategy: str, device: torch.device, num_models: int) -> str:
    """The strategy ``"auto"`` stands for here: vmap on CUDA with several models, else loop."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if strategy == "auto":
        return "vmap" if device.type == "cuda" and num_models > 1 else "loop"
    return strategy


#: Layers whose weights the vmap strategy runs in the low-precision dtype (their input is cast to it).
_MATMUL_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
#: Layers the vmap strategy always runs in float32 (their output is cast back to the input's dtype).
_NORM_LAYERS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.modules.instancenorm._InstanceNorm)


def _compute_dtype(device: torch.device) -> torch.dtype | None:
    """The vmap strategy's forward dtype: bf16 on CUDA (as the trainer's autocast), else float32 (``None``)."""
    return torch.bfloat16 if device.type == "cuda" else None


def _cast_input(forward, dtype: torch.dtype | None):
    """Wrap a layer's forward to cast its input: to ``dtype``, or (``None``) to float32 and back."""

    def to_dtype(inp: Tensor) -> Tensor:
        return forward(inp.to(dtype))

    def in_float32(inp: Tensor) -> Tensor:
        if inp.dtype in (torch.float16, torch.bfloat16):
            return forward(inp.float()).to(inp.dtype)
        return forward(inp)

    return in_float32 if dtype is None else to_dtype


class _StackedNet:
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


def _stack(models: Sequence[nn.Module]) -> tuple[dict[str, nn.Parameter], dict[str, Tensor]]:
    """Stacked copies of the models' parameters (as new leaf Parameters) and buffers."""
    names = [tuple((n, p.shape, p.requires_grad) for n, p in m.named_parameters()) for m in models]
    bufs = [tuple((n, b.shape, b.dtype) for n, b in m.named_buffers()) for m in models]
    if any(n != names[0] for n in names) or any(b != bufs[0] for b in bufs):
        raise _VmapUnsupported("the models differ in architecture (parameter or buffer names/shapes)")
    all_params = [dict(m.named_parameters()) for m in models]
    all_buffers = [dict(m.named_buffers()) for m in models]
    with torch.no_grad():
        params = {
            name: nn.Parameter(torch.stack([p[name] for p in all_params]), requires_grad=rg) for name, _, rg in names[0]
        }
        buffers = {name: torch.stack([b[name] for b in all_buffers]) for name, _, _ in bufs[0]}
    return params, buffers


def _write_back(models: Sequence[nn.Module], params: dict[str, Tensor], buffers: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for k, model in enumerate(models):
            for name, p in model.named_parameters():
                p.copy_(params[name][k])
            for name, b in model.named_buffers():
                b.copy_(buffers[name][k])


def _split_layout(counts: list[int], num_batches: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """Positions of every batch slot in each model's epoch permutation.

    Returns ``pos [K, num_batches, B]`` (slot -> position in model k's permutation; padded
    slots repeat the chunk's own positions), ``valid [K, num_batches, B]`` (False on padded
    slots), ``sizes [K, num_batches]`` (real chunk sizes, as ``torch.tensor_split``) and
    the stacked batch size ``B``.
    """
    k_models = len(counts)
    sizes = torch.zeros((k_models, num_batches), dtype=torch.long)
    for k, n in enumerate(counts):
        base, extra = divmod(n, num_batches)
        sizes[k] = base
        sizes[k, :extra] += 1
    width = int(sizes.max())
    starts = torch.cumsum(sizes, 1) - sizes
    slot = torch.arange(width)
    pos = starts[..., None] + slot % sizes[..., None].clamp_min(1)
    valid = slot < sizes[..., None]
    return pos, valid, sizes, width


def _draws(
    generators: Sequence[torch.Generator], sizes: list[int], cfg: TrainConfig, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """Per-model crop offsets and flip coins, drawn as ``random_crop_flip`` draws them."""
    draws = [draw_crop_flip(b, padding=cfg.crop_padding, flip=cfg.flip, generator=gen, device=device)
             for gen, b in zip(generators, sizes)]
    offsets, coins = zip(*draws)
    return (torch.cat(offsets) if cfg.crop_padding else None), (torch.cat(coins) if cfg.flip else None)


def _train_vmap(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    member_idx: Sequence[Tensor],
    cfg: TrainConfig,
    seeds: Sequence[int],
) -> tuple[list[Tensor], list[Tensor]]:
    """The vmap strategy's training loop; returns per-epoch ``[K]`` loss and accuracy tensors.

    Nothing in ``models`` changes unless every step succeeds: training runs on stacked
    copies, written back at the end.
    """
    device = x.device
    k_models = len(models)
    counts = [len(m) for m in member_idx]
    num_batches = max(1, round(max(counts) / cfg.batch_size))
    if min(counts) < num_batches:
        raise _VmapUnsupported(f"member counts {min(counts)}..{max(counts)} are too uneven for equal steps")
    pos, valid, sizes, width = _split_layout(counts, num_batches)
    pad_fraction = 1 - sum(counts) / (k_models * num_batches * width)
    if pad_fraction > MAX_PAD_FRACTION:
        raise _VmapUnsupported(
            f"member counts {min(counts)}..{max(counts)} would pad {pad_fraction:.0%} of batch slots"
        )
    padded = bool((~valid).any())
    pos, valid = pos.to(device), valid.to(device)
    weight = valid.to(torch.float32)
    sizes_dev = sizes.to(device=device, dtype=torch.float32)
    sizes_host = sizes.tolist()
    # the draws of chunk j are concatenated model by model; slot (k, s) reads draw src[k, j, s]
    draw_start = torch.cumsum(sizes, 0) - sizes  # [K, nb]: offset of model k's draws in step j
    slot_in_chunk = torch.arange(width) % sizes[..., None].clamp_min(1)
    src = (draw_start[..., None] + slot_in_chunk).to(device)  # [K, nb, B]

    params, buffers = _stack(models)
    net = _StackedNet(models[0], _compute_dtype(device))
    net.template.train()
    batched = torch.func.vmap(net, randomness="different")
    if cfg.compile:
        batched = torch.compile(batched)
    optimizer = make_optimizer(nn.ParameterList(params.values()), cfg, device)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_lambda(cfg, cfg.epochs * num_batches, num_batches)
    )
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    members = [m.to(device) for m in member_idx]
    n_max = max(counts)
    counts_dev = torch.tensor(counts, device=device, dtype=torch.float32)
    epoch_loss, epoch_acc = [], []
    probing = True
    for _ in range(cfg.epochs):
        orders = torch.zeros((k_models, n_max), dtype=torch.long, device=device)
        for k, (m, gen) in enumerate(zip(members, generators)):
            orders[k, : counts[k]] = m[torch.randperm(counts[k], generator=gen, device=device)]
        batches = orders.gather(1, pos.view(k_models, -1)).view(k_models, num_batches, width)
        loss_sum = torch.zeros(k_models, device=device)
        correct = torch.zeros(k_models, device=device)
        for j in range(num_batches):
            idx = batches[:, j].contiguous()  # [K, B]
            offsets, coins = _draws(generators, [row[j] for row in sizes_host], cfg, device)
            if offsets is not None:
                offsets = offsets[src[:, j]].view(-1, 2)
            if coins is not None:
                coins = coins[src[:, j]].view(-1)
            xb = crop_flip(x[idx.view(-1)], padding=cfg.crop_padding, offsets=offsets, flips=coins).view(k_models, width, *x.shape[1:])
            yb = y[idx]
            optimizer.zero_grad(set_to_none=True)
            try:
                out = batched(net.cast(params), buffers, xb)
                per_example = F.cross_entropy(
                    out.float().flatten(0, 1), yb.view(-1), reduction="none", label_smoothing=cfg.label_smoothing
                ).view(k_models, width)
                if padded:
                    losses = (per_example * weight[:, j]).sum(1) / sizes_dev[:, j]
                else:
                    losses = per_example.mean(1)
                loss = losses.sum()  # model k's gradient only depends on its own term
                loss.backward()
            except (RuntimeError, NotImplementedError) as err:
                if not probing:
                    raise
                # the first step shows whether the architecture runs under vmap (batching
                # rules, memory for K models); the models are still untouched here
                raise _VmapUnsupported(f"{type(err).__name__}: {err}") from err
            probing = False
            optimizer.step()
            scheduler.step()
            hits = (out.detach().argmax(-1) == yb).float()
            loss_sum += losses.detach() * sizes_dev[:, j]
            correct += (hits * weight[:, j]).sum(1) if padded else hits.sum(1)
        epoch_loss.append(loss_sum / counts_dev)
        epoch_acc.append(correct / counts_dev)
    _write_back(models, params, buffers)
    return epoch_loss, epoch_acc


def train_models(
    models: list[nn.Module],
    x: Tensor,
    y: Tensor,
    member_idx: list[Tensor],
    cfg: TrainConfig,
    *,
    seeds: list[int],
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    strategy: str = "auto",
) -> list[TrainResult]:
    """Train ``models[k]`` in place on ``x[member_idx[k]]`` with seed ``seeds[k]``; one result each.

    Equivalent to ``[train_model(m, x, y, i, cfg, seed=s, x_test=..., y_test=...) for ...]``
    (same metrics keys), computed by ``strategy``: ``"vmap"`` trains all models in one
    batched step, ``"loop"`` one after the other, ``"auto"`` picks vmap on CUDA with
    several models and loop otherwise (see the module docstring for the measurements,
    the BatchNorm handling, the padding of unequal member counts and the fallback from
    vmap to loop, which is logged as a warning).
    """
    k_models = len(models)
    if k_models == 0:
        raise ValueError("train_models needs at least one model")
    if len(member_idx) != k_models or len(seeds) != k_models:
        raise ValueError(
            f"train_models got {k_models} models, {len(member_idx)} member index sets and {len(seeds)} seeds"
        )
    for k, m in enumerate(member_idx):
        if len(m) == 0:
            raise ValueError(f"model {k} has no training examples: the population is too small for the split")
    device = x.device
    chosen = resolve_strategy(strategy, device, k_models)

    def loop() -> list[TrainResult]:
        return [
            train_model(model, x, y, idx, cfg, seed=int(seed), x_test=x_test, y_test=y_test)
            for model, idx, seed in zip(models, member_idx, seeds)
        ]

    if chosen == "loop":
        return loop()
    for model in models:
        model.to(device)
    try:
        epoch_loss, epoch_acc = _train_vmap(models, x, y, member_idx, cfg, seeds)
    except _VmapUnsupported as err:
        log.warning("training %d models one at a time: the vmap ensemble is not usable here (%s)", k_models, err)
        return loop()
    losses = torch.stack(epoch_loss, 1).tolist()  # one host sync for all models
    accs = torch.stack(epoch_acc, 1).tolist()
    results = []
    for k, model in enumerate(models):
        idx = member_idx[k].to(device)
        train_loss, train_acc = evaluate(model, x[idx], y[idx], batch_size=cfg.eval_batch_size)
        metrics: dict[str, float | list[float]] = {
            "train_loss": train_loss,
            "train_acc": train_acc,
            "epoch_train_loss": losses[k],
            "epoch_train_acc": accs[k],
        }
        if x_test is not None and y_test is not None:
            metrics["test_loss"], metrics["test_acc"] = evaluate(model, x_test, y_test, batch_size=cfg.eval_batch_size)
        model.eval()
        results.append(TrainResult(metrics=metrics))
    return results


@torch.no_grad()
def collect_logits_many(
    models: list[nn.Module],
    x: Tensor,
    queries: Sequence[str],
    *,
    batch_size: int = 2048,
    dtype: torch.dtype = torch.float32,
    strategy: str = "auto",
) -> Tensor:
    """Logits ``[K, N, Q, C]`` of each of ``models`` on ``x`` under each query view.

    Row ``k`` equals :func:`~mia_torch.signals.collect.collect_logits` of ``models[k]``
    (eval mode). ``"vmap"`` runs all models in one batched forward per batch of views,
    ``"loop"`` calls ``collect_logits`` per model, ``"auto"`` picks vmap on CUDA with
    several models and loop otherwise; vmap falls back to loop (logged) when the models
    cannot be stacked or the architecture has no batching rule.
    """
    from mia_torch.signals.collect import collect_logits

    if not models:
        raise ValueError("collect_logits_many needs at least one model")
    device = x.device
    chosen = resolve_strategy(strategy, device, len(models))

    def loop() -> Tensor:
        return torch.stack([collect_logits(m, x, queries, batch_size=batch_size, dtype=dtype) for m in models])

    if chosen == "loop":
        return loop()
    try:
        for model in models:
            model.to(device).eval()
        params, buffers = _stack(models)
        net = _StackedNet(models[0], _compute_dtype(device))
        net.template.eval()
        params = net.cast(params)
        batched = torch.func.vmap(net, in_dims=(0, 0, None))
        num_queries = len(queries)
        out: Tensor | None = None
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            views = torch.cat([apply_query(xb, q) for q in queries])
            if device.type == "cuda" and views.ndim == 4:
                views = views.contiguous(memory_format=torch.channels_last)
            logits = batched(params, buffers, views)  # [K, Q * b, C]
            logits = logits.view(len(models), num_queries, len(xb), -1).transpose(1, 2)
            if out is None:
                out = torch.empty((len(models), len(x), num_queries, logits.shape[-1]), dtype=dtype, device=device)
            out[:, start : start + len(xb)] = logits.to(dtype)
    except (_VmapUnsupported, RuntimeError, NotImplementedError) as err:
        log.warning("querying %d models one at a time: the vmap ensemble is not usable here (%s)", len(models), err)
        return loop()
    if out is None:
        raise ValueError("collect_logits_many needs at least one example")
    return out
