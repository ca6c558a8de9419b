"""What ``scripts/bench.py`` measures on: the data, the models, their FLOPs and the machine."""

from __future__ import annotations

import copy
import os
import platform
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from mia_torch.models import MLP, FastCifarCNN, ResNet18, SmallCNN, WideResNet

MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": SmallCNN,
    "cifar_cnn": FastCifarCNN,
    "resnet18": ResNet18,
    "wrn28_2": lambda **kw: WideResNet(depth=28, widen_factor=2, **kw),
    "mlp": MLP,
}
DATASETS = {"synthetic-cifar": (3, 32, 32), "synthetic-mnist": (1, 28, 28), "digits": (1, 8, 8)}


def make_data(name: str, num_train: int, num_test: int, seed: int) -> tuple[torch.Tensor, ...]:
    """``x, y, x_test, y_test`` (CPU float32, normalised), 10 classes: prototypes plus noise."""
    if name == "digits":
        from mia_torch.data.builtin import Digits
        from mia_torch.data.loader import load_dataset

        data = load_dataset(Digits(), root=None, seed=seed)
        x, y = data.x[:num_train], data.y[:num_train]
        return x, y, data.x_test[:num_test], data.y_test[:num_test]
    shape = DATASETS[name]
    g = torch.Generator().manual_seed(seed)
    # smooth, mirror-symmetric class prototypes: crops and flips keep the class
    coarse = torch.randn((10, shape[0], max(2, shape[1] // 4), max(2, shape[2] // 4)), generator=g)
    prototypes = F.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)
    prototypes = (prototypes + prototypes.flip(-1)) / 2
    n = num_train + num_test
    y = torch.randint(0, 10, (n,), generator=g)
    x = prototypes[y] + 3.0 * torch.randn((n, *shape), generator=g)
    x = (x - x.mean()) / x.std()
    return x[:num_train], y[:num_train], x[num_train:], y[num_train:]


def count_flops(model: nn.Module, shape: tuple[int, ...], *, batch: int = 2) -> dict[str, float] | None:
    """FLOPs per image of one forward pass and of one forward + backward pass, or ``None``.

    Counted on a float32 CPU copy of ``model`` in training mode with
    :class:`torch.utils.flop_counter.FlopCounterMode` (matrix multiplies and convolutions,
    the ops that dominate; elementwise ops are not counted). ``None`` when counting fails
    or finds no FLOPs.
    """
    from torch.utils.flop_counter import FlopCounterMode

    probe = copy.deepcopy(model).float().cpu().train()
    x = torch.randn((batch, *shape))
    try:
        with FlopCounterMode(display=False) as forward, torch.no_grad():
            probe(x)
        with FlopCounterMode(display=False) as training:
            probe(x).float().sum().backward()
    except Exception:  # noqa: BLE001 - an uncountable model just has no TFLOP/s column
        return None
    if forward.get_total_flops() <= 0:
        return None
    return {"forward": forward.get_total_flops() / batch, "train": training.get_total_flops() / batch}


def machine(device: torch.device) -> dict[str, object]:
    """CPU model, core and thread counts, versions, the device (and GPU name) and the load average."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    if hasattr(os, "getloadavg"):
        info["load_avg_1min_at_start"] = round(os.getloadavg()[0], 2)
    return info
