"""Sizes no study means: refused before any work, with what they would cost, unless ``allow_large=true``.

A typo such as ``num_models=1000000`` or ``bootstrap=100000000`` is accepted by every type
check and then fills memory and disk for hours. :data:`LIMITS` are well above what published
studies use (LiRA trains 256 models; a thousand bootstrap resamples give stable 95%
intervals); past one, the run stops before it starts, with the estimated memory, disk and
time, and the one key that lets it run anyway: ``allow_large=true``.

The estimates are arithmetic on the sizes (the keep matrix is ``M x N`` bytes, the signals
``M x N x Q x C`` values, the weights ``M x parameters x 4`` bytes), and, for time, one
training step and a few bootstrap resamples measured on the spot, on the CPU; they are only
measured when a limit is exceeded.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from mia_torch.data.datasets import Dataset

__all__ = ["LIMITS", "OVERRIDE", "check_requested_population", "check_run_size"]

#: The key that lets a run exceed the limits.
OVERRIDE = "allow_large"
#: Largest size of each kind that runs without ``allow_large=true``: key -> (limit, why it is enough).
LIMITS: dict[str, tuple[int, str]] = {
    "num_models": (1024, "studies train at most a few hundred (LiRA: 256)"),
    "bootstrap": (10_000, "a thousand resamples give stable 95% intervals"),
    "queries": (64, "LiRA queries at most 18 views"),
    "population": (2_000_000, "ImageNet's training set has 1.28 million images"),
}


@dataclass(frozen=True)
class RunSize:
    """The sizes that drive a run's cost; 0 where not known yet."""

    models: int
    population: int
    queries: int
    classes: int
    signal_bytes: int
    parameters: int = 0
    input_values: int = 0
    bootstrap: int = 0
    metrics: int = 4
    rocs: int = 0

    def estimates(self) -> list[str]:
        """Memory and disk, in words."""
        m, n = self.models, self.population
        lines = [f"keep matrix {_bytes(m * n)} (memory, and keep.npy in the run directory)",
                 f"signals {_bytes(m * n * self.queries * max(self.classes, 1) * self.signal_bytes)} "
                 f"({m} models x {n} records x {self.queries} queries x {self.classes or 'C'} classes; in the store "
                 "and signals.npy with save_signals=true)"]
        if self.input_values:
            lines.append(f"data {_bytes(n * self.input_values * 4)} in memory")
        if self.parameters:
            lines.append(f"model weights {_bytes(m * self.parameters * 4)} in the store")
        if self.bootstrap:
            lines.append(f"bootstrap {_bytes(self.bootstrap * self.metrics * 8)} of resampled metrics per ROC "
                         f"({self.rocs} ROCs)")
        return lines


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:.3g} PB"


def _duration(seconds: float) -> str:
    for unit, size in (("years", 365.25 * 86400), ("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.3g} {unit}"
    return f"{seconds:.3g} s"


def _exceeded(sizes: Mapping[str, int]) -> list[str]:
    return [f"{key}={value} is above {LIMITS[key][0]} ({LIMITS[key][1]})" for key, value in sizes.items()
            if value > LIMITS[key][0]]


def _refusal(exceeded: list[str], estimates: list[str]) -> ValueError:
    return ValueError(
        "size(s) no study means: " + "; ".join(exceeded) + ". Estimated cost: " + "; ".join(estimates)
        + f". If you mean it, set {OVERRIDE}=true; otherwise lower the value."
    )


def check_requested_population(config: Mapping[str, Any], *, queries: int) -> None:
    """Before loading data: refuse a population the config asks for (``dataset.num_examples`` or
    ``dataset.population_size``) above the limit, unless ``allow_large``; ``queries`` is the number of views."""
    dataset = config.get("dataset") or {}
    if config.get(OVERRIDE, False):
        return
    for key in ("population_size", "num_examples"):
        value = dataset.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > LIMITS["population"][0]:
            size = RunSize(models=int(config.get("num_models") or 0), population=value,
                           queries=queries, classes=int(dataset.get("num_classes") or 0),
                           signal_bytes=4)
            exceeded = [f"dataset.{key}={value} records is above {LIMITS['population'][0]} "
                        f"({LIMITS['population'][1]})"]
            raise _refusal(exceeded, size.estimates())


def _seconds_per_step(model: "torch.nn.Module", x: "torch.Tensor", y: "torch.Tensor", batch_size: int) -> float:
    """One SGD training step of a copy of ``model`` on ``batch_size`` records, measured on the CPU (best of 3)."""
    import torch

    model = copy.deepcopy(model).cpu().train()
    index = torch.arange(batch_size) % len(y)
    xb, yb = x[index].cpu(), y[index].cpu()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        best = min(best, time.perf_counter() - start)
    return best


def _seconds_per_resample(population: int, fpr_targets: tuple[float, ...]) -> float:
    """One stratified bootstrap resample of ``population`` scores, measured (best of 3)."""
    import numpy as np

    from mia_torch.metrics.bootstrap import bootstrap_samples

    rng = np.random.default_rng(0)
    scores, members = rng.normal(size=population), np.arange(population) % 2 == 0
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        bootstrap_samples(scores, members, fpr_targets=fpr_targets, num_resamples=4)
        best = min(best, (time.perf_counter() - start) / 4)
    return best


def check_run_size(settings: Any, data: "Dataset", model: "torch.nn.Module") -> None:
    """After loading the data, before splits or training: refuse sizes above :data:`LIMITS` (unless
    ``allow_large``), with the estimated memory, disk and time. ``settings`` are the run's validated
    :class:`~mia_torch.settings.load.Settings` (not imported here: they import this module); ``model`` is one
    freshly built model."""
    if settings.allow_large:
        return
    population = len(data.y)
    exceeded = _exceeded({"num_models": settings.num_models, "bootstrap": settings.bootstrap,
                          "queries": len(settings.queries), "population": population})
    if not exceeded:
        return
    rocs = len(settings.attacks) * (2 * len(settings.target_ids) + 1)  # per target, its sanity twin, and pooled
    size = RunSize(models=settings.num_models, population=population, queries=len(settings.queries),
                   classes=data.num_classes, signal_bytes=settings.signals_dtype.itemsize,
                   parameters=sum(p.numel() for p in model.parameters()),
                   input_values=math.prod(data.input_shape), bootstrap=settings.bootstrap,
                   metrics=2 + len(settings.fpr_targets), rocs=rocs)
    estimates = size.estimates()
    train = settings.train
    steps = settings.num_models * train.epochs * math.ceil(population / 2 / train.batch_size)
    step_s = _seconds_per_step(model, data.x, data.y, train.batch_size)
    estimates.append(f"training about {_duration(steps * step_s)} ({steps:.3g} steps of {train.batch_size} records, "
                     f"{step_s * 1e3:.3g} ms each measured here on the CPU)")
    if settings.bootstrap:
        resample_s = _seconds_per_resample(population, settings.fpr_targets)
        estimates.append(f"bootstrap about {_duration(resample_s * settings.bootstrap * rocs)} "
                         f"({settings.bootstrap} resamples x {rocs} ROCs, {resample_s * 1e6:.3g} µs each measured "
                         "here)")
    raise _refusal(exceeded, estimates)
