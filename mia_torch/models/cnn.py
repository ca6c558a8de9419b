"""Shared building blocks and the small convolutional models (MNIST-size CNN, fast CIFAR CNN).

Every model takes keyword arguments ``input_shape`` ``(C, H, W)`` (the MLP also ``(F,)``
for tabular records) and ``num_classes``
plus its own options, and returns logits ``[B, num_classes]``. Conv models take
``norm``: ``"batch"`` (default), ``"group"`` (GroupNorm with up to 32 groups; also
``"group<k>"`` for up to ``k`` groups), or ``"none"``. GroupNorm and ``none`` keep no
batch statistics, which is what per-example-gradient DP-SGD (Opacus) needs.

Every model takes ``dropout`` (default 0: no dropout layer at all, so outputs and state
dicts are those of the model without the option), placed where common practice for the
architecture puts it: before the last linear layer for the CNNs with a classifier head
(SmallCNN after its hidden layer, as in the classic MNIST CNNs; FastCifarCNN and ResNet-18
after global pooling), between the two convs of each block for Wide ResNets (Zagoruyko &
Komodakis 2016), after each hidden layer for MLPs.
"""

from __future__ import annotations

import math
import re
from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["FastCifarCNN", "SmallCNN", "check_dropout", "check_shape", "dropout_layer", "norm_layer"]

_GROUP_RE = re.compile(r"^group(\d+)?$")


def check_norm(norm: str) -> str:
    """Validate a ``norm`` option and return it."""
    if norm in ("batch", "none") or (isinstance(norm, str) and _GROUP_RE.match(norm)):
        return norm
    raise ValueError(f"model option `norm` must be 'batch', 'group', 'group<k>' or 'none', got {norm!r}")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """A 2-d normalisation layer over ``channels``: BatchNorm2d, GroupNorm, or Identity.

    ``"group"`` uses ``gcd(32, channels)`` groups and ``"group<k>"`` ``gcd(k, channels)``,
    so the group count always divides the channels.
    """
    check_norm(norm)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    m = _GROUP_RE.match(norm)
    groups = math.gcd(int(m.group(1) or 32), channels)
    return nn.GroupNorm(groups, channels)


def check_dropout(dropout: float) -> float:
    """Validate a ``dropout`` option (a probability in [0, 1)) and return it as a float."""
    if not isinstance(dropout, (int, float)) or not 0 <= float(dropout) < 1:
        raise ValueError(f"model option `dropout` must be in [0, 1), got {dropout!r}")
    return float(dropout)


def dropout_layer(dropout: float) -> nn.Module:
    """``nn.Dropout(dropout)``, or ``nn.Identity`` for 0 (no randomness, no change)."""
    dropout = check_dropout(dropout)
    return nn.Dropout(dropout) if dropout > 0 else nn.Identity()


