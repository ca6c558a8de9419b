"""Per-example sums ``log Σ_r exp(x[r, n])`` over models, from which a few models can be taken out exactly.

RMIA averages probabilities over reference models in log space. A study fits every target
on "all models but the target and its twin", and calibrates by leaving one more out:
recomputing each sum from scratch costs a pass over all models per target. Subtracting
the left-out terms from a total instead loses every digit when they dominate it (one
confident model among unconfident ones), so :class:`LogSums` keeps, per example, the
``TOP`` largest terms apart from the sum of the rest, scaled by the smallest kept term.
Taking out up to ``TOP - 1`` models never cancels: at least one kept top term remains, it
bounds every other remaining term, and the rest is a sum of terms no larger than it (an
error of at most R ulps of the result), with no overflow however far apart the terms are.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

__all__ = ["CHUNK", "TOP", "LogSums", "LogSumsBuilder", "model_chunks"]

#: Largest terms kept apart per example: up to TOP - 1 models can be taken out exactly.
TOP = 4
#: Models read at a time while the sums are built.
CHUNK = 64


@dataclass(frozen=True)
class LogSums:
    """``log Σ exp(x[r, n])`` over the counted models r of a set, per example n.

    ``top [TOP, N]`` holds the largest counted terms (descending, ``-inf`` padding) and
    ``index [TOP, N]`` their models (-1 for padding); ``rest [N]`` is ``Σ exp(x - top[-1])``
    over the other counted terms (each at most ``top[-1]``); ``count [N]`` is the number of
    counted models.
    """

    top: torch.Tensor
    index: torch.Tensor
    rest: torch.Tensor
    count: torch.Tensor

    @classmethod
    def of(cls, x: torch.Tensor, counted: torch.Tensor, *, chunk: int = CHUNK) -> LogSums:
        """The sums of float64 ``x [B, N]`` over the models where ``counted [B, N]``, ``chunk`` models at a time."""
        return cls.build(lambda models: (x[models], counted[models]), len(x), chunk=chunk)

    @classmethod
    def build(cls, rows: Callable[[slice], tuple[torch.Tensor, torch.Tensor]], num_models: int, *,
              chunk: int = CHUNK) -> LogSums:
        """The sums over ``num_models`` models, read ``chunk`` at a time: ``rows(models)`` gives the float64 terms
        ``x [k, N]`` and the counted flags ``[k, N]`` of a slice of the models (it is called twice per slice)."""
        sums = LogSumsBuilder()
        for models in model_chunks(num_models, chunk):
            sums.add_top(models.start, *rows(models))
        for models in model_chunks(num_models, chunk):
            sums.add_rest(models.start, *rows(models))
        return sums.result()

    def without(
        self, models: torch.Tensor, values: torch.Tensor, counted: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log Σ, count)`` without models ``models [S, D]`` (D < TOP distinct models per set), for each of S sets:
        ``[S, N]`` each. ``values [S, D, N]`` and ``counted [S, D, N]`` are those models' x and counted flags."""
        if models.shape[1] >= TOP:
            raise ValueError(f"LogSums can take out at most {TOP - 1} models at once, got {models.shape[1]}")
        same = self.index[None, None] == models[:, :, None, None]  # [S, D, TOP, N]
        gone_top = same.any(1)  # [S, TOP, N]: top terms that are taken out
        in_top = same.any(2)  # [S, D, N]: taken-out models that are top terms
        shift = _rest_shift(self.top)
        outside = torch.where(counted & ~in_top, torch.exp(values - shift), 0.0).sum(1)
        rest = (self.rest - outside).clamp(min=0.0)
        tops = torch.where(gone_top, -math.inf, self.top[None])
        peak = tops.amax(1)  # the largest remaining term, [S, N]
        finite = torch.isfinite(peak)
        base = torch.where(finite, peak, 0.0)
        total = torch.exp(tops - base[:, None]).sum(1) + torch.where(rest > 0, rest * torch.exp(shift - base), 0.0)
        log_sum = torch.where(finite, base + torch.log(total), -math.inf)
        return log_sum, self.count - counted.sum(1)


class LogSumsBuilder:
    """A :class:`LogSums` accumulated over consecutive chunks of models in two passes: every chunk through
    :meth:`add_top` (the largest terms and the counts), then every chunk again, in the same order, through
    :meth:`add_rest` (the other terms, scaled by the smallest kept one, known only after the first pass)."""

    def __init__(self) -> None:
        self.top: torch.Tensor | None = None
        self.index: torch.Tensor | None = None
        self.count: torch.Tensor | None = None
        self.rest: torch.Tensor | None = None
        self.shift: torch.Tensor | None = None

    def add_top(self, start: int, x: torch.Tensor, counted: torch.Tensor) -> None:
        """First pass: models ``start, start + 1, ...`` with float64 terms ``x [k, N]`` and ``counted [k, N]``."""
        n = x.shape[1]
        if self.top is None:
            self.top = torch.full((TOP, n), -math.inf, dtype=torch.float64, device=x.device)
            self.index = torch.full((TOP, n), -1, dtype=torch.long, device=x.device)
            self.count = torch.zeros(n, dtype=torch.float64, device=x.device)
        part = torch.where(counted, x, -math.inf)
        candidates = torch.cat([self.top, part])
        ids = torch.cat([self.index, torch.arange(start, start + len(part), device=x.device)[:, None].expand(-1, n)])
        self.top, at = torch.topk(candidates, TOP, dim=0)
        self.index = torch.where(torch.isfinite(self.top), ids.gather(0, at), -1)
        self.count += counted.sum(0)

    def add_rest(self, start: int, x: torch.Tensor, counted: torch.Tensor) -> None:
        """Second pass: the same chunk as in :meth:`add_top`."""
        if self.rest is None:
            self.shift = _rest_shift(self.top)
            self.rest = torch.zeros_like(self.count)
        ids = torch.arange(start, start + len(x), device=x.device)
        in_top = (self.index[None] == ids[:, None, None]).any(1)
        self.rest += torch.where(counted & ~in_top, torch.exp(x - self.shift), 0.0).sum(0)

    def result(self) -> LogSums:
        """The sums, once both passes have seen every model."""
        return LogSums(self.top, self.index, self.rest, self.count)


def model_chunks(num_models: int, chunk: int = CHUNK) -> Iterator[slice]:
    """Consecutive slices of ``chunk`` models (the last one shorter) covering ``num_models``."""
    for start in range(0, num_models, chunk):
        yield slice(start, min(num_models, start + chunk))


def _rest_shift(top: torch.Tensor) -> torch.Tensor:
    """The scale of the rest: the smallest kept term (0 where fewer than TOP terms are counted: no rest)."""
    return torch.where(torch.isfinite(top[-1]), top[-1], 0.0)
