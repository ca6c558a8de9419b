"""What a ``dataset`` config builds (its ``_target_``): a :class:`DatasetLoader`, and :func:`load_dataset`.

Datasets are built like attacks, models and defenses: ``configs/dataset/<name>.yaml`` names
the loader class in ``_target_``, and its other keys are the loader's options. The shipped
loaders are :mod:`mia_torch.data.torchvision_sets` (``mnist``, ``fashion_mnist``,
``cifar10``, ``cifar100``), :mod:`mia_torch.data.builtin` (``digits``, the offline default,
and ``synthetic``), :mod:`mia_torch.data.npz` (``npz``: your own arrays) and
:mod:`mia_torch.data.tabular` (``csv``, ``breast_cancer``). A loader of your own is one
subclass and one config file, in or out of the tree (see docs/extending.md).
"""

from __future__ import annotations

import inspect
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import torch

from mia_torch.data.datasets import DATASET_KINDS, Dataset, is_int_in, split_rows
from mia_torch.data.validate import validate_dataset
from mia_torch.fingerprint import dataset_digest

__all__ = ["COMMON_KEYS", "DatasetLoader", "load_dataset"]

#: Keys every dataset config may hold besides the loader's own options (read by mia_torch).
COMMON_KEYS = ("name", "population_size", "test_size")


class DatasetLoader:
    """The loader of one dataset, built from the ``dataset`` config (its ``_target_``).

    A subclass sets ``kind`` (``"image"`` or ``"tabular"``, see
    :data:`~mia_torch.data.datasets.DATASET_KINDS`; known before loading, so the config's
    ``queries`` are checked first) and implements ``load(self, *, root, download, seed,
    **options)``, returning the full :class:`~mia_torch.data.datasets.Dataset` as float32
    CPU tensors. The keyword options of ``load`` are the config's keys: an unknown key is
    refused when the loader is built, naming it. Every config also takes ``name`` (how
    results and messages name the dataset; default: the class name) and
    ``population_size`` / ``test_size`` (a seeded random subset, applied by
    :func:`load_dataset` whatever the loader).
    """

    kind: ClassVar[str] = "image"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind not in DATASET_KINDS:
            raise TypeError(f"{cls.__qualname__}.kind must be one of {DATASET_KINDS}, got {cls.kind!r}")

    def __init__(self, *, name: str | None = None, population_size: int | None = None,
                 test_size: int | None = None, **options: Any) -> None:
        self.name = name or type(self).__name__
        self.population_size, self.test_size = population_size, test_size
        self.options = options
        parameters = inspect.signature(self.load).parameters
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            return
        accepted = sorted(k for k in parameters if k not in ("root", "download", "seed"))
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(
                f"dataset {self.name!r} does not take option(s) {', '.join(unknown)} (config group `dataset`); "
                f"it accepts: {', '.join(accepted) or 'no options'}, plus {', '.join(COMMON_KEYS)}"
            )

    def load(self, *, root: Path | None, download: bool, seed: int) -> Dataset:
        """The full dataset; ``root`` is ``data_dir`` (or None), ``download`` lets it fetch missing files."""
        raise NotImplementedError(f"{type(self).__qualname__} must implement load(*, root, download, seed)")

    def describe(self) -> str:
        """How error messages name the dataset: its name, its file (``dataset.path``) and a loader of your own."""
        text = f"dataset {self.name!r}"
        if self.options.get("path"):
            text += f" (dataset.path={self.options['path']})"
        if not type(self).__module__.startswith("mia_torch."):
            text += f" (loader {type(self).__module__}.{type(self).__qualname__})"
        return text


def load_dataset(loader: DatasetLoader, *, root: str | Path | None, download: bool = False, seed: int = 0) -> Dataset:
    """Load ``loader``'s dataset as normalised CPU tensors, checked and digested.

    ``root`` is the data directory (config key ``data_dir``; ``None`` is fine for datasets
    that need no files, e.g. ``digits``); ``download`` lets torchvision datasets fetch
    missing files into it. The loader's ``population_size`` / ``test_size``, when set, keep
    a seeded random subset of that many population / test examples (in their original
    order). The result is checked by :func:`mia_torch.data.validate.validate_dataset`
    (finite images, labels in range, two classes or more), whatever the loader, and its
    digest (which keys stored artifacts) is computed once, here.
    """
    path = Path(root).expanduser() if root is not None else None
    data = loader.load(root=path, download=bool(download), seed=int(seed), **loader.options)
    if data.kind != loader.kind:
        raise ValueError(f"{loader.describe()} is declared as {loader.kind} data but its loader returned {data.kind}")
    if loader.population_size is not None:
        keep = _subset(len(data.x), loader.population_size, seed=seed, stream=1, key="population_size", loader=loader)
        data = replace(data, x=data.x[keep], y=data.y[keep], indices=data.indices[keep])
    if loader.test_size is not None:
        keep = _subset(len(data.x_test), loader.test_size, seed=seed, stream=2, key="test_size", loader=loader)
        data = replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep], test_indices=data.test_indices[keep])
    validate_dataset(data, source=loader.describe())
    dataset_digest(data)  # once, on the CPU tensors: the store keys artifacts by it
    return data


def _subset(total: int, size: int, *, seed: int, stream: int, key: str, loader: DatasetLoader) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``size`` out of ``total``."""
    if not is_int_in(size, 1):
        raise ValueError(f"`dataset.{key}` must be a positive integer or null, got {size!r}")
    if size > total:
        raise ValueError(f"`dataset.{key}`={size} but {loader.describe()} has only {total} examples there")
    _, keep = split_rows(total, size, seed=seed, stream=stream)
    return torch.from_numpy(keep)
