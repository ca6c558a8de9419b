"""``dataset=npz``: your own arrays in a ``.npz`` file (``x_train, y_train, x_test, y_test``, no pickle)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mia_torch.data.datasets import (
    Dataset,
    DatasetNotFoundError,
    channel_stats,
    data_file,
    normalize,
    register_dataset,
)
from mia_torch.data.validate import DataValidationError, read_npz, validate_dataset

__all__: list[str] = []  # the loader is reached through the registry


def _images_nchw(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    """uint8 (0..255) or float images as float32 ``[N, C, H, W]``; HWC and HW layouts are converted."""
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    if array.ndim != 4:
        raise ValueError(f"{path}: `{key}` must hold images [N, H, W], [N, H, W, C] or [N, C, H, W], got {array.shape}")
    images = torch.from_numpy(np.ascontiguousarray(array))
    return images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()


@register_dataset("npz")
def _npz(*, root: Path | None, download: bool, seed: int, path: str | None = None) -> Dataset:
    """Your own arrays: ``x_train, y_train, x_test, y_test`` in a ``.npz`` file (no pickle).

    ``path`` is taken relative to ``data_dir`` unless absolute. Images may be uint8 (scaled
    to [0, 1]) or float, in ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` layout; they are
    normalised with the population's per-channel mean and std. ``x_train`` is the population.
    """
    if not path:
        raise ValueError("dataset=npz needs `dataset.path`: the .npz file with x_train, y_train, x_test, y_test")
    file = data_file(path, root)
    if not file.is_file():
        raise DatasetNotFoundError(f"{file} not found: set `dataset.path` (relative to `data_dir`) to your .npz file")
    arrays = read_npz(file)
    x, x_test = _images_nchw(arrays.x_train, "x_train", file), _images_nchw(arrays.x_test, "x_test", file)
    mean, std = channel_stats(x)
    try:
        data = Dataset(name="npz", x=normalize(x, mean, std), y=torch.from_numpy(arrays.y_train),
                       x_test=normalize(x_test, mean, std), y_test=torch.from_numpy(arrays.y_test),
                       num_classes=arrays.num_classes, mean=mean, std=std)
    except ValueError as err:  # e.g. train and test images of different shapes
        raise DataValidationError(f"{file}: {err}") from err
    validate_dataset(data, source=str(file))
    return data
