"""Typed run results made from synthetic scores with known properties (no training)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mia_torch.evaluation import evaluate_attacks
from mia_torch.report.types import RunResults, TargetResult


def synthetic_scores(
    num_examples: int,
    targets: Sequence[int],
    shifts: dict[str, float],
    *,
    num_models: int = 4,
    seed: int = 0,
) -> tuple[dict[str, dict[int, np.ndarray]], np.ndarray]:
    """Scores ``N(shift * member, 1)`` per attack and target, and a keep matrix with half members.

    The optimal AUC of an attack with shift ``d`` is ``Phi(d / sqrt(2))``.
    """
    rng = np.random.default_rng(seed)
    keep = np.zeros((num_models, num_examples), dtype=bool)
    for m in range(num_models):
        keep[m, rng.permutation(num_examples)[: num_examples // 2]] = True
    scores = {name: {t: rng.normal(size=num_examples) + shift * keep[t] for t in targets}
              for name, shift in shifts.items()}
    return scores, keep


def make_results(
    *,
    num_examples: int = 400,
    targets: Sequence[int] = (0, 1),
    shifts: dict[str, float] | None = None,
    fpr_targets: Sequence[float] = (0.01, 0.001),
    bootstrap: int = 20,
    num_classes: int = 4,
    seed: int = 0,
    accuracy: tuple[float, float] = (0.95, 0.8),
) -> tuple[RunResults, dict[str, dict[int, np.ndarray]], np.ndarray, np.ndarray]:
    """``(results, scores, keep, labels)`` of a run-like evaluation of synthetic scores."""
    shifts = shifts or {"loss": 0.5, "lira": 1.5}
    scores, keep = synthetic_scores(num_examples, targets, shifts, seed=seed)
    labels = np.arange(num_examples) % num_classes
    predictions = {t: np.where(np.arange(num_examples) % 5 == 0, (labels + 1) % num_classes, labels) for t in targets}
    eval_mask = np.ones(num_examples, dtype=bool)
    sanity = synthetic_scores(num_examples, targets, {n: 0.0 for n in shifts}, seed=seed + 1)[0]
    attacks = evaluate_attacks(scores, keep=keep, eval_mask=eval_mask, fpr_targets=fpr_targets, bootstrap=bootstrap,
                               seed=seed, sanity=sanity, labels=labels, predictions=predictions)
    results = RunResults(
        config={"num_models": len(keep), "fpr_targets": list(fpr_targets), "train": {"lr": 0.1}},
        versions={"python": "3", "torch": "2"},
        dataset={"name": "synthetic", "population": num_examples, "test": 100, "num_classes": num_classes},
        target_ids=list(targets),
        targets={t: TargetResult(train_acc=accuracy[0], test_acc=accuracy[1], train_loss=0.1, test_loss=0.5)
                 for t in targets},
        models=[{"model": m, "train_acc": accuracy[0], "test_acc": accuracy[1], "epoch_train_loss": [1.0, 0.5]}
                for m in range(len(keep))],
        trained_models=list(range(len(keep))),
        reused_models=[],
        corrupt_artifacts=[],
        seconds=1.0,
        attacks=attacks,
    )
    return results, scores, keep, labels
