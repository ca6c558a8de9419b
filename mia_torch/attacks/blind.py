"""The blind baseline (Das, Zhang & Tramèr 2024): tell members from non-members without the model.

A classifier that sees only the records (features, or pixels and simple image statistics,
plus the class label), never the model, is trained to separate the claimed members from
the non-members. The records are split into stratified folds (two by default); each fold is
scored by a classifier trained on the other folds (cross-fitting), so no record is scored by
a classifier that saw its membership, and each fold's AUC is an honest held-out measurement
(:func:`mia_torch.metrics.blind.held_out_auc` combines them). When members and non-members
are random halves of one population (a study's keep rows), no classifier can beat chance:
its AUC is 0.5 within its interval. When they were collected differently (other dates,
sites, preprocessing), it separates them, and an attack that does no better than it
measures the records, not the model.

Unlike every other attack, the blind baseline reads membership: that is its point. It is
an attack only in name (``attack=blind``); the evaluation runs it.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from mia_torch.attacks.base import Attack, check_choice, check_number

__all__ = ["BLIND_MODELS", "BlindBaseline", "record_features", "torch_threads"]

BLIND_MODELS = ("hgb", "logistic")


@contextlib.contextmanager
def torch_threads() -> Iterator[None]:
    """scikit-learn's native thread pools limited to torch's thread count (``num_threads``) in the block."""
    with threadpool_limits(limits=torch.get_num_threads()):
        yield


def record_features(records: Any, labels: Any, *, image_size: int = 8) -> np.ndarray:
    """What the blind classifier sees of each record: float64 ``[N, F + 1]``, the class label last.

    Tabular records ``[N, F]`` as they are; images ``[N, C, H, W]`` average-pooled to at most
    ``image_size`` x ``image_size`` pixels per channel, plus each channel's mean, standard
    deviation, minimum and maximum (global shifts such as brightness or a different
    normalisation show there first).
    """
    x = torch.as_tensor(records).detach().to("cpu", torch.float64)
    y = np.asarray(torch.as_tensor(labels).cpu(), dtype=np.float64).reshape(-1, 1)
    if x.ndim == 4:
        pooled = torch.nn.functional.adaptive_avg_pool2d(x, (min(image_size, x.shape[2]), min(image_size, x.shape[3])))
        flat = x.flatten(2)
        stats = [flat.mean(-1), flat.std(-1, unbiased=False), flat.amin(-1), flat.amax(-1)]
        x = torch.cat([pooled.flatten(1), *stats], dim=1)
    elif x.ndim != 2:
        raise ValueError(f"records must be images [N, C, H, W] or tabular rows [N, F], got {tuple(x.shape)}")
    if len(y) != len(x):
        raise ValueError(f"{len(x)} records but {len(y)} labels")
    return np.concatenate([x.numpy(), y], axis=1)


class BlindBaseline(Attack):
    """Cross-validated classifier of membership from the records alone (see the module docstring).

    Args:
        model: ``hgb`` (scikit-learn's HistGradientBoostingClassifier, the label as a
            categorical feature) or ``logistic`` (logistic regression on standardised
            features and the one-hot label).
        folds: stratified folds; each is scored by a classifier trained on the others.
        image_size: images are average-pooled to at most this many pixels per side.
        seed: seeds the folds and the classifier.
    """

    reads_records = True
    reads_membership = True

    def __init__(self, model: str = "hgb", folds: int = 2, image_size: int = 8, seed: int = 0) -> None:
        self.model = check_choice("attack.blind.model", model, BLIND_MODELS)
        self.folds = check_number("attack.blind.folds", folds, low=2, integer=True)
        self.image_size = check_number("attack.blind.image_size", image_size, low=1, integer=True)
        self.seed = check_number("attack.blind.seed", seed, low=0, integer=True)

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Not defined: the blind baseline never reads the model (see :meth:`held_out_scores`)."""
        raise TypeError("the blind baseline scores records, not a model's outputs: use held_out_scores")

    def classifier(self, num_features: int, *, categorical_label: bool = True) -> Any:
        """An unfitted scikit-learn classifier for ``num_features`` columns (the class label last; for ``hgb`` a
        categorical feature when ``categorical_label``: HGB takes categories below 255 only)."""
        from sklearn.compose import ColumnTransformer  # scikit-learn loads when a classifier is built
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import OneHotEncoder, StandardScaler

        label = [num_features - 1]
        if self.model == "hgb":
            return HistGradientBoostingClassifier(categorical_features=label if categorical_label else None,
                                                  random_state=self.seed)
        columns = ColumnTransformer([("features", StandardScaler(), list(range(num_features - 1))),
                                     ("label", OneHotEncoder(handle_unknown="ignore"), label)])
        return make_pipeline(columns, LogisticRegression(max_iter=1000))

    def held_out_scores(self, records: Any, labels: Any, members: Any) -> tuple[np.ndarray, np.ndarray]:
        """Each record's log-odds of membership from the classifier trained on the other folds, and its fold.

        ``records`` ``[N, ...]`` and ``labels`` ``[N]`` are the records asked about, ``members``
        bool ``[N]`` their claimed membership (at least ``folds`` of each kind). Returns float64
        scores ``[N]`` (higher = member) and int64 fold ids ``[N]``.
        """
        from sklearn.model_selection import StratifiedKFold

        members = np.asarray(members, dtype=bool)
        features = record_features(records, labels, image_size=self.image_size)
        if len(members) != len(features):
            raise ValueError(f"{len(features)} records but {len(members)} membership flags")
        fewest = int(min(members.sum(), (~members).sum()))
        if fewest < self.folds:
            raise ValueError(f"the blind baseline's {self.folds} folds need at least {self.folds} members and "
                             f"non-members, got {fewest} of the rarer kind (attack.blind.folds)")
        scores, fold = np.empty(len(members), dtype=np.float64), np.empty(len(members), dtype=np.int64)
        splits = StratifiedKFold(n_splits=self.folds, shuffle=True, random_state=self.seed).split(features, members)
        with torch_threads():
            for index, (train, held_out) in enumerate(splits):
                classifier = self.classifier(features.shape[1], categorical_label=features[:, -1].max() < 255)
                classifier.fit(features[train], members[train])
                scores[held_out], fold[held_out] = classifier.decision_function(features[held_out]), index
        return scores, fold
