"""Dataset registry: every dataset becomes a pair of normalised float32 tensors.

A :class:`Dataset` holds the *population* (``x``, ``y``: the pool of MIA candidates that
the keep matrix splits among models) and a *held-out test split* (``x_test``,
``y_test``: used only to report model test accuracy). Everything is loaded straight
into tensors (no per-item PIL loop), so the whole dataset can live on the compute device
and batches are index gathers.

Registered names:

- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: through ``torchvision.datasets``;
  the train split is the population and the test split is held out. Files are read from
  ``root`` in torchvision's layout; ``download=True`` lets torchvision fetch them first.
- ``digits``: scikit-learn's bundled 8x8 digits (1797 images), works offline; a seeded
  split gives the population and ``num_test`` held-out images.
- ``synthetic``: seeded class prototypes plus Gaussian noise, for tests and sanity checks.
- ``csv``, ``breast_cancer``: tabular records (see :mod:`mia_torch.data.tabular`).

Add a dataset with :func:`register_dataset`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from mia_torch.data.validate import DataValidationError, read_npz, validate_dataset
from mia_torch.fingerprint import dataset_digest

__all__ = [
    "DATASETS",
    "DATASET_KINDS",
    "Dataset",
    "DatasetNotFoundError",
    "dataset_kind",
    "data_file",
    "load_dataset",
    "normalize",
    "register_dataset",
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


def _channel_stats(x: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
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


def _subset(total: int, size: int, *, seed: int, stream: int, key: str, name: str) -> torch.Tensor:
    """Sorted indices of a seeded random subset of ``size`` out of ``total``."""
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"`dataset.{key}` must be a positive integer or null, got {size!r}")
    if size > total:
        raise ValueError(f"`dataset.{key}`={size} but dataset {name!r} has only {total} examples there")
    rng = np.random.default_rng([int(seed), stream])
    keep = np.sort(rng.permutation(total)[:size])
    return torch.from_numpy(keep)


# --------------------------------------------------------------------------- torchvision


@dataclass(frozen=True)
class _TorchvisionSource:
    display: str  # human name, also torchvision's class name for MNIST-like sets
    tv_class: str  # attribute of torchvision.datasets
    folder: str  # folder under root that torchvision reads
    files: tuple[str, ...]  # files torchvision needs inside ``folder``
    legacy_files: tuple[str, ...]  # alternative set of files (torchvision's old MNIST cache)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_classes: int


_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

_SOURCES = {
    "mnist": _TorchvisionSource(
        "MNIST", "MNIST", "MNIST/raw", _MNIST_FILES, ("../processed/training.pt", "../processed/test.pt"),
        (0.1307,), (0.3081,), 10,
    ),
    "fashion_mnist": _TorchvisionSource(
        "FashionMNIST", "FashionMNIST", "FashionMNIST/raw", _MNIST_FILES,
        ("../processed/training.pt", "../processed/test.pt"), (0.2860,), (0.3530,), 10,
    ),
    "cifar10": _TorchvisionSource(
        "CIFAR-10", "CIFAR10", "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"), (),
        (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10,
    ),
    "cifar100": _TorchvisionSource(
        "CIFAR-100", "CIFAR100", "cifar-100-python", ("train", "test", "meta"), (),
        (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100,
    ),
}


def _files_present(root: Path, src: _TorchvisionSource) -> bool:
    folder = root / src.folder
    if all((folder / f).is_file() for f in src.files):
        return True
    return bool(src.legacy_files) and all((folder / f).resolve().is_file() for f in src.legacy_files)


def _resolve_root(root: Path, src: _TorchvisionSource) -> Path:
    """``root``, or its parent when ``root`` already is the dataset's own folder."""
    if _files_present(root, src):
        return root
    top = src.folder.split("/")[0]
    if root.name == top and _files_present(root.parent, src):
        return root.parent
    return root


