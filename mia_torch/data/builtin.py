"""Datasets that need no files: scikit-learn's bundled digits and a seeded synthetic set.

- ``digits``: scikit-learn's 8x8 digits (1797 images); a seeded split gives the
  population and ``num_test`` held-out images. The offline default.
- ``synthetic``: seeded class prototypes plus Gaussian noise, for tests and sanity checks.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mia_torch.data.datasets import Dataset, channel_stats, is_int_in, normalize, split_rows
from mia_torch.data.loader import DatasetLoader

__all__ = ["Digits", "Synthetic"]


class Digits(DatasetLoader):
    """``dataset=digits``: scikit-learn's bundled 8x8 digits, the offline default."""

    def load(self, *, root: Path | None, download: bool, seed: int, num_test: int = 297) -> Dataset:
        """scikit-learn's bundled 8x8 digits: a seeded split into population and ``num_test`` held out.

        Pixels (0..16) are scaled to [0, 1] and normalised with the population's mean and std.
        """
        from sklearn.datasets import load_digits

        bunch = load_digits()
        images = torch.as_tensor(bunch.images, dtype=torch.float32).div_(16.0).unsqueeze(1)
        labels = torch.as_tensor(bunch.target, dtype=torch.int64)
        total = len(images)
        if not is_int_in(num_test, 1, total - 1):
            raise ValueError(f"`dataset.num_test` for digits must be an integer in [1, {total - 1}], got {num_test!r}")
        pop_idx, test_idx = (torch.from_numpy(rows) for rows in split_rows(total, num_test, seed=seed))
        mean, std = channel_stats(images[pop_idx])
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


class Synthetic(DatasetLoader):
    """``dataset=synthetic``: seeded learnable images, for tests and sanity checks."""

    def load(
        self,
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
            if not is_int_in(value, low):
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
        mean, std = channel_stats(x)
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
