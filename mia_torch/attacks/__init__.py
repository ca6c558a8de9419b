"""Membership inference attacks: one module per family, one shared interface.

Every attack is ``fit(ReferenceSignals) -> score(target logits [N, Q, C]) -> float64 [N]``,
higher = more likely member, and is built from ``configs/attack/<name>.yaml`` by
``hydra.utils.instantiate``. The built-in attacks are :class:`FeatureAttack` s: they read
per-example features of the served outputs (:class:`ReferenceFeatures`), so a study never
holds every model's logits at once.
"""
from mia_torch.attacks.base import Attack, ReferenceSignals, balanced_accuracy_threshold, roc_auc
from mia_torch.attacks.blind import BlindBaseline
from mia_torch.attacks.feature_attack import FeatureAttack, ReferenceFeatures
from mia_torch.attacks.label_only import GapAttack, LabelOnlyAttack
from mia_torch.attacks.lira import LiRA
from mia_torch.attacks.population import PopulationAttack
from mia_torch.attacks.quantile import QuantileAttack
from mia_torch.attacks.rmia import RMIA
from mia_torch.attacks.shokri import ShokriAttack
from mia_torch.attacks.threshold import ThresholdAttack

__all__ = [
    "Attack",
    "FeatureAttack",
    "ReferenceFeatures",
    "ReferenceSignals",
    "ThresholdAttack",
    "PopulationAttack",
    "ShokriAttack",
    "LiRA",
    "RMIA",
    "GapAttack",
    "LabelOnlyAttack",
    "QuantileAttack",
    "BlindBaseline",
    "balanced_accuracy_threshold",
    "roc_auc",
]
