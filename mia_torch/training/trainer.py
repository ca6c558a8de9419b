"""Train one model on a subset of a device-resident dataset.

The whole dataset stays on the compute device; batches are index gathers, augmentation
runs on the device, and running loss/accuracy are accumulated as device tensors, so
the step loop never waits on the host (early stopping reads the validation metric once
per epoch). On CUDA the forward pass runs under bf16 autocast with channels_last memory
and a fused optimizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mia_torch.compute import CPU_EVAL_BATCH, autocast
from mia_torch.data.augment import augment_batch, draw_augment, mix, mixup_cross_entropy, mixup_lambdas
from mia_torch.training.config import TrainConfig
from mia_torch.training.early_stopping import EarlyStopping


@dataclass
class TrainResult:
    """Metrics of a trained model; the model itself is trained in place."""

    metrics: dict[str, Any] = field(default_factory=dict)


def _lr_lambda(cfg: TrainConfig, total_steps: int, steps_per_epoch: int):
    warmup = int(cfg.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule in ("linear", "onecycle"):
            return max(0.0, 1 - progress)
        if cfg.schedule == "step":
            return 0.1 ** int(progress * 3)
        return 1.0

    return factor


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.Optimizer:
    """SGD (momentum, Nesterov) or Adam; fused kernels on CUDA."""
    extra = {"fused": True} if device.type == "cuda" else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(),
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
            **extra,
        )
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, **extra)


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The ``train.schedule`` learning-rate schedule (with warmup) over ``epochs * steps_per_epoch`` steps."""
    total = cfg.epochs * steps_per_epoch
    return torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(cfg, total, steps_per_epoch))


#: On CPU, oneDNN's NHWC weight gradient of a strided 1x1 conv with fewer input channels
#: than its channel block (8 with AVX2, 16 with AVX-512) writes past its workspace: heap
#: corruption or wrong gradients (uxlfoundation/oneDNN#6035; e.g. ResNet-18 with width < 16).
_CPU_NHWC_MIN_STRIDED_1X1_CHANNELS = 16


def _cpu_nhwc_unsafe(conv: nn.modules.conv._ConvNd) -> bool:
    return (all(k == 1 for k in conv.kernel_size) and any(s > 1 for s in conv.stride)
            and conv.in_channels // conv.groups < _CPU_NHWC_MIN_STRIDED_1X1_CHANNELS)


def use_channels_last(model: nn.Module, x: torch.Tensor) -> bool:
    """NHWC for conv nets on images: tensor cores on CUDA, and oneDNN's much faster pool/norm kernels on CPU.

    Not on CPU for a model with a narrow strided 1x1 conv, whose NHWC backward oneDNN gets wrong.
    """
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if x.ndim != 4 or not convs:
        return False
    return x.device.type != "cpu" or not any(_cpu_nhwc_unsafe(c) for c in convs)


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 2048) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``(x, y)`` (one host sync at the end)."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    if x.device.type == "cpu":
        batch_size = min(batch_size, CPU_EVAL_BATCH)
    loss_sum = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device)
    for start in range(0, len(y), batch_size):
        xb, yb = x[start : start + batch_size], y[start : start + batch_size]
        with autocast(x.device):
            out = model(xb).float()
        loss_sum += F.cross_entropy(out, yb, reduction="sum")
        correct += (out.argmax(1) == yb).sum()
    return (loss_sum / len(y)).item(), (correct / len(y)).item()


def early_stopping_for(cfg: TrainConfig, val_idx: torch.Tensor | None) -> EarlyStopping | None:
    """An :class:`EarlyStopping` tracker when ``train.early_stopping`` is on (which needs ``val_idx``), else None."""
    if not cfg.early_stopping.enabled:
        return None
    if val_idx is None or len(val_idx) == 0:
        raise ValueError("train.early_stopping needs a validation split: pass val_idx "
                         "(see mia_torch.data.splits.carve_validation)")
    return EarlyStopping(cfg.early_stopping)


def end_of_epoch(stopper: EarlyStopping | None, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 val_idx: torch.Tensor | None, cfg: TrainConfig) -> bool:
    """Early stopping's per-epoch check on the validation split; returns whether to stop (model left in train mode)."""
    if stopper is None or val_idx is None:
        return False
    val_idx = val_idx.to(x.device)
    loss, acc = evaluate(model, x[val_idx], y[val_idx], batch_size=cfg.eval_batch_size)
    model.train()
    return stopper.update(model, loss=loss, acc=acc)


