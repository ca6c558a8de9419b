"""The field's common loops, the baseline of ``scripts/bench.py``.

Training: a ``Dataset`` applying a per-item random crop and flip
(``torchvision.transforms.v2``) in a ``DataLoader``, fp32, ``loss.item()`` every step for
logging. Signals: ``DataLoader`` batches of 256, fp32, one query at a time, logits to the
host. Both return their wall time in seconds.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from mia_torch.data.queries import apply_query
from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import make_scheduler


class AugmentedTensors(torch.utils.data.Dataset):
    """The usual research-code dataset: per-item tensor transforms on the host."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, transform: Callable | None = None) -> None:
        self.x, self.y, self.transform = x, y, transform

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        img = self.x[i]
        return (self.transform(img) if self.transform is not None else img), self.y[i]


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """``(seconds, result)`` of ``fn()``, synchronised with the device on both ends."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def naive_train(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
    cfg: TrainConfig, *, device: torch.device, num_workers: int, seed: int,
) -> float:
    """The reference loop, then train and test accuracy; returns its wall time in seconds."""
    from torchvision.transforms import v2

    ops = []
    if cfg.augment.crop_padding > 0:
        ops.append(v2.RandomCrop(x.shape[-2:], padding=cfg.augment.crop_padding, padding_mode="reflect"))
    if cfg.augment.flip:
        ops.append(v2.RandomHorizontalFlip())
    dataset = AugmentedTensors(x, y, v2.Compose(ops) if ops else None)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=True,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
    )
    model.to(device).train()
    optimizer = torch.optim.SGD(
        model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
    )
    scheduler = make_scheduler(optimizer, cfg, len(loader))
    sync(device)
    start = time.perf_counter()
    for _ in range(cfg.epochs):
        running = 0.0
        for xb, yb in loader:
            xb, yb = xb.to(device, non_blocking=True), yb.to(device, non_blocking=True)
            loss = F.cross_entropy(model(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
            running += loss.item()  # the per-step host sync of typical logging code
    # final train and test accuracy, as train_model reports them
    model.eval()
    with torch.no_grad():
        for xs, ys in ((x, y), (x_test, y_test)):
            correct = 0
            for xb, yb in torch.utils.data.DataLoader(AugmentedTensors(xs, ys), batch_size=256):
                correct += (model(xb.to(device)).argmax(1) == yb.to(device)).sum().item()
    sync(device)
    return time.perf_counter() - start


@torch.no_grad()
def naive_signals(model: nn.Module, x: torch.Tensor, queries: Sequence[str], *, device: torch.device,
                  num_workers: int) -> float:
    """Reference signal collection: DataLoader, fp32, batch 256, one query at a time."""
    loader = torch.utils.data.DataLoader(
        AugmentedTensors(x, torch.zeros(len(x), dtype=torch.long)),
        batch_size=256,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
    )
    model.to(device).eval()
    sync(device)
    start = time.perf_counter()
    per_query = []
    for q in queries:
        chunks = []
        for xb, _ in loader:
            chunks.append(model(apply_query(xb.to(device), q)).cpu())
        per_query.append(torch.cat(chunks))
    torch.stack(per_query, 1)
    sync(device)
    return time.perf_counter() - start
