"""Wide ResNet (Zagoruyko & Komodakis 2016); WRN-28-2 is the shadow model of LiRA and RMIA."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn

from mia_torch.models.cnn import check_dropout, check_norm, check_shape, dropout_layer, norm_layer

__all__ = ["WideResNet"]


class _PreActBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm: str, dropout: float) -> None:
        super().__init__()
        self.norm1 = norm_layer(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.norm2 = norm_layer(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.relu = nn.ReLU()
        self.dropout = dropout_layer(dropout)
        self.shortcut = None if stride == 1 and cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(x))
        # when the shape changes, the projection shortcut reads the pre-activated input
        shortcut = x if self.shortcut is None else self.shortcut(out)
        out = self.conv1(out)
        out = self.conv2(self.dropout(self.relu(self.norm2(out))))
        return out + shortcut


class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor`` with pre-activation blocks (default WRN-28-2, 1.5M params).

    A 3x3 stem to 16 channels, three groups of ``(depth - 4) / 6`` blocks with widths
    ``16, 32, 64`` times ``widen_factor`` and strides 1, 2, 2, a final norm-ReLU, global
    average pooling and a linear layer; ``dropout`` between the two convs of a block.
    ``norm`` is ``"batch"``, ``"group"``/``"group<k>"`` or ``"none"``.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_classes: int,
        depth: int = 28,
        widen_factor: int = 2,
        dropout: float = 0.0,
        norm: str = "batch",
    ) -> None:
        super().__init__()
        (c, _, _), num_classes = check_shape(input_shape, num_classes)
        check_norm(norm)
        depth, widen_factor, dropout = int(depth), int(widen_factor), check_dropout(dropout)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"model option `depth` must be 6n + 4 with n >= 1 (e.g. 16, 22, 28), got {depth}")
        if widen_factor < 1:
            raise ValueError(f"model option `widen_factor` must be >= 1, got {widen_factor}")
        n = (depth - 4) // 6
        self.stem = nn.Conv2d(c, 16, 3, padding=1, bias=False)
        blocks = []
        cin = 16
        for i, stride in enumerate((1, 2, 2)):
            cout = 16 * 2**i * widen_factor
            for j in range(n):
                blocks.append(_PreActBlock(cin, cout, stride if j == 0 else 1, norm, dropout))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.final = nn.Sequential(norm_layer(norm, cin), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(cin, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.final(self.blocks(self.stem(x))))
