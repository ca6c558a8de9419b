"""``audit.preprocess``: map the dataset's inputs to what the audited model expects.

The framework stores images normalised with the dataset's per-channel mean and std (what
its own models take). A user's model may expect something else, so the audit states it:

- ``dataset`` (default): the dataset's own normalisation, unchanged (right for models trained
  by mia_torch, and for tabular features, which the dataset already encodes and scales);
- ``none``: images as float in [0, 1], NCHW (tabular features as encoded);
- ``{mean: [...], std: [...]}``: ``(x01 - mean) / std`` per channel (one value or one per channel);
- ``{_target_: my_pkg.my_fn, ...}``: an importable callable that takes the [0, 1] images
  ``[N, C, H, W]`` (or the encoded features) and returns the model's input; extra keys are
  passed to it as keyword arguments.

Reference models are trained on the same preprocessed inputs, so they copy the target.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import torch

from mia_torch.data.datasets import Dataset
from mia_torch.settings import trusted

__all__ = ["PREPROCESS_NAMES", "preprocess_dataset", "unit_range"]

PREPROCESS_NAMES = ("dataset", "none")
Transform = Callable[[torch.Tensor], torch.Tensor]


def _channel_view(values: Sequence[float], x: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=x.dtype, device=x.device).view(1, -1, *([1] * (x.ndim - 2)))


def unit_range(data: Dataset, x: torch.Tensor) -> torch.Tensor:
    """The dataset's stored (normalised) inputs back in their original scale (images: [0, 1])."""
    if not data.mean or x.ndim != 4:
        return x
    return x * _channel_view(data.std, x) + _channel_view(data.mean, x)


def _normaliser(spec: Mapping[str, Any], channels: int) -> Transform:
    mean, std = spec.get("mean"), spec.get("std")
    extra = sorted(set(spec) - {"mean", "std"})
    for key, values in (("mean", mean), ("std", std)):
        ok = isinstance(values, Sequence) and not isinstance(values, str) and len(values) in (1, channels) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if not ok:
            raise ValueError(f"audit.preprocess.{key}={values!r} is invalid: expected a list of 1 or {channels} numbers")
    if extra:
        raise ValueError(f"unknown key(s) audit.preprocess.{', audit.preprocess.'.join(extra)}: "
                         "expected mean and std, or _target_")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"audit.preprocess.std={std!r} is invalid: every std must be > 0")

    def normalise(x01: torch.Tensor) -> torch.Tensor:
        return (x01 - _channel_view(mean, x01)) / _channel_view(std, x01)

    return normalise


def _transform(spec: Any, channels: int) -> Transform | None:
    """The user's transform of unit-range inputs, or None for the dataset's own normalisation."""
    if spec is None or spec == "dataset":
        return None
    if spec == "none":
        return lambda x01: x01
    if isinstance(spec, Mapping) and "_target_" in spec:
        return trusted.bound_callable(spec, kind="preprocess", key="audit.preprocess")
    if isinstance(spec, Mapping):
        return _normaliser(spec, channels)
    raise ValueError(f"audit.preprocess={spec!r} is invalid: expected one of {PREPROCESS_NAMES}, "
                     "{mean: [...], std: [...]}, or {_target_: my_pkg.my_fn}")


def _apply(fn: Transform, data: Dataset, x: torch.Tensor, what: str) -> torch.Tensor:
    out = fn(unit_range(data, x))
    if not isinstance(out, torch.Tensor) or out.shape[0] != x.shape[0] or not out.is_floating_point():
        raise ValueError(f"audit.preprocess returned {type(out).__name__} {getattr(out, 'shape', '')} for the {what} "
                         f"inputs {tuple(x.shape)}: it must return a float tensor with one row per input")
    return out.float().contiguous()


def preprocess_dataset(data: Dataset, spec: Any) -> Dataset:
    """``data`` with its inputs mapped by ``audit.preprocess`` (see the module docstring)."""
    channels = int(data.x.shape[1]) if data.x.ndim == 4 else 1
    fn = _transform(spec, channels)
    if fn is None:
        return data
    return replace(data, x=_apply(fn, data, data.x, "population"), x_test=_apply(fn, data, data.x_test, "test"),
                   mean=(), std=())