def check_shape(
    input_shape: Sequence[int], num_classes: int, *, images_only: bool = True
) -> tuple[tuple[int, ...], int]:
    """Validate ``input_shape`` and ``num_classes``; return them as ints.

    ``input_shape`` is ``(C, H, W)`` of an image, or, for models that also take tabular
    records (``images_only=False``), ``(F,)`` features. An image-only model given
    ``(F,)`` is told to use ``model=mlp``.
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 1 and images_only:
        raise ValueError(
            f"config key `model`: this network needs images (C, H, W), but the dataset is tabular "
            f"({shape[0]} features per record): use model=mlp"
        )
    if len(shape) not in ((3,) if images_only else (1, 3)) or min(shape) < 1:
        expected = "(C, H, W)" if images_only else "(C, H, W) or (F,)"
        raise ValueError(f"input_shape must be {expected} with positive sizes, got {tuple(input_shape)}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return shape, int(num_classes)  # type: ignore[return-value]


def _ints(values: Sequence[int], what: str, length: int | None = None) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if (length is not None and len(out) != length) or any(v < 1 for v in out):
        want = f"{length} " if length is not None else ""
        raise ValueError(f"model option `{what}` must be {want}positive integers, got {list(values)}")
    return out


class SmallCNN(nn.Module):
    """Two conv stages and a two-layer head, for MNIST-size (28x28) or 8x8 grayscale images.

    ``conv3x3(width)-norm-ReLU-maxpool2 -> conv3x3(2*width)-norm-ReLU-maxpool2 ->
    adaptive avg pool to at most 4x4 -> Linear(hidden)-ReLU[-Dropout] -> Linear(num_classes)``.
    Convs are zero-padded, so any image of at least 4x4 works (8x8 digits pool to 2x2).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 32,
        hidden: int = 128,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_shape(input_shape, num_classes)
        width, hidden = _ints((width, hidden), "width/hidden")
        dropout = check_dropout(dropout)
        bias = check_norm(norm) == "none"
        pooled = (max(1, min(4, h // 4)), max(1, min(4, w // 4)))
        self.features = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=bias),
            norm_layer(norm, width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=bias),
            norm_layer(norm, 2 * width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.AdaptiveAvgPool2d(pooled),
        )
        head: list[nn.Module] = [nn.Flatten(), nn.Linear(2 * width * pooled[0] * pooled[1], hidden), nn.ReLU(inplace=True)]
        if dropout > 0:  # only when asked: module indices (state dict keys) stay those of the plain model
            head.append(nn.Dropout(dropout))
        self.classifier = nn.Sequential(*head, nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class _DiracConv(nn.Conv2d):
    """3x3 'same' conv without bias, initialised with an identity (Dirac) part as in airbench."""

    def reset_parameters(self) -> None:
        super().reset_parameters()
        w = self.weight.data
        nn.init.dirac_(w[: min(w.size(0), w.size(1))])


def _airbench_norm(norm: str, channels: int, momentum: float) -> nn.Module:
    if norm != "batch":
        return norm_layer(norm, channels)
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=momentum)
    bn.weight.requires_grad_(False)  # airbench trains only the BatchNorm biases
    return bn


class _ConvGroup(nn.Module):
    def __init__(self, cin: int, cout: int, *, pool: bool, norm: str, momentum: float) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = _DiracConv(cin, cout, 3, padding="same", bias=bias)
        self.pool = nn.MaxPool2d(2) if pool else nn.Identity()
        self.norm1 = _airbench_norm(norm, cout, momentum)
        self.conv2 = _DiracConv(cout, cout, 3, padding="same", bias=bias)
        self.norm2 = _airbench_norm(norm, cout, momentum)
        self.activ = nn.GELU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.activ(self.norm1(self.pool(self.conv1(x))))
        return self.activ(self.norm2(self.conv2(x)))


class FastCifarCNN(nn.Module):
    """The airbench94 network: a fast, residual-free CIFAR CNN (~94% CIFAR-10 in ~10 epochs).

    Architecture of Keller Jordan's airbench94 (github.com/KellerJordan/cifar10-airbench,
    ``airbench94.py``; paper "94% on CIFAR-10 in 3.29 Seconds on a Single GPU", 2024): a
    2x2 unpadded stem conv to ``2 * C * 4`` channels + GELU, then three groups of widths
    ``widths`` (default 64/256/256), each ``conv3x3 - maxpool2 - norm - GELU - conv3x3 -
    norm - GELU``, then a global max pool (the 3x3 max pool at 32x32), a bias-free linear
    layer and a constant ``scale`` (1/9) on the logits. As in airbench, convs are bias-free
    with a Dirac (identity) part in their initialisation, BatchNorm has eps 1e-12,
    momentum ``bn_momentum`` (PyTorch convention, airbench's 0.6 = 1 - 0.4) and a frozen
    scale (only its bias trains). The reference accuracy needs airbench's recipe (label
    smoothing 0.2, Nesterov SGD with a large lr, lookahead EMA, flip + translate-2
    augmentation); :meth:`init_whitening` gives the stem the patch-whitening
    initialisation. A group skips its pool when that would leave a map under 2x2, so
    smaller inputs (28x28, 8x8) work too. ``dropout`` (not in airbench) acts on the pooled
    features before the linear layer.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        widths: Sequence[int] = (64, 256, 256),
        norm: str = "batch",
        scale: float = 1 / 9,
        stem_kernel: int = 2,
        bn_momentum: float = 0.4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        (c, h, w), num_classes = check_shape(input_shape, num_classes)
        widths = _ints(widths, "widths", 3)
        check_norm(norm)
        stem_kernel = int(stem_kernel)
        if not 1 <= stem_kernel <= min(h, w):
            raise ValueError(f"model option `stem_kernel` must be in [1, {min(h, w)}], got {stem_kernel}")
        self.scale = float(scale)
        stem_width = 2 * c * stem_kernel**2
        self.stem = nn.Conv2d(c, stem_width, stem_kernel, padding=0, bias=True)
        nn.init.zeros_(self.stem.bias)
        size = min(h, w) - stem_kernel + 1
        groups = []
        cin = stem_width
        for width in widths:
            pool = size >= 4  # 31 -> 15 -> 7 -> 3 at 32x32; never pool below 2x2
            groups.append(_ConvGroup(cin, width, pool=pool, norm=norm, momentum=float(bn_momentum)))
            size = size // 2 if pool else size
            cin = width
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = dropout_layer(dropout)
        self.head = nn.Linear(widths[-1], num_classes, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.gelu(self.stem(x))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(self.dropout(x)) * self.scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, *, eps: float = 5e-4, freeze: bool = True) -> None:
        """Set the stem to whiten ``images``' patches (airbench's initialisation).

        The stem's filters become the eigenvectors of the covariance of all
        ``stem_kernel x stem_kernel`` patches of ``images`` (normalised training images,
        a few thousand suffice) scaled by ``1/sqrt(eigenvalue + eps)``, together with their
        negations; with ``freeze`` the stem's weight stops training, as in airbench.
        """
        k = self.stem.kernel_size
        c = self.stem.in_channels
        x = images.to(self.stem.weight.device, torch.float32)
        patches = x.unfold(2, k[0], 1).unfold(3, k[1], 1).transpose(1, 3).reshape(-1, c * k[0] * k[1])
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.T.flip(0)
        # patch entries are flattened in (c, h, w) order, the conv weight's own layout
        filters = eigenvectors.reshape(-1, c, k[0], k[1])
        filters = filters / torch.sqrt(eigenvalues.clamp_min(0) + eps).view(-1, 1, 1, 1)
        self.stem.weight.copy_(torch.cat((filters, -filters)).to(self.stem.weight.dtype))
        if freeze:
            self.stem.weight.requires_grad_(False)
