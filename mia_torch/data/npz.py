"""Your own arrays in a ``.npz`` file (``x_train, y_train, x_test, y_test``, no pickle).

- ``dataset=npz``: images, normalised per channel with the population's statistics;
- ``dataset=npz_features``: a feature matrix ``[N, F]`` (tabular records as your own
  pipeline encoded them), used as given: no scaling, since a model trained on those
  features must see them unchanged.
"""

from __future__ import annotations

import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from mia_torch.data.datasets import Dataset, DatasetNotFoundError, channel_stats, data_file, normalize
from mia_torch.data.loader import DatasetLoader
from mia_torch.data.validate import DataValidationError, NpzArrays, read_npz, validate_dataset

__all__ = ["NpzFeatures", "NpzImages", "check_feature_array"]

#: Optional array of a feature file: one name per column of ``x_train``.
FEATURE_NAMES_KEY = "feature_names"


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


def _npz_file(path: str | None, root: Path | None, dataset: str, holds: str) -> Path:
    if not path:
        raise ValueError(f"dataset={dataset} needs `dataset.path`: the .npz file with x_train, y_train, x_test, "
                         f"y_test ({holds})")
    file = data_file(path, root)
    if not file.is_file():
        raise DatasetNotFoundError(f"{file} not found: set `dataset.path` (relative to `data_dir`) to your .npz file")
    return file


def _checked(data_fn, file: Path) -> Dataset:
    """The dataset ``data_fn()`` builds, validated; a shape mismatch it raises names ``file``."""
    try:
        data = data_fn()
    except ValueError as err:  # e.g. train and test examples of different shapes
        raise DataValidationError(f"{file}: {err}") from err
    validate_dataset(data, source=str(file))
    return data


def _npz(*, root: Path | None, download: bool, seed: int, path: str | None = None) -> Dataset:
    """Your own images: ``x_train, y_train, x_test, y_test`` in a ``.npz`` file (no pickle).

    ``path`` is taken relative to ``data_dir`` unless absolute. Images may be uint8 (scaled
    to [0, 1]) or float, in ``[N, H, W]``, ``[N, H, W, C]`` or ``[N, C, H, W]`` layout; they are
    normalised with the population's per-channel mean and std. ``x_train`` is the population.
    """
    file = _npz_file(path, root, "npz", "images")
    arrays = read_npz(file)
    x, x_test = _images_nchw(arrays.x_train, "x_train", file), _images_nchw(arrays.x_test, "x_test", file)
    mean, std = channel_stats(x)
    return _checked(lambda: Dataset(name="npz", x=normalize(x, mean, std), y=torch.from_numpy(arrays.y_train),
                                    x_test=normalize(x_test, mean, std), y_test=torch.from_numpy(arrays.y_test),
                                    num_classes=arrays.num_classes, mean=mean, std=std), file)


def check_feature_array(array: np.ndarray, *, source: str, key: str, names: tuple[str, ...] = ()) -> None:
    """A feature matrix must be numbers ``[N, F]``, finite, and within float32's range.

    Errors name ``source``, ``key``, the first bad row and its column (by ``names`` when given).
    """
    if array.dtype.kind not in "biuf":
        raise DataValidationError(f"{source}: `{key}` has dtype {array.dtype}; features must be numbers (encode "
                                  f"text columns first, e.g. with a scikit-learn OneHotEncoder)")
    if array.ndim != 2:
        hint = "; images belong in dataset=npz" if array.ndim in (3, 4) else ""
        raise DataValidationError(f"{source}: `{key}` has shape {array.shape}; a feature matrix must be [N, F]: "
                                  f"one row of features per record{hint}")
    as_float32 = array.astype(np.float32, copy=False)
    bad = ~np.isfinite(as_float32)
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        name = f" (`{names[column]}`)" if column < len(names) else ""
        what = "NaN" if np.isnan(array[row, column]) else "Inf" if np.isinf(array[row, column]) else \
            f"{array[row, column]!r}, beyond float32's range,"
        raise DataValidationError(
            f"{source}: `{key}` holds {what} in {int(bad.any(axis=1).sum())} row(s), first at row {row}, column "
            f"{column}{name}; impute or drop those records before saving the features")


def _feature_names(file: Path) -> tuple[str, ...]:
    """The optional ``feature_names`` array of ``file`` (strings), or ``()``; a damaged file is left to
    :func:`~mia_torch.data.validate.read_npz` to report."""
    if not zipfile.is_zipfile(file):
        return ()
    try:
        with np.load(file, allow_pickle=False) as npz:
            if FEATURE_NAMES_KEY not in npz.files:
                return ()
            names = npz[FEATURE_NAMES_KEY]
    except ValueError as err:  # an object array would need pickle
        raise DataValidationError(f"{file}: `{FEATURE_NAMES_KEY}` cannot be read without unpickling; save "
                                  f"it as strings, e.g. np.asarray(names, dtype=str)") from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError):
        return ()
    if names.dtype.kind != "U" or names.ndim != 1:
        raise DataValidationError(f"{file}: `{FEATURE_NAMES_KEY}` must hold strings, one per column of x_train; "
                                  f"got dtype {names.dtype}, shape {names.shape}")
    return tuple(str(n) for n in names)


def _npz_features(*, root: Path | None, download: bool, seed: int, path: str | None = None) -> Dataset:
    """Your own feature matrix: ``x_train [N, F]``, ``y_train``, ``x_test [M, F]``, ``y_test`` in a ``.npz`` file.

    The records as your pipeline encoded them (float or integer features, integer class
    ids), kept as they are: tabular data, queried as ``[identity]``, for ``model=mlp`` or
    your own model. An optional ``feature_names`` array names the columns. ``x_train`` is
    the population. NaN or Inf features are refused naming the file, the row and the column.
    """
    file = _npz_file(path, root, "npz_features", "a feature matrix [N, F] per split")
    names = _feature_names(file)

    def check(array: np.ndarray, *, source: str, key: str) -> None:
        check_feature_array(array, source=source, key=key, names=names)

    arrays: NpzArrays = read_npz(file, check_inputs=check)
    if names and len(names) != arrays.x_train.shape[1]:
        raise DataValidationError(f"{file}: `{FEATURE_NAMES_KEY}` holds {len(names)} names for the "
                                  f"{arrays.x_train.shape[1]} columns of x_train")
    x, x_test = (torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32)) for a in (arrays.x_train, arrays.x_test))
    return _checked(lambda: Dataset(name="npz_features", x=x, y=torch.from_numpy(arrays.y_train), x_test=x_test,
                                    y_test=torch.from_numpy(arrays.y_test), num_classes=arrays.num_classes,
                                    kind="tabular", feature_names=names), file)


class NpzImages(DatasetLoader):
    """``dataset=npz``: your own images and labels, from a ``.npz`` file; its options are :func:`_npz`'s."""

    load = staticmethod(_npz)


class NpzFeatures(DatasetLoader):
    """``dataset=npz_features``: your own feature matrix, from a ``.npz`` file; see :func:`_npz_features`."""

    kind = "tabular"
    load = staticmethod(_npz_features)
