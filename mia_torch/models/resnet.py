"""ResNet-18, CIFAR variant (3x3 stem, no max pool), with a configurable norm layer."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from mia_torch.models.cnn import check_norm, check_shape, dropout_layer, norm_layer

__all__ = ["ResNet18"]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=bias)
        self.norm2 = norm_layer(norm, cout)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=bias), norm_layer(norm, cout))

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for small images (He et al. 2016, the common CIFAR variant).

    A 3x3 stride-1 stem conv (no max pool), four stages of two basic blocks with widths
    ``width * (1, 2, 4, 8)`` (64..512 by default) and strides 1, 2, 2, 2, global average
    pooling and a linear layer. ``norm`` is ``"batch"``, ``"group"``/``"group<k>"`` or
    ``"none"``. Any input size works (global pooling). ``dropout`` acts on the pooled
    features before the linear layer (the usual place when ResNets get dropout).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        width: int = 64,
        norm: str = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        (c, _, _), num_classes = check_shape(input_shape, num_classes)
        check_norm(norm)
        width = int(width)
        if width < 1:
            raise ValueError(f"model option `width` must be >= 1, got {width}")
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1, bias=norm == "none"), norm_layer(norm, width), nn.ReLU(inplace=True)
        )
        blocks = []
        cin = width
        for i, stride in enumerate((1, 2, 2, 2)):
            cout = width * 2**i
            blocks += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = dropout_layer(dropout)
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.dropout(self.pool(self.blocks(self.stem(x))).flatten(1)))
