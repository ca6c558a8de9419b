"""Train several models of one architecture at once on one device.

:func:`train_models` has the semantics of calling
:func:`~mia_torch.training.trainer.train_model` once per model: model ``k`` trains on
``x[member_idx[k]]`` with its own data order and augmentation drawn from a generator
seeded with ``seeds[k]``, with the same optimizer, learning-rate schedule, label
smoothing, weight decay, augmentation and early stopping. Two strategies compute it:

- ``"vmap"``: the K models' parameters and buffers are stacked and one ``vmap``-ed
  functional call runs all K forward/backward passes as single batched kernels (a conv of
  K models becomes one grouped conv; see :mod:`mia_torch.training.stacking` for
  BatchNorm and mixed precision); one optimizer over the stacked parameters updates all
  models per step (fused kernels on CUDA). This divides kernel launches and Python
  overhead by K, which is what limits small models on a GPU.
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
order as :func:`train_model` (the permutation at each epoch start, then each batch's
crop offsets, flip coins, cutout centres and mixup partners; mixup coefficients come from
the model's seeded NumPy stream, :func:`~mia_torch.data.augment.mixup_lambdas`), so each
model sees exactly the batches and augmentations that :func:`train_model` would give it
and the two strategies agree up to floating-point rounding (dropout, where a model has
it, draws from the global generator in both, so it differs between them).

Early stopping. After every epoch the stacked weights are written back and each model
still running is evaluated on its own validation split, exactly as :func:`train_model`
does; a model that has stopped keeps being updated in the stack (its later epochs are
discarded: its best epoch's weights are restored and its curves end at its stopping
epoch), and the loop ends when every model has stopped.

Batches of different member counts. All K models take the same number of steps per
epoch, ``num_batches = max(1, round(max_k n_k / batch_size))`` (what
:func:`train_model` uses for the largest member set). Each model splits its own epoch
permutation into ``num_batches`` near-equal chunks (:func:`torch.tensor_split`, as
:func:`train_model`), so every member is seen exactly once per epoch. Chunks shorter
than the longest chunk of the step are padded, to stack, by repeating that model's own
examples of the same chunk (with the same augmentation and mixup partner); padded slots
carry weight 0 in the loss and the accuracy, so the gradient equals that of the unpadded
chunk. They do enter BatchNorm batch statistics, but only as duplicates of the model's
own members, so no non-member ever influences a model. With equal member counts nothing
is padded. If padding would exceed :data:`MAX_PAD_FRACTION` of all slots, the vmap
strategy is not used.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mia_torch.data.augment import (
    AugmentConfig,
    AugmentDraws,
    augment_batch,
    draw_augment,
    mix,
    mixup_cross_entropy,
    mixup_lambdas,
)
from mia_torch.training.config import TrainConfig
from mia_torch.training.early_stopping import EarlyStopping
from mia_torch.training.stacking import (
    StackedNet,
    VmapUnsupported,
    compute_dtype,
    resolve_strategy,
    stack_models,
    write_back,
)
from mia_torch.training.trainer import (
    TrainResult,
    early_stopping_for,
    end_of_epoch,
    final_metrics,
    make_optimizer,
    make_scheduler,
    train_model,
)

__all__ = ["MAX_PAD_FRACTION", "train_models"]

log = logging.getLogger(__name__)

#: Largest fraction of padded batch slots the vmap strategy accepts for unequal member counts.
MAX_PAD_FRACTION = 0.1


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


def _stacked_draws(
    generators: Sequence[torch.Generator], sizes: list[int], aug: AugmentConfig, src: Tensor, *,
    image_size: tuple[int, ...], device: torch.device,
) -> AugmentDraws:
    """Each model's draws for its real chunk (as ``train_model`` draws them), laid out on the ``[K * B]`` slots.

    ``src[k, s]`` is the index, in the model-by-model concatenation of the draws, that
    slot ``(k, s)`` reads; mixup partners become slot indices in the flattened batch.
    """
    per_model = [draw_augment(b, aug, image_size=image_size, generator=g, device=device)
                 for g, b in zip(generators, sizes)]

    def laid_out(name: str) -> Tensor | None:
        parts = [getattr(d, name) for d in per_model]
        return None if parts[0] is None else torch.cat(parts)[src]

    offsets, flips, centers, partners = (laid_out(n) for n in ("offsets", "flips", "centers", "partners"))
    if partners is not None:
        k_models, width = src.shape
        partners = (partners + torch.arange(k_models, device=device)[:, None] * width).view(-1)
    return AugmentDraws(
        offsets=None if offsets is None else offsets.view(-1, 2),
        flips=None if flips is None else flips.view(-1),
        centers=None if centers is None else centers.view(-1, 2),
        partners=partners,
    )


def _stopped(stopper: EarlyStopping | None) -> bool:
    """Whether early stopping has ended this model's training (never without early stopping)."""
    return stopper is not None and stopper.stopped