def _load_torchvision(key: str, root: Path | None, download: bool) -> Dataset:
    import torchvision

    src = _SOURCES[key]
    if root is None:
        raise DatasetNotFoundError(
            f"{src.display} needs a data directory: set `data_dir` to the folder that holds (or should receive, "
            f"with download=true) {src.folder}"
        )
    root = _resolve_root(root, src)
    folder = root / src.folder
    if not _files_present(root, src):
        if not download:
            missing = [f for f in src.files if not (folder / f).is_file()]
            raise DatasetNotFoundError(
                f"{src.display} not found under {root} (looked for {', '.join(str(folder / f) for f in missing)}). "
                f"Put the files there or rerun with download=true (config key `download`), "
                f"or point `data_dir` at the folder that holds them."
            )
    tv_cls = getattr(torchvision.datasets, src.tv_class)
    splits = []
    for train in (True, False):
        try:
            ds = tv_cls(str(root), train=train, download=download)
        except Exception as err:  # torchvision raises RuntimeError/URLError/OSError here
            if download:
                raise DatasetNotFoundError(
                    f"downloading {src.display} into {root} failed ({type(err).__name__}: {err}). "
                    f"On a machine without network access, copy the files into {folder} and rerun with "
                    f"download=false, or point `data_dir` at the folder that holds them."
                ) from err
            raise DatasetNotFoundError(
                f"{src.display} files under {folder} could not be read ({type(err).__name__}: {err}); they may be "
                f"incomplete or corrupted. Delete them and rerun with download=true (config key `download`)."
            ) from err
        splits.append(_torchvision_tensors(ds, src))
    (x, y), (x_test, y_test) = splits
    return Dataset(
        name=key, x=x, y=y, x_test=x_test, y_test=y_test, num_classes=src.num_classes, mean=src.mean, std=src.std
    )


def _torchvision_tensors(ds: Any, src: _TorchvisionSource) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and labels straight from a torchvision dataset's ``data``/``targets``."""
    data = torch.as_tensor(np.asarray(ds.data))
    if data.ndim == 3:  # MNIST-like: [N, H, W] uint8
        data = data.unsqueeze(1)
    else:  # CIFAR: [N, H, W, C] uint8
        data = data.permute(0, 3, 1, 2)
    x = data.to(torch.float32).div_(255.0)
    x = normalize(x, src.mean, src.std).contiguous()
    y = torch.as_tensor(np.asarray(ds.targets), dtype=torch.int64)
    return x, y


@register_dataset("mnist")
def _mnist(*, root: Path | None, download: bool, seed: int) -> Dataset:
    """MNIST (60k train = population, 10k test), 1x28x28."""
    return _load_torchvision("mnist", root, download)


@register_dataset("fashion_mnist")
def _fashion_mnist(*, root: Path | None, download: bool, seed: int) -> Dataset:
    """Fashion-MNIST (60k train = population, 10k test), 1x28x28."""
    return _load_torchvision("fashion_mnist", root, download)


@register_dataset("cifar10")
def _cifar10(*, root: Path | None, download: bool, seed: int) -> Dataset:
    """CIFAR-10 (50k train = population, 10k test), 3x32x32."""
    return _load_torchvision("cifar10", root, download)


@register_dataset("cifar100")
def _cifar100(*, root: Path | None, download: bool, seed: int) -> Dataset:
    """CIFAR-100 (50k train = population, 10k test, fine labels), 3x32x32."""
    return _load_torchvision("cifar100", root, download)


# --------------------------------------------------------------------------- offline sets


