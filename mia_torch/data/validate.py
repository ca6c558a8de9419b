"""Check a dataset before any training, naming the file (or dataset) and the problem.

Two levels:

- a user's ``.npz`` file (:func:`read_npz`, built on :func:`check_image_array`,
  :func:`check_label_array` and :func:`infer_num_classes`): not an archive, truncated,
  missing or object arrays, image dtypes and NaN/Inf, labels that are strings,
  fractions, negative, one-hot, of the wrong length, a single class, or a test label
  that is no training class;
- every loaded :class:`~mia_torch.data.datasets.Dataset`, whatever its loader
  (:func:`validate_dataset`): float32 images without NaN/Inf, int64 labels in
  ``[0, num_classes)``, at least two classes, non-empty splits;

and, once the keep matrix is known, :func:`check_training_sets`: every model trains on
at least :data:`MIN_TRAIN_EXAMPLES` examples.
"""

from __future__ import annotations

import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

if TYPE_CHECKING:
    from mia_torch.data.datasets import Dataset

__all__ = [
    "MIN_TRAIN_EXAMPLES",
    "DataValidationError",
    "NpzArrays",
    "check_image_array",
    "check_label_array",
    "check_training_sets",
    "infer_num_classes",
    "read_npz",
    "validate_dataset",
]

#: The arrays a user's ``.npz`` file must hold.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

#: Fewest examples any model may train on (below this no attack or accuracy means anything).
MIN_TRAIN_EXAMPLES = 8


class DataValidationError(ValueError):
    """The data cannot be used as it is; the message names its source and the problem."""


def _first(mask: np.ndarray | torch.Tensor) -> str:
    """``"N examples, first at index i"`` for a boolean mask over examples."""
    where = np.flatnonzero(np.asarray(mask))
    return f"{len(where)} example(s), first at index {int(where[0])}"


def check_image_array(array: np.ndarray, *, source: str, key: str) -> None:
    """Raw images must be numbers (uint8, int or float) of at least three dimensions, without NaN/Inf."""
    if array.dtype.kind not in "uif":
        raise DataValidationError(f"{source}: `{key}` has dtype {array.dtype}; images must be uint8, "
                                  f"integers or floats")
    if array.ndim < 3:
        raise DataValidationError(f"{source}: `{key}` has shape {array.shape}; images must be [N, H, W], "
                                  f"[N, H, W, C] or [N, C, H, W]"
                                  + ("; a feature matrix [N, F] is dataset=npz_features" if array.ndim == 2 else ""))
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array).all(axis=tuple(range(1, array.ndim)))  # per image; an empty array passes
        if bad.any():
            raise DataValidationError(f"{source}: `{key}` holds NaN or Inf values in {_first(bad)}; "
                                      f"fix or drop those images")


def check_label_array(array: np.ndarray, *, source: str, key: str, num_examples: int) -> np.ndarray:
    """Raw labels as int64 ``[N]``: integral numbers >= 0, one per image; strings and fractions are refused."""
    if array.dtype.kind in "USO":
        raise DataValidationError(
            f"{source}: `{key}` holds strings or objects (dtype {array.dtype}); labels must be integer class ids "
            f"0..K-1: encode them first, e.g. with sklearn.preprocessing.LabelEncoder"
        )
    if array.dtype.kind not in "biuf":
        raise DataValidationError(f"{source}: `{key}` has dtype {array.dtype}; labels must be integer class ids")
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    if array.ndim != 1:
        raise DataValidationError(f"{source}: `{key}` has shape {array.shape}; labels must be [N] class ids "
                                  f"(one-hot labels: take y.argmax(axis=1))")
    if len(array) != num_examples:
        raise DataValidationError(f"{source}: `{key}` has {len(array)} labels for {num_examples} images")
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
        if bad.any():
            raise DataValidationError(f"{source}: `{key}` holds labels that are not whole numbers in "
                                      f"{_first(bad)} (e.g. {array[bad][0]!r}); labels must be class ids 0..K-1")
    labels = array.astype(np.int64)
    if (labels < 0).any():
        raise DataValidationError(f"{source}: `{key}` holds negative labels in {_first(labels < 0)} "
                                  f"(e.g. {int(labels[labels < 0][0])}); labels must be class ids 0..K-1")
    return labels


def infer_num_classes(y_train: np.ndarray, y_test: np.ndarray, *, source: str,
                      train_key: str = "y_train", test_key: str = "y_test") -> int:
    """``max(y_train) + 1``, refusing a single class, test labels that are no training class and mostly unused ids."""
    if len(y_train) == 0:
        raise DataValidationError(f"{source}: `{train_key}` is empty: the population needs examples")
    num_classes = int(y_train.max()) + 1
    outside = y_test >= num_classes
    if outside.any():
        raise DataValidationError(
            f"{source}: `{test_key}` holds label {int(y_test[outside].max())} in {_first(outside)}, but "
            f"`{train_key}` has classes 0..{num_classes - 1}; a test label that is no training class would make "
            f"{int(y_test.max()) + 1} classes: fix or drop those test examples"
        )
    classes = np.unique(y_train)
    if len(classes) < 2:
        raise DataValidationError(f"{source}: `{train_key}` has a single class (label {int(classes[0])}); "
                                  f"training a classifier and attacking it need at least two")
    used = len(classes)
    if num_classes > 2 * used:
        raise DataValidationError(
            f"{source}: `{train_key}` uses {used} distinct labels but its largest is {num_classes - 1}, which "
            f"would make {num_classes} classes; relabel to consecutive ids 0..{used - 1}"
        )
    return num_classes


