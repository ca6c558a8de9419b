"""Model zoo: every constructor takes ``input_shape=(C, H, W)``, ``num_classes`` and its options.

The MLP also takes ``input_shape=(F,)``: the feature vectors of tabular data.

Built from configs with ``hydra.utils.instantiate(cfg.model, input_shape=..., num_classes=...)``;
conv models take ``norm="batch" | "group" | "none"`` (GroupNorm / none for DP-SGD).
"""

from mia_torch.models.cnn import FastCifarCNN, SmallCNN, norm_layer
from mia_torch.models.mlp import MLP
from mia_torch.models.resnet import ResNet18
from mia_torch.models.wrn import WideResNet

__all__ = ["MLP", "FastCifarCNN", "ResNet18", "SmallCNN", "WideResNet", "norm_layer"]
