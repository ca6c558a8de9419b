"""Turn attack scores into membership metrics: per target, across targets, pooled."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mia_torch.metrics import aggregate, bootstrap_intervals, membership_metrics
from mia_torch.atomic import atomic_write_bytes

Scores = Mapping[str, Mapping[int, np.ndarray]]


#: Confidence of the sanity check's interval: wide enough that checking a dozen attacks
#: rarely raises a false alarm on a target that truly carries no membership information.
SANITY_CONFIDENCE = 0.99


def _measure(scores: np.ndarray, members: np.ndarray, *, fpr_targets: Sequence[float], bootstrap: int, seed: int,
             threshold: float | None = None, confidence: float = 0.95) -> dict[str, Any]:
    metrics = membership_metrics(scores, members, fpr_targets=fpr_targets, threshold=threshold)
    if bootstrap:
        metrics["ci"] = bootstrap_intervals(scores, members, fpr_targets=fpr_targets, num_resamples=bootstrap,
                                            seed=seed, confidence=confidence)
    return metrics


def pooled(scores: Mapping[int, np.ndarray], keep: np.ndarray, eval_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every target's evaluated scores and membership labels (the pooled ROC)."""
    targets = sorted(scores)
    return (np.concatenate([scores[t][eval_mask] for t in targets]),
            np.concatenate([keep[t][eval_mask] for t in targets]))


def evaluate_attacks(
    scores: Scores,
    *,
    keep: np.ndarray,
    eval_mask: np.ndarray,
    fpr_targets: Sequence[float],
    bootstrap: int,
    seed: int,
    thresholds: Mapping[str, Mapping[int, float | None]] | None = None,
    sanity: Scores | None = None,
) -> dict[str, Any]:
    """Metrics of every attack: ``per_target``, ``mean`` (mean ± std over targets), ``pooled``.

    Membership labels come from the targets' keep rows, restricted to ``eval_mask``.
    With ``sanity`` (scores of untrained targets) each attack also gets a ``sanity``
    entry whose AUC should be 0.5 within its 99% interval.
    """
    report: dict[str, Any] = {}
    for name, per_target in scores.items():
        rows = []
        for target in sorted(per_target):
            threshold = (thresholds or {}).get(name, {}).get(target)
            rows.append({"target": target, **_measure(per_target[target][eval_mask], keep[target][eval_mask],
                                                      fpr_targets=fpr_targets, bootstrap=bootstrap, seed=seed,
                                                      threshold=threshold)})
        all_scores, all_members = pooled(per_target, keep, eval_mask)
        entry: dict[str, Any] = {
            "per_target": rows,
            "mean": aggregate([{k: v for k, v in r.items() if k not in ("ci", "target")} for r in rows]),
            "pooled": _measure(all_scores, all_members, fpr_targets=fpr_targets, bootstrap=bootstrap, seed=seed),
        }
        if sanity is not None:
            blank_scores, blank_members = pooled(sanity[name], keep, eval_mask)
            check = _measure(blank_scores, blank_members, fpr_targets=fpr_targets, bootstrap=max(bootstrap, 200),
                             seed=seed, confidence=SANITY_CONFIDENCE)
            low, high = check["ci"]["auc"]
            entry["sanity"] = {"auc": check["auc"], "auc_ci": [low, high], "chance_in_ci": bool(low <= 0.5 <= high)}
        report[name] = entry
    return {"attacks": report}


def save_scores(path: Path, scores: Scores) -> None:
    """Atomically save scores as ``<attack>/target_<t>`` arrays in one ``.npz``."""
    buf = io.BytesIO()
    np.savez(buf, **{f"{name}/target_{t}": s for name, per in scores.items() for t, s in per.items()})
    atomic_write_bytes(path, buf.getvalue())


def load_scores(path: Path) -> dict[str, dict[int, np.ndarray]]:
    """Inverse of :func:`save_scores`."""
    out: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            name, target = key.rsplit("/target_", 1)
            out.setdefault(name, {})[int(target)] = z[key]
    return out