def _until_stop(curve: list[float], stopper: EarlyStopping | None) -> list[float]:
    """A model's per-epoch ``curve`` up to the epoch it stopped at (the stack trains on after it)."""
    return curve if stopper is None else curve[:stopper.epochs]


def _train_vmap(
    models: Sequence[nn.Module],
    x: Tensor,
    y: Tensor,
    member_idx: Sequence[Tensor],
    cfg: TrainConfig,
    seeds: Sequence[int],
    val_idx: Sequence[Tensor | None],
) -> tuple[list[list[float]], list[list[float]], list[EarlyStopping | None]]:
    """The vmap strategy's training loop; returns each model's per-epoch loss and accuracy and early stopping.

    Nothing in ``models`` changes until the first step succeeds: training runs on stacked
    copies, written back after every epoch with early stopping and at the end.
    """
    device = x.device
    k_models = len(models)
    counts = [len(m) for m in member_idx]
    num_batches = max(1, round(max(counts) / cfg.batch_size))
    if min(counts) < num_batches:
        raise VmapUnsupported(f"member counts {min(counts)}..{max(counts)} are too uneven for equal steps")
    pos, valid, sizes, width = _split_layout(counts, num_batches)
    pad_fraction = 1 - sum(counts) / (k_models * num_batches * width)
    if pad_fraction > MAX_PAD_FRACTION:
        raise VmapUnsupported(f"member counts {min(counts)}..{max(counts)} would pad {pad_fraction:.0%} of batch slots")
    stoppers = [early_stopping_for(cfg, v) for v in val_idx]
    padded = bool((~valid).any())
    pos, valid = pos.to(device), valid.to(device)
    weight = valid.to(torch.float32)
    sizes_dev = sizes.to(device=device, dtype=torch.float32)
    sizes_host = sizes.tolist()
    # the draws of chunk j are concatenated model by model; slot (k, s) reads draw src[k, j, s]
    draw_start = torch.cumsum(sizes, 0) - sizes  # [K, nb]: offset of model k's draws in step j
    slot_in_chunk = torch.arange(width) % sizes[..., None].clamp_min(1)
    src = (draw_start[..., None] + slot_in_chunk).to(device)  # [K, nb, B]

    params, buffers = stack_models(models)
    net = StackedNet(models[0], compute_dtype(device))
    net.template.train()
    batched = torch.func.vmap(net, randomness="different")
    if cfg.compile:
        batched = torch.compile(batched)
    optimizer = make_optimizer(nn.ParameterList(params.values()), cfg, device)
    scheduler = make_scheduler(optimizer, cfg, num_batches)
    aug = cfg.augment
    lams = None
    if aug.mixes:  # [K, steps] -> one coefficient per slot of each step
        lams = torch.stack([mixup_lambdas(aug.mixup_alpha, cfg.epochs * num_batches, seed=int(s), device=device)
                            for s in seeds]).repeat_interleave(width, 0).view(k_models * width, -1)
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    members = [m.to(device) for m in member_idx]
    n_max = max(counts)
    counts_dev = torch.tensor(counts, device=device, dtype=torch.float32)
    example_shape = tuple(x.shape[1:])
    epoch_loss, epoch_acc = [], []
    probing = True
    for epoch in range(cfg.epochs):
        orders = torch.zeros((k_models, n_max), dtype=torch.long, device=device)
        for k, (m, gen) in enumerate(zip(members, generators)):
            orders[k, : counts[k]] = m[torch.randperm(counts[k], generator=gen, device=device)]
        batches = orders.gather(1, pos.view(k_models, -1)).view(k_models, num_batches, width)
        loss_sum = torch.zeros(k_models, device=device)
        correct = torch.zeros(k_models, device=device)
        for j in range(num_batches):
            idx = batches[:, j].contiguous()  # [K, B]
            draws = _stacked_draws(generators, [row[j] for row in sizes_host], aug, src[:, j],
                                   image_size=example_shape[1:], device=device)
            xb = augment_batch(x[idx.view(-1)], draws, aug)
            lam = None if lams is None else lams[:, epoch * num_batches + j]
            if lam is not None:
                xb = mix(xb, draws.partners, lam)
            xb = xb.view(k_models, width, *example_shape)
            yb = y[idx]
            optimizer.zero_grad(set_to_none=True)
            try:
                out = batched(net.cast(params), buffers, xb)
                flat = out.float().flatten(0, 1)
                if lam is None:
                    per_example = F.cross_entropy(flat, yb.view(-1), reduction="none",
                                                  label_smoothing=cfg.label_smoothing)
                else:
                    per_example = mixup_cross_entropy(flat, yb.view(-1), draws.partners, lam,
                                                      label_smoothing=cfg.label_smoothing)
                per_example = per_example.view(k_models, width)
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
                raise VmapUnsupported(f"{type(err).__name__}: {err}") from err
            probing = False
            optimizer.step()
            scheduler.step()
            hits = (out.detach().argmax(-1) == yb).float()
            loss_sum += losses.detach() * sizes_dev[:, j]
            correct += (hits * weight[:, j]).sum(1) if padded else hits.sum(1)
        epoch_loss.append(loss_sum / counts_dev)
        epoch_acc.append(correct / counts_dev)
        if cfg.early_stopping.enabled:
            write_back(models, params, buffers)
            for stopper, model, val in zip(stoppers, models, val_idx):
                if not _stopped(stopper):
                    end_of_epoch(stopper, model, x, y, val, cfg)
            if all(_stopped(s) for s in stoppers):
                break
    write_back(models, params, buffers)
    losses = torch.stack(epoch_loss, 1).tolist()  # one host sync for all models
    accs = torch.stack(epoch_acc, 1).tolist()
    return ([_until_stop(row, s) for row, s in zip(losses, stoppers)],
            [_until_stop(row, s) for row, s in zip(accs, stoppers)], stoppers)