@dataclass(frozen=True)
class NpzArrays:
    """A user's ``.npz`` file after the raw checks: images as stored, labels as int64 ``[N]``."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int


def _read_array(npz: np.lib.npyio.NpzFile, key: str, file: Path) -> np.ndarray:
    try:
        return npz[key]
    except ValueError as err:
        if "pickle" in str(err):
            raise DataValidationError(
                f"{file}: `{key}` is an object array (dtype=object), which is never loaded since that would "
                f"unpickle it; save numeric arrays, e.g. np.asarray({key}, dtype=np.float32)"
            ) from err
        raise DataValidationError(f"{file}: `{key}` cannot be read ({err}); write the file again") from err
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise DataValidationError(f"{file}: `{key}` is damaged ({type(err).__name__}: {err}); "
                                  f"the file may be truncated: write it again") from err


def read_npz(file: Path, *, check_inputs: Callable[..., None] = check_image_array) -> NpzArrays:
    """Read and check ``x_train, y_train, x_test, y_test`` from ``file``; every error names the file.

    Refuses files that are not ``.npz`` archives (truncated ones included), missing or
    object arrays, inputs that ``check_inputs(array, source=..., key=...)`` refuses
    (default: non-numeric or non-finite images), and labels that are strings,
    fractions, negative, of the wrong length, or would create classes the training
    labels do not have.
    """
    if not zipfile.is_zipfile(file):
        raise DataValidationError(
            f"{file} is not an .npz archive (truncated, or not written by np.savez): `dataset.path` must name a "
            f"file written by np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    try:
        with np.load(file, allow_pickle=False) as npz:
            missing = [key for key in NPZ_KEYS if key not in npz.files]
            if missing:
                raise DataValidationError(f"{file} lacks arrays {missing}; it needs {', '.join(NPZ_KEYS)}")
            arrays = {key: _read_array(npz, key, file) for key in NPZ_KEYS}
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise DataValidationError(f"{file} cannot be read as an .npz archive ({type(err).__name__}: {err})") from err
    for key in ("x_train", "x_test"):
        check_inputs(arrays[key], source=str(file), key=key)
    y_train = check_label_array(arrays["y_train"], source=str(file), key="y_train",
                                num_examples=len(arrays["x_train"]))
    y_test = check_label_array(arrays["y_test"], source=str(file), key="y_test", num_examples=len(arrays["x_test"]))
    num_classes = infer_num_classes(y_train, y_test, source=str(file))
    return NpzArrays(arrays["x_train"], y_train, arrays["x_test"], y_test, num_classes)


def validate_dataset(data: "Dataset", *, source: str) -> None:
    """Refuse a loaded dataset that no model could train on, naming ``source`` and the problem."""
    if not isinstance(data.num_classes, (int, np.integer)) or isinstance(data.num_classes, bool) \
            or data.num_classes < 2:
        raise DataValidationError(f"{source}: num_classes={data.num_classes!r}; need an integer >= 2")
    for x, y, what in ((data.x, data.y, "population"), (data.x_test, data.y_test, "test split")):
        if len(x) == 0:
            raise DataValidationError(f"{source}: the {what} is empty")
        if x.dtype != torch.float32:
            raise DataValidationError(f"{source}: {what} images are {x.dtype}; they must be float32")
        if y.dtype != torch.int64:
            raise DataValidationError(f"{source}: {what} labels are {y.dtype}; they must be int64 class ids")
        bad = ~torch.isfinite(x.reshape(len(x), -1)).all(dim=1)
        if bool(bad.any()):
            raise DataValidationError(f"{source}: {what} images hold NaN or Inf values in {_first(bad.cpu())}; "
                                      f"fix or drop those images")
        outside = (y < 0) | (y >= data.num_classes)
        if bool(outside.any()):
            raise DataValidationError(
                f"{source}: {what} labels must be class ids in [0, num_classes={data.num_classes}); "
                f"found {', '.join(str(v) for v in torch.unique(y[outside]).tolist()[:5])} in {_first(outside.cpu())}"
            )
    classes = torch.unique(data.y)
    if len(classes) < 2:
        raise DataValidationError(f"{source}: the population has a single class (label {int(classes[0])}); "
                                  f"training a classifier and attacking it need at least two")


def check_training_sets(keep: np.ndarray, *, source: str, threat_model: str) -> None:
    """Every model (row of the keep matrix ``bool[M, N]``) must train on at least :data:`MIN_TRAIN_EXAMPLES`.

    A model trains on half of the population (``shared``) or a quarter (``disjoint``: half
    of its side), so this bounds the population size from below.
    """
    smallest = int(keep.sum(axis=1).min())
    if smallest < MIN_TRAIN_EXAMPLES:
        raise DataValidationError(
            f"{source}: a population of {keep.shape[1]} examples leaves a model only {smallest} training "
            f"example(s) (with threat_model={threat_model}, each of the {keep.shape[0]} models trains on "
            f"{'a quarter' if threat_model == 'disjoint' else 'half'} of it); each needs at least "
            f"{MIN_TRAIN_EXAMPLES}: use more data (dataset.population_size, or a larger file)"
        )
