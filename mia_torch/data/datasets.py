"""Dataset registry: every dataset becomes a pair of normalised float32 tensors.

A :class:`Dataset` holds the *population* (``x``, ``y``: the pool of MIA candidates that
the keep matrix splits among models) and a *held-out test split* (``x_test``,
``y_test``: used only to report model test accuracy). Everything is loaded straight
into tensors (no per-item PIL loop), so the whole dataset can live on the compute device
and batches are index gathers.

The loaders live in their own modules and register themselves when ``mia_torch.data``
is imported:

- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: :mod:`mia_torch.data.torchvision_sets`;
- ``digits`` (the offline default), ``synthetic``: :mod:`mia_torch.data.builtin`;
- ``npz`` (your own arrays): :mod:`mia_torch.data.npz`;
- ``csv``, ``breast_cancer``: tabular records, :mod:`mia_torch.data.tabular`.

Add a dataset with :func:`register_dataset`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mia_torch.data.validate import validate_dataset
from mia_torch.fingerprint import dataset_digest

__all__ = [
    "DATASETS",
    "DATASET_KINDS",
    "Dataset",
    "DatasetNotFoundError",
    "channel_stats",
    "dataset_kind",
    "data_file",
    "describe_dataset",
    "is_int_in",
    "load_dataset",
    "normalize",
    "register_dataset",
    "split_rows",
]


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are not where the config says, and were not downloaded."""


#: What a dataset's examples are: ``"image"`` (``x`` is ``[N, C, H, W]``) or ``"tabular"``
#: (``x`` is ``[N, F]``, one row of encoded features per record).
DATASET_KINDS: tuple[str, ...] = ("image", "tabular")


@dataclass
class Dataset:
    """A population and a held-out test split, as normalised tensors.

    For ``kind="image"``, ``x``/``x_test`` are float32 ``[N, C, H, W]`` normalised per
    channel with ``mean`` and ``std``; for ``kind="tabular"`` they are float32 ``[N, F]``
    encoded features named by ``feature_names``. ``y``/``y_test`` are int64 class ids in
    ``[0, num_classes)``, named by ``class_names`` when the source has names.
    ``indices[i]`` is the position of population row ``i`` in the source's training
    split (useful to map per-record results back to the original data) and
    ``test_indices`` likewise for the test split. ``content_digest`` is the digest of
    all of it (:func:`mia_torch.fingerprint.dataset_digest`), set by :func:`load_dataset`.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    indices: torch.Tensor | None = None
    test_indices: torch.Tensor | None = None
    kind: str = "image"
    feature_names: tuple[str, ...] = ()
    class_names: tuple[str, ...] = ()
    content_digest: str | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset {self.name!r}: kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        ndim, layout = (4, "images [N, C, H, W]") if self.kind == "image" else (2, "records [N, F]")
        for xs, ys, what in ((self.x, self.y, "population"), (self.x_test, self.y_test, "test split")):
            if xs.ndim != ndim:
                raise ValueError(f"dataset {self.name!r}: {what} must be {layout}, got {tuple(xs.shape)}")
            if ys.ndim != 1 or len(ys) != len(xs):
                raise ValueError(
                    f"dataset {self.name!r}: {what} has {len(xs)} examples but labels of shape {tuple(ys.shape)}"
                )
        if self.x.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"dataset {self.name!r}: population examples {tuple(self.x.shape[1:])} and test examples "
                f"{tuple(self.x_test.shape[1:])} differ in shape"
            )
        if self.indices is None:
            self.indices = torch.arange(len(self.x))
        if self.test_indices is None:
            self.test_indices = torch.arange(len(self.x_test))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def input_shape(self) -> tuple[int, ...]:
        """``(C, H, W)`` of one image or ``(F,)`` of one record, as the model constructors take it."""
        return tuple(int(v) for v in self.x.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        """A copy with the image and label tensors on ``device`` (indices stay on CPU)."""
        moved = replace(
            self,
            x=self.x.to(device),
            y=self.y.to(device),
            x_test=self.x_test.to(device),
            y_test=self.y_test.to(device),
        )
        moved.content_digest = self.content_digest  # same content
        return moved


DatasetLoader = Callable[..., Dataset]

#: Registered dataset loaders by name. A loader is called as
#: ``loader(root=Path | None, download=bool, seed=int, **options)`` and returns the full
#: :class:`Dataset`; :func:`load_dataset` then applies ``population_size``/``test_size``.
DATASETS: dict[str, DatasetLoader] = {}
_KINDS: dict[str, str] = {}


def register_dataset(
    name: str, *, kind: str = "image", replace_existing: bool = False
) -> Callable[[DatasetLoader], DatasetLoader]:
    """Decorator that registers a dataset loader under ``name`` (the config's ``dataset.name``).

    The loader takes keyword arguments ``root`` (a :class:`~pathlib.Path`, or ``None``), ``download``,
    ``seed`` and its own options, and returns the full :class:`Dataset` of ``kind``
    (``"image"`` or ``"tabular"``, see :data:`DATASET_KINDS`) as float32 tensors on the CPU.
    The kind is known before loading, so the config's ``queries`` are checked first.
    Registering a taken name raises unless ``replace_existing``.
    """
    if kind not in DATASET_KINDS:
        raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, got {kind!r}")

    def decorator(fn: DatasetLoader) -> DatasetLoader:
        if name in DATASETS and not replace_existing:
            raise ValueError(f"a dataset named {name!r} is already registered")
        DATASETS[name] = fn
        _KINDS[name] = kind
        return fn

    return decorator


def _registered(name: str) -> DatasetLoader:
    if name not in DATASETS:
        raise ValueError(
            f"unknown dataset {name!r} (config key `dataset`, i.e. `dataset.name`); "
            f"registered datasets: {', '.join(sorted(DATASETS))}"
        )
    return DATASETS[name]


def dataset_kind(name: str) -> str:
    """The kind (``"image"`` or ``"tabular"``) of the registered dataset ``name``, without loading it."""
    _registered(name)
    return _KINDS.get(name, "image")


def data_file(path: str | Path, root: Path | None) -> Path:
    """``path`` with ``~`` expanded, under ``root`` (``data_dir``) unless absolute."""
    file = Path(path).expanduser()
    return Path(root) / file if not file.is_absolute() and root is not None else file


def load_dataset(
    name: str,
    *,
    root: str | Path | None,
    download: bool = False,
    population_size: int | None = None,
    test_size: int | None = None,
    seed: int = 0,
    **options: Any,
) -> Dataset:
    """Load the registered dataset ``name`` as normalised CPU tensors.

    ``root`` is the data directory (config key ``data_dir``; ``None`` is fine for datasets
    that need no files, e.g. ``digits``); ``download`` lets torchvision
    datasets fetch missing files into it. ``population_size`` / ``test_size``, when set,
    keep a seeded random subset of that many population / test examples (in their
    original order). ``options`` go to the dataset's loader (e.g. ``num_examples`` for
    ``synthetic``); unknown options raise ``ValueError``. The result is checked by
    :func:`mia_torch.data.validate.validate_dataset` (finite images, labels in range, two
    classes or more), whatever the loader.
    """
    loader = _registered(name)
    _check_options(name, loader, options)
    path = Path(root).expanduser() if root is not None else None
    data = loader(root=path, download=bool(download), seed=int(seed), **options)
    if data.kind != dataset_kind(name):
        raise ValueError(
            f"dataset {name!r} is registered as {dataset_kind(name)} data but its loader returned {data.kind}"
        )
    if population_size is not None:
        keep = _subset(len(data.x), population_size, seed=seed, stream=1, key="population_size", name=name)
        data = replace(data, x=data.x[keep], y=data.y[keep], indices=data.indices[keep])
    if test_size is not None:
        keep = _subset(len(data.x_test), test_size, seed=seed, stream=2, key="test_size", name=name)
        data = replace(data, x_test=data.x_test[keep], y_test=data.y_test[keep], test_indices=data.test_indices[keep])
    validate_dataset(data, source=describe_dataset(name, options))
    dataset_digest(data)  # once, on the CPU tensors: the store keys artifacts by it
    return data


def describe_dataset(name: str, options: dict[str, Any]) -> str:
    """How error messages name a dataset: its name, its file (``dataset.path``) and a registered loader."""
    text = f"dataset {name!r}"
    if options.get("path"):
        text += f" (dataset.path={options['path']})"
    loader = DATASETS.get(name)
    if loader is not None and not loader.__module__.startswith("mia_torch."):
        text += f" (loader {loader.__module__}.{loader.__qualname__})"
    return text


def normalize(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an ``[N, C, H, W]`` tensor."""
    m = torch.as_tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


def channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of ``[N, C, H, W]`` data (std floored to stay invertible)."""
    flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    mean = flat.mean(dim=1)
    std = flat.std(dim=1).clamp_min(1e-6)
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _check_options(name: str, loader: DatasetLoader, options: dict[str, Any]) -> None:
    params = inspect.signature(loader).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = sorted(k for k in params if k not in ("root", "download", "seed"))
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"dataset {name!r} does not take option(s) {', '.join(unknown)} (config group `dataset`); "
            f"it accepts: {', '.join(accepted) or 'no options'}, plus population_size and test_size"
        )


def is_int_in(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) in ``[low, high]`` (no upper bound if None)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return bool(low <= value and (high is None or value <= high))


def split_rows(total: int, num_test: int, *, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``total`` rows: sorted population rows and ``num_test`` sorted test rows.

    The test rows are the first ``num_test`` of ``default_rng([seed, stream]).permutation(total)``.
    Loaders split with stream 0; the ``population_size`` and ``test_size`` subsets of
    :func:`load_dataset` are the test rows of streams 1 and 2.
    """
    order = np.random.default_rng([int(seed), stream]).permutation(total)
    return np.sort(order[num_test:]), np.sort(order[:num_test])


def _subset(total: int, size: int, *, seed: int, stream: int, key: str, name: str) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``size`` out of ``total``."""
    if not is_int_in(size, 1):
        raise ValueError(f"`dataset.{key}` must be a positive integer or null, got {size!r}")
    if size > total:
        raise ValueError(f"`dataset.{key}`={size} but dataset {name!r} has only {total} examples there")
    _, keep = split_rows(total, size, seed=seed, stream=stream)
    return torch.from_numpy(keep)
