"""What every dataset becomes: a :class:`Dataset` of normalised float32 tensors, and helpers its loaders share.

A :class:`Dataset` holds the *population* (``x``, ``y``: the pool of MIA candidates that
the keep matrix splits among models) and a *held-out test split* (``x_test``,
``y_test``: used only to report model test accuracy). Everything is loaded straight
into tensors (no per-item PIL loop), so the whole dataset can live on the compute device
and batches are index gathers. The loaders (what a ``dataset`` config builds) are
:class:`mia_torch.data.loader.DatasetLoader` subclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

__all__ = [
    "DATASET_KINDS",
    "Dataset",
    "DatasetNotFoundError",
    "channel_stats",
    "data_file",
    "is_int_in",
    "normalize",
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
    all of it (:func:`mia_torch.fingerprint.dataset_digest`), set by
    :func:`mia_torch.data.loader.load_dataset`.
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


def data_file(path: str | Path, root: Path | None) -> Path:
    """``path`` with ``~`` expanded, under ``root`` (``data_dir``) unless absolute."""
    file = Path(path).expanduser()
    return Path(root) / file if not file.is_absolute() and root is not None else file


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


def is_int_in(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is an integer (Python or NumPy, not a bool) in ``[low, high]`` (no upper bound if None)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        return False
    return bool(low <= value and (high is None or value <= high))


def split_rows(total: int, num_test: int, *, seed: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of ``total`` rows: sorted population rows and ``num_test`` sorted test rows.

    The test rows are the first ``num_test`` of ``default_rng([seed, stream]).permutation(total)``.
    Loaders split with stream 0; the ``population_size`` and ``test_size`` subsets of
    :func:`mia_torch.data.loader.load_dataset` are the test rows of streams 1 and 2.
    """
    order = np.random.default_rng([int(seed), stream]).permutation(total)
    return np.sort(order[num_test:]), np.sort(order[:num_test])