def final_metrics(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    member_idx: torch.Tensor,
    cfg: TrainConfig,
    *,
    epoch_loss: Sequence[float],
    epoch_acc: Sequence[float],
    stopper: EarlyStopping | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Restore the best epoch (early stopping), put the model in eval mode and measure it.

    Keys: ``train_loss``/``train_acc`` (on its members), ``test_loss``/``test_acc`` (with a
    test set), the per-epoch ``epoch_train_loss``/``epoch_train_acc`` of the epochs run, and
    with early stopping ``best_epoch``, ``stopped_epoch``, ``val_loss``/``val_acc`` and the
    per-epoch validation curves.
    """
    if stopper is not None:
        stopper.restore(model)
    member_idx = member_idx.to(x.device)
    train_loss, train_acc = evaluate(model, x[member_idx], y[member_idx], batch_size=cfg.eval_batch_size)
    metrics: dict[str, Any] = {
        "train_loss": train_loss,
        "train_acc": train_acc,
        "epoch_train_loss": list(epoch_loss),
        "epoch_train_acc": list(epoch_acc),
    }
    if x_test is not None and y_test is not None:
        metrics["test_loss"], metrics["test_acc"] = evaluate(model, x_test, y_test, batch_size=cfg.eval_batch_size)
    if stopper is not None:
        metrics.update(stopper.metrics())
    model.eval()
    return metrics


def train_model(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    member_idx: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    val_idx: torch.Tensor | None = None,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
) -> TrainResult:
    """Train ``model`` in place on ``x[member_idx]`` and return its train/test metrics.

    Data order and augmentation (``train.augment``, see :mod:`mia_torch.data.augment`) come
    from a generator seeded with ``seed``; batches are near-equal splits of each epoch's
    permutation, so no batch is tiny. With ``train.early_stopping``, ``x[val_idx]`` (never
    trained on) is evaluated after every epoch, training stops after ``patience`` epochs
    without improvement and the best epoch's weights are restored.
    """
    device = x.device
    if len(member_idx) == 0:
        raise ValueError("a model has no training examples: the population is too small for the split")
    stopper = early_stopping_for(cfg, val_idx)
    model.to(device)
    if use_channels_last(model, x):
        model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if cfg.compile else model
    generator = torch.Generator(device=device).manual_seed(seed)
    member_idx = member_idx.to(device)
    num_batches = max(1, round(len(member_idx) / cfg.batch_size))
    optimizer = make_optimizer(model, cfg, device)
    scheduler = make_scheduler(optimizer, cfg, num_batches)
    aug = cfg.augment
    lams = mixup_lambdas(aug.mixup_alpha, cfg.epochs * num_batches, seed=seed, device=device) if aug.mixes else None
    epoch_loss, epoch_acc = [], []
    step = 0
    model.train()
    for _ in range(cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device)
        order = member_idx[torch.randperm(len(member_idx), generator=generator, device=device)]
        for batch in torch.tensor_split(order, num_batches):
            draws = draw_augment(len(batch), aug, image_size=tuple(x.shape[2:]), generator=generator, device=device)
            xb, yb = augment_batch(x[batch], draws, aug), y[batch]
            if lams is not None:
                xb = mix(xb, draws.partners, lams[step])
            with autocast(device):
                out = step_model(xb)
                if lams is None:
                    loss = F.cross_entropy(out.float(), yb, label_smoothing=cfg.label_smoothing)
                else:
                    loss = mixup_cross_entropy(out.float(), yb, draws.partners, lams[step],
                                               label_smoothing=cfg.label_smoothing).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_sum += loss.detach() * len(batch)
            correct += (out.detach().argmax(1) == yb).sum()
        epoch_loss.append(loss_sum / len(member_idx))
        epoch_acc.append(correct / len(member_idx))
        if end_of_epoch(stopper, model, x, y, val_idx, cfg):
            break
    metrics = final_metrics(model, x, y, member_idx, cfg, epoch_loss=torch.stack(epoch_loss).tolist(),
                            epoch_acc=torch.stack(epoch_acc).tolist(), stopper=stopper, x_test=x_test, y_test=y_test)
    return TrainResult(metrics=metrics)
