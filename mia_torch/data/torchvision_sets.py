"""MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100 through ``torchvision.datasets``.

The train split is the population and the test split is held out. Files are read from
``root`` (config key ``data_dir``) in torchvision's layout, or from ``root``'s parent
when ``root`` already is the dataset's own folder; ``download=True`` lets torchvision
fetch missing files first. Without the files, and without ``download``, loading stops
at once with a message naming the folder it looked in and the flag.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch

from mia_torch.data.datasets import Dataset, DatasetNotFoundError, normalize
from mia_torch.data.loader import DatasetLoader

__all__ = ["CIFAR10", "CIFAR100", "MNIST", "FashionMNIST"]


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


# MNIST and Fashion-MNIST: 60k train, 10k test, 1x28x28; CIFAR-10/100: 50k train, 10k test, 3x32x32
# (CIFAR-100 with its 100 fine labels).
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


class _TorchvisionLoader(DatasetLoader):
    """A torchvision dataset: the train split is the population, the test split is held out. No options."""

    key: ClassVar[str]  # of _SOURCES

    def load(self, *, root: Path | None, download: bool, seed: int) -> Dataset:
        """The dataset from ``root`` (``data_dir``), fetched first with ``download``."""
        return _load_torchvision(self.key, root, download)


class MNIST(_TorchvisionLoader):
    """``dataset=mnist``: MNIST (60k train, 10k test, 1x28x28)."""

    key = "mnist"


class FashionMNIST(_TorchvisionLoader):
    """``dataset=fashion_mnist``: Fashion-MNIST (60k train, 10k test, 1x28x28)."""

    key = "fashion_mnist"


class CIFAR10(_TorchvisionLoader):
    """``dataset=cifar10``: CIFAR-10 (50k train, 10k test, 3x32x32)."""

    key = "cifar10"


class CIFAR100(_TorchvisionLoader):
    """``dataset=cifar100``: CIFAR-100 with its 100 fine labels (50k train, 10k test, 3x32x32)."""

    key = "cifar100"