def train_models(
    models: list[nn.Module],
    x: Tensor,
    y: Tensor,
    member_idx: list[Tensor],
    cfg: TrainConfig,
    *,
    seeds: list[int],
    val_idx: list[Tensor] | None = None,
    x_test: Tensor | None = None,
    y_test: Tensor | None = None,
    strategy: str = "auto",
) -> list[TrainResult]:
    """Train ``models[k]`` in place on ``x[member_idx[k]]`` with seed ``seeds[k]``; one result each.

    Equivalent to ``[train_model(m, x, y, i, cfg, seed=s, val_idx=v, x_test=..., y_test=...)
    for ...]`` (same metrics keys), computed by ``strategy``: ``"vmap"`` trains all models
    in one batched step, ``"loop"`` one after the other, ``"auto"`` picks vmap on CUDA with
    several models and loop otherwise (see the module docstring for the measurements,
    the padding of unequal member counts, early stopping and the fallback from vmap to
    loop, which is logged as a warning). ``val_idx[k]`` is model ``k``'s validation split
    (needed with ``train.early_stopping``).
    """
    k_models = len(models)
    if k_models == 0:
        raise ValueError("train_models needs at least one model")
    vals: list[Tensor | None] = list(val_idx) if val_idx is not None else [None] * k_models
    if len(member_idx) != k_models or len(seeds) != k_models or len(vals) != k_models:
        raise ValueError(f"train_models got {k_models} models, {len(member_idx)} member index sets, "
                         f"{len(seeds)} seeds and {len(vals)} validation sets")
    for k, m in enumerate(member_idx):
        if len(m) == 0:
            raise ValueError(f"model {k} has no training examples: the population is too small for the split")
    device = x.device

    def loop() -> list[TrainResult]:
        return [
            train_model(model, x, y, idx, cfg, seed=int(seed), val_idx=val, x_test=x_test, y_test=y_test)
            for model, idx, seed, val in zip(models, member_idx, seeds, vals)
        ]

    if resolve_strategy(strategy, device, k_models) == "loop":
        return loop()
    for model in models:
        model.to(device)
    try:
        losses, accs, stoppers = _train_vmap(models, x, y, member_idx, cfg, seeds, vals)
    except VmapUnsupported as err:
        log.warning("training %d models one at a time: the vmap ensemble is not usable here (%s)", k_models, err)
        return loop()
    return [
        TrainResult(metrics=final_metrics(model, x, y, idx, cfg, epoch_loss=loss, epoch_acc=acc, stopper=stopper,
                                          x_test=x_test, y_test=y_test))
        for model, idx, loss, acc, stopper in zip(models, member_idx, losses, accs, stoppers)
    ]