@register_dataset("digits")
def _digits(*, root: Path | None, download: bool, seed: int, num_test: int = 297) -> Dataset:
    """scikit-learn's bundled 8x8 digits: a seeded split into population and ``num_test`` held out.

    Pixels (0..16) are scaled to [0, 1] and normalised with the population's mean and std.
    """
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
    labels = torch.as_tensor(bunch.target, dtype=torch.int64)
    total = len(images)
    if isinstance(num_test, bool) or not isinstance(num_test, (int, np.integer)) or not 1 <= num_test < total:
        raise ValueError(f"`dataset.num_test` for digits must be an integer in [1, {total - 1}], got {num_test!r}")
    order = torch.from_numpy(np.random.default_rng([int(seed), 0]).permutation(total))
    test_idx, pop_idx = order[:num_test].sort().values, order[num_test:].sort().values
    mean, std = _channel_stats(images[pop_idx])
    images = normalize(images, mean, std)
    return Dataset(
        name="digits",
        x=images[pop_idx].contiguous(),
        y=labels[pop_idx],
        x_test=images[test_idx].contiguous(),
        y_test=labels[test_idx],
        num_classes=10,
        mean=mean,
        std=std,
        indices=pop_idx,
        test_indices=test_idx,
    )


@register_dataset("synthetic")
def _synthetic(
    *,
    root: Path | None,
    download: bool,
    seed: int,
    num_examples: int = 1000,
    num_test: int = 200,
    num_classes: int = 10,
    channels: int = 1,
    image_size: int = 8,
    noise: float = 1.0,
    label_noise: float = 0.0,
) -> Dataset:
    """Seeded learnable images: a random prototype per class plus Gaussian noise.

    Each class has a standard-normal prototype of shape ``[channels, image_size,
    image_size]``; an example is its class prototype plus ``noise`` times standard
    normal noise. ``label_noise`` relabels that fraction of the population uniformly at
    random (such examples can only be memorised, which makes membership easy to infer).
    """
    for key, value, low in (
        ("num_examples", num_examples, 1), ("num_test", num_test, 1), ("num_classes", num_classes, 2),
        ("channels", channels, 1), ("image_size", image_size, 1),
    ):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"`dataset.{key}` for synthetic must be an integer >= {low}, got {value!r}")
    if not noise >= 0:
        raise ValueError(f"`dataset.noise` must be >= 0, got {noise!r}")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"`dataset.label_noise` must be in [0, 1], got {label_noise!r}")
    gen = torch.Generator().manual_seed(int(np.random.default_rng([int(seed), 3]).integers(2**62)))
    shape = (channels, image_size, image_size)
    prototypes = torch.randn((num_classes, *shape), generator=gen)
    total = num_examples + num_test
    labels = torch.randint(0, num_classes, (total,), generator=gen)
    images = prototypes[labels] + noise * torch.randn((total, *shape), generator=gen)
    y, y_test = labels[:num_examples].clone(), labels[num_examples:].clone()
    if label_noise > 0:
        flip = torch.rand(num_examples, generator=gen) < label_noise
        y[flip] = torch.randint(0, num_classes, (int(flip.sum()),), generator=gen)
    x, x_test = images[:num_examples], images[num_examples:]
    mean, std = _channel_stats(x)
    return Dataset(
        name="synthetic",
        x=normalize(x, mean, std).contiguous(),
        y=y,
        x_test=normalize(x_test, mean, std).contiguous(),
        y_test=y_test,
        num_classes=num_classes,
        mean=mean,
        std=std,
    )


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
    file = Path(path).expanduser()
    if not file.is_absolute() and root is not None:
        file = Path(root) / file
    if not file.is_file():
        raise DatasetNotFoundError(f"{file} not found: set `dataset.path` (relative to `data_dir`) to your .npz file")
    arrays = read_npz(file)
    x, x_test = _images_nchw(arrays.x_train, "x_train", file), _images_nchw(arrays.x_test, "x_test", file)
    mean, std = _channel_stats(x)
    try:
        data = Dataset(name="npz", x=normalize(x, mean, std), y=torch.from_numpy(arrays.y_train),
                       x_test=normalize(x_test, mean, std), y_test=torch.from_numpy(arrays.y_test),
                       num_classes=arrays.num_classes, mean=mean, std=std)
    except ValueError as err:  # e.g. train and test images of different shapes
        raise DataValidationError(f"{file}: {err}") from err
    validate_dataset(data, source=str(file))
    return data
