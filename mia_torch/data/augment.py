"""Training augmentation (``train.augment``): crop, flip, cutout and mixup, on the device.

Randomness comes from the model's own ``torch.Generator`` (on the data's device), drawn
per batch in a fixed order, so that training one model and training several at once
(:mod:`mia_torch.training.ensemble`) see the same augmentations:

1. crop offsets and flip coins (:func:`draw_crop_flip`): a random crop after padding and a
   horizontal flip, in a handful of batched tensor ops;
2. cutout centres (DeVries & Taylor 2017, *Improved Regularization of Convolutional Neural
   Networks with Cutout*): a ``cutout x cutout`` square at a uniformly random centre of
   each image is set to 0 (the dataset mean of normalised data); the square may reach
   past the border, as in the paper;
3. the mixup partner permutation (Zhang et al. 2018, *mixup: Beyond Empirical Risk
   Minimization*): each image is mixed with the batch's permuted image,
   ``x = lam * x + (1 - lam) * x[perm]``, and the loss is
   ``lam * CE(out, y) + (1 - lam) * CE(out, y[perm])``, with one ``lam ~ Beta(alpha,
   alpha)`` per batch as in the paper's implementation. The ``lam`` of every step are
   drawn up front from a NumPy generator seeded with the model's seed
   (:func:`mixup_lambdas`): torch has no seeded Beta sampler, and this keeps the step
   loop free of host synchronisation.

Crop and flip are drawn exactly as before cutout and mixup existed, so configs without
them train bitwise the same models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from mia_torch.settings.checks import check_values, known_keys

__all__ = [
    "AugmentConfig",
    "AugmentDraws",
    "augment_batch",
    "crop_flip",
    "cutout",
    "draw_augment",
    "draw_crop_flip",
    "mix",
    "mixup_cross_entropy",
    "mixup_lambdas",
    "random_crop_flip",
]

def random_crop_flip(
    x: Tensor,
    *,
    padding: int,
    flip: bool,
    generator: torch.Generator | None = None,
    padding_mode: str = "reflect",
) -> Tensor:
    """Per-image random crop after padding and per-image random horizontal flip of ``[B, C, H, W]``.

    Each image is padded by ``padding`` pixels on every side (``padding_mode="reflect"``
    by default, as in LiRA and airbench; ``"zeros"`` pads with 0, i.e. the dataset mean
    for normalised data) and an ``H x W`` window at a uniformly random offset in
    ``[0, 2 * padding]`` is kept, i.e. the image is shifted by up to ``padding`` pixels each
    way; then, with ``flip``, each image is mirrored with probability 1/2. All randomness
    comes from ``generator``, which must live on ``x.device`` (``None``: the default
    generator of that device). ``padding=0, flip=False`` returns ``x`` itself.
    """
    if padding < 0:
        raise ValueError(f"crop padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return x
    if x.ndim != 4:
        raise ValueError(f"random_crop_flip expects [B, C, H, W] images, got shape {tuple(x.shape)}")
    offsets, flips = draw_crop_flip(len(x), padding=padding, flip=flip, generator=generator, device=x.device)
    return crop_flip(x, padding=padding, offsets=offsets, flips=flips, padding_mode=padding_mode)


def draw_crop_flip(
    batch: int, *, padding: int, flip: bool, generator: torch.Generator | None, device: torch.device
) -> tuple[Tensor | None, Tensor | None]:
    """The random draws of :func:`random_crop_flip`: crop offsets ``[B, 2]`` and flip coins ``[B]``."""
    offsets = torch.randint(0, 2 * padding + 1, (batch, 2), device=device, generator=generator) if padding else None
    flips = torch.rand(batch, device=device, generator=generator) < 0.5 if flip else None
    return offsets, flips


def crop_flip(
    x: Tensor, *, padding: int, offsets: Tensor | None, flips: Tensor | None, padding_mode: str = "reflect"
) -> Tensor:
    """Apply given crop ``offsets`` (after padding) and ``flips`` to ``[B, C, H, W]`` images."""
    b, c, h, w = x.shape
    out = x
    if offsets is not None:
        mode = {"reflect": "reflect", "zeros": "constant"}.get(padding_mode)
        if mode is None:
            raise ValueError(f"padding_mode must be 'reflect' or 'zeros', got {padding_mode!r}")
        if mode == "reflect" and padding >= min(h, w):
            mode = "replicate"  # reflect needs padding < image size; tiny images fall back
        padded = F.pad(x, (padding,) * 4, mode=mode)
        rows = (offsets[:, 0:1] + torch.arange(h, device=x.device)).view(b, 1, h, 1)
        cols = (offsets[:, 1:2] + torch.arange(w, device=x.device)).view(b, 1, 1, w)
        out = padded.gather(2, rows.expand(b, c, h, w + 2 * padding))
        out = out.gather(3, cols.expand(b, c, h, w))
    if flips is not None:
        out = torch.where(flips.view(b, 1, 1, 1), out.flip(-1), out)
    return out


#: Stream tag of the mixup coefficients' NumPy generator (keeps them apart from other seeded draws).
_MIXUP_STREAM = 0x6D6978


@dataclass
class AugmentConfig:
    """The ``train.augment`` keys: what training augmentation a model gets (all off by default)."""

    crop_padding: int = 0  # random crop after reflect padding by this many pixels (0 = off)
    flip: bool = False  # random horizontal flip
    cutout: int = 0  # side of the square cut out of each image, in pixels (0 = off)
    mixup_alpha: float = 0.0  # mixup's Beta(alpha, alpha) parameter (0 = off)

    def __post_init__(self) -> None:
        check_values(self, "train.augment", [
            (isinstance(self.crop_padding, int) and self.crop_padding >= 0, "crop_padding", "an integer >= 0"),
            (isinstance(self.flip, bool), "flip", "true or false"),
            (isinstance(self.cutout, int) and self.cutout >= 0, "cutout", "an integer >= 0 (pixels; 0 = off)"),
            (isinstance(self.mixup_alpha, (int, float)) and self.mixup_alpha >= 0, "mixup_alpha", ">= 0 (0 = off)"),
        ])

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "AugmentConfig":
        """Build from a plain mapping, rejecting unknown keys by name."""
        return cls(**known_keys(values, cls, "train.augment"))

    @property
    def mixes(self) -> bool:
        """Whether training mixes examples (mixup): each update then depends on pairs of examples."""
        return self.mixup_alpha > 0


@dataclass(frozen=True)
class AugmentDraws:
    """The random draws of one batch: crop ``offsets [B, 2]``, ``flips [B]``, cutout ``centers [B, 2]``
    and mixup ``partners [B]`` (each None when that augmentation is off)."""

    offsets: Tensor | None
    flips: Tensor | None
    centers: Tensor | None
    partners: Tensor | None


def draw_augment(
    batch: int, cfg: AugmentConfig, *, image_size: tuple[int, ...], generator: torch.Generator | None,
    device: torch.device,
) -> AugmentDraws:
    """Draw one batch's augmentation from ``generator`` in the module's fixed order."""
    offsets, flips = draw_crop_flip(batch, padding=cfg.crop_padding, flip=cfg.flip, generator=generator, device=device)
    centers = None
    if cfg.cutout:
        if len(image_size) != 2:
            raise ValueError(f"train.augment.cutout needs images [C, H, W], got examples of shape {image_size}")
        rows = torch.randint(0, image_size[0], (batch,), device=device, generator=generator)
        cols = torch.randint(0, image_size[1], (batch,), device=device, generator=generator)
        centers = torch.stack((rows, cols), 1)
    partners = torch.randperm(batch, device=device, generator=generator) if cfg.mixes else None
    return AugmentDraws(offsets, flips, centers, partners)


def cutout(x: Tensor, *, size: int, centers: Tensor) -> Tensor:
    """Zero a ``size x size`` square centred at ``centers[b] = (row, col)`` in each image of ``[B, C, H, W]``."""
    b, _, h, w = x.shape
    top = (centers[:, :1] - size // 2).view(b, 1)
    left = (centers[:, 1:] - size // 2).view(b, 1)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size)  # [B, H]
    in_cols = (cols >= left) & (cols < left + size)  # [B, W]
    return x.masked_fill(in_rows.view(b, 1, h, 1) & in_cols.view(b, 1, 1, w), 0)


def augment_batch(x: Tensor, draws: AugmentDraws, cfg: AugmentConfig) -> Tensor:
    """Crop, flip and cut out ``x`` as ``draws`` say (mixup is applied by :func:`mix`)."""
    if draws.offsets is not None or draws.flips is not None:
        if x.ndim != 4:
            raise ValueError(f"train.augment crop/flip need images [B, C, H, W], got shape {tuple(x.shape)}")
        x = crop_flip(x, padding=cfg.crop_padding, offsets=draws.offsets, flips=draws.flips)
    if draws.centers is not None:
        x = cutout(x, size=cfg.cutout, centers=draws.centers)
    return x


def mixup_lambdas(alpha: float, num_steps: int, *, seed: int, device: torch.device) -> Tensor:
    """The mixup coefficient of each of ``num_steps`` steps, ``Beta(alpha, alpha)``, seeded by ``seed``."""
    rng = np.random.default_rng([int(seed), _MIXUP_STREAM])
    return torch.as_tensor(rng.beta(alpha, alpha, size=num_steps), dtype=torch.float32, device=device)


def mix(x: Tensor, partners: Tensor, lam: Tensor) -> Tensor:
    """``lam * x + (1 - lam) * x[partners]``; ``lam`` is a scalar or one value per example."""
    lam = lam.view(-1, *([1] * (x.ndim - 1))) if lam.ndim else lam
    return lam * x + (1 - lam) * x[partners]


def mixup_cross_entropy(
    logits: Tensor, y: Tensor, partners: Tensor, lam: Tensor, *, label_smoothing: float = 0.0
) -> Tensor:
    """Per-example mixup loss ``lam * CE(logits, y) + (1 - lam) * CE(logits, y[partners])``."""
    own = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
    other = F.cross_entropy(logits, y[partners], reduction="none", label_smoothing=label_smoothing)
    return lam * own + (1 - lam) * other
