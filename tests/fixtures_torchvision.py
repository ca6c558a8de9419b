"""Write tiny datasets in torchvision's exact on-disk formats, for offline loading tests.

``write_mnist`` writes the four uncompressed IDX files torchvision's ``MNIST`` /
``FashionMNIST`` read from ``<root>/<kind>/raw/``. ``write_cifar`` writes the pickled
batches of ``cifar-10-batches-py`` / ``cifar-100-python`` (torchvision also checks
their MD5 sums, which tests must bypass). Images are learnable: every class has its
own blocky pattern, and each image is that pattern plus noise.
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


class Written(NamedTuple):
    """What a writer put on disk: uint8 images in the file's layout and int64 labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    folder: Path


def class_images(
    labels: np.ndarray,
    *,
    size: int,
    channels: int,
    num_classes: int,
    rng: np.random.Generator,
    cell_noise: float = 80.0,
    pixel_noise: float = 30.0,
    pattern_seed: int = 1234,
) -> np.ndarray:
    """uint8 ``[N, size, size, channels]`` images: a fixed random 4x4-block pattern per class plus noise.

    A class pattern is a 4x4 grid of blocks that are dark (40) or bright (200).
    ``cell_noise`` perturbs whole blocks per image (this is what makes some images
    ambiguous, so models do not generalise perfectly and membership leaves a trace);
    ``pixel_noise`` is independent per pixel.
    """
    cells = 4
    pattern_rng = np.random.default_rng(pattern_seed)
    coarse = (pattern_rng.random((num_classes, cells, cells, channels)) > 0.5).astype(np.float64)
    values = 40.0 + 160.0 * coarse[labels] + rng.normal(0.0, cell_noise, size=(len(labels), cells, cells, channels))
    reps = -(-size // cells)
    base = values.repeat(reps, axis=1).repeat(reps, axis=2)[:, :size, :size, :]
    noisy = base + rng.normal(0.0, pixel_noise, size=base.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Big-endian IDX file of unsigned bytes (type code 0x08), as MNIST ships it."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_mnist(
    root: str | Path,
    *,
    num_train: int,
    num_test: int,
    seed: int,
    kind: str = "MNIST",
    cell_noise: float = 80.0,
    pixel_noise: float = 30.0,
) -> Written:
    """Write a tiny MNIST-format dataset (28x28 grayscale, 10 classes) under ``<root>/<kind>/raw/``.

    ``kind`` is ``"MNIST"`` or ``"FashionMNIST"`` (torchvision's class name, which is also
    its folder name). Labels cycle through all ten classes in a seeded order; the noise
    levels are those of :func:`class_images`. Returns the written arrays: images
    ``[N, 28, 28]`` uint8 and labels int64.
    """
    if kind not in ("MNIST", "FashionMNIST"):
        raise ValueError(f"kind must be 'MNIST' or 'FashionMNIST', got {kind!r}")
    rng = np.random.default_rng(seed)
    folder = Path(root) / kind / "raw"
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, images_name, labels_name in (
        (num_train, MNIST_FILES["train_images"], MNIST_FILES["train_labels"]),
        (num_test, MNIST_FILES["test_images"], MNIST_FILES["test_labels"]),
    ):
        labels = rng.permutation(np.arange(n) % 10).astype(np.int64)
        images = class_images(
            labels, size=28, channels=1, num_classes=10, rng=rng, cell_noise=cell_noise, pixel_noise=pixel_noise
        )[..., 0]
        _write_idx(folder / images_name, images)
        _write_idx(folder / labels_name, labels.astype(np.uint8))
        out += [images, labels]
    return Written(out[0], out[1], out[2], out[3], folder)


def write_cifar(root: str | Path, *, num_train: int, num_test: int, seed: int, kind: str = "CIFAR10") -> Written:
    """Write a tiny CIFAR-format dataset (32x32 RGB) as torchvision's pickled batches.

    ``kind="CIFAR10"`` writes ``cifar-10-batches-py/data_batch_1..5, test_batch,
    batches.meta`` (10 classes); ``kind="CIFAR100"`` writes ``cifar-100-python/train,
    test, meta`` (100 fine classes). The training images are spread over the batches in
    order. Returns images ``[N, 32, 32, 3]`` uint8 (torchvision's HWC ``data``) and labels.
    """
    if kind == "CIFAR10":
        folder, num_classes, label_key = Path(root) / "cifar-10-batches-py", 10, "labels"
        train_files = [f"data_batch_{i}" for i in range(1, 6)]
        test_file, meta_file, meta = "test_batch", "batches.meta", {"label_names": [f"c{i}" for i in range(10)]}
    elif kind == "CIFAR100":
        folder, num_classes, label_key = Path(root) / "cifar-100-python", 100, "fine_labels"
        train_files = ["train"]
        test_file, meta_file, meta = "test", "meta", {"fine_label_names": [f"c{i}" for i in range(100)]}
    else:
        raise ValueError(f"kind must be 'CIFAR10' or 'CIFAR100', got {kind!r}")
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def make(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
        return class_images(labels, size=32, channels=3, num_classes=num_classes, rng=rng), labels

    def dump(name: str, images: np.ndarray, labels: np.ndarray) -> None:
        entry = {"data": images.transpose(0, 3, 1, 2).reshape(len(images), -1), label_key: labels.tolist()}
        with open(folder / name, "wb") as f:
            pickle.dump(entry, f)

    x_train, y_train = make(num_train)
    x_test, y_test = make(num_test)
    for name, part in zip(train_files, np.array_split(np.arange(num_train), len(train_files))):
        dump(name, x_train[part], y_train[part])
    dump(test_file, x_test, y_test)
    with open(folder / meta_file, "wb") as f:
        pickle.dump(meta, f)
    return Written(x_train, y_train, x_test, y_test, folder)
