"""Did the forgotten records leave the model? Forgotten vs never-seen records, before and after removal.

The question, in GDPR terms (Art. 17, the right to erasure): after deletion, does the model
behave on the forgotten records as it does on records it never saw? For each attack, the
forgotten records' scores are compared with those of the target's non-members (records the
model never trained on) by the AUC of "forgotten vs never-seen" with a bootstrap interval.
Before removal the forgotten records are members, so a leaky model gives an AUC above 0.5;
after a perfect removal the two groups are exchangeable and the AUC is 0.5. The verdict
"indistinguishable from never-seen" is given only when the interval contains 0.5, and it is a
statement about these attacks and these reference models, not a proof.
"""
from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from mia_torch.atomic import atomic_open
from mia_torch.audit.evidence import RecordEvidence
from mia_torch.metrics import bootstrap_intervals, membership_metrics
from mia_torch.report.check_results import Separation

__all__ = ["INDISTINGUISHABLE", "STILL_DISTINGUISHABLE", "separation", "separations", "write_forget_csv"]

INDISTINGUISHABLE = "indistinguishable from never-seen"
STILL_DISTINGUISHABLE = "distinguishable from never-seen"


def separation(
    scores: np.ndarray,
    forgotten: np.ndarray,
    never_seen: np.ndarray,
    *,
    bootstrap: int,
    seed: int,
    confidence: float = 0.95,
) -> Separation:
    """AUC (with a stratified bootstrap interval at ``confidence``) of ``scores[forgotten]`` vs
    ``scores[never_seen]``; the verdict is :data:`INDISTINGUISHABLE` when the interval contains 0.5,
    else :data:`STILL_DISTINGUISHABLE`."""
    values = np.concatenate([scores[forgotten], scores[never_seen]])
    labels = np.concatenate([np.ones(len(forgotten), bool), np.zeros(len(never_seen), bool)])
    auc = membership_metrics(values, labels, fpr_targets=())["auc"]
    ci = bootstrap_intervals(values, labels, fpr_targets=(), num_resamples=max(bootstrap, 200), seed=seed,
                             confidence=confidence)["auc"]
    low, high = float(ci[0]), float(ci[1])
    return Separation(auc=float(auc), auc_ci=(low, high),
                      verdict=INDISTINGUISHABLE if low <= 0.5 <= high else STILL_DISTINGUISHABLE)


def separations(
    scores: Mapping[str, np.ndarray], forgotten: np.ndarray, never_seen: np.ndarray, *, bootstrap: int, seed: int
) -> dict[str, Separation]:
    """:func:`separation` for every attack's scores."""
    return {name: separation(s, forgotten, never_seen, bootstrap=bootstrap, seed=seed) for name, s in scores.items()}


def write_forget_csv(
    path: Path,
    *,
    ids: np.ndarray,
    source_ids: np.ndarray,
    classes: np.ndarray,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    evidence: Mapping[str, RecordEvidence],
    flagged: np.ndarray,
    fpr: float,
) -> Path:
    """One row per forgotten record: each attack's score and the p-values before and after removal.

    ``scores[when][attack]`` covers the whole population (indexed by ``ids``);
    ``evidence[when]`` is already restricted to ``ids``; ``when`` is ``before`` / ``after``;
    ``flagged`` says which records are still flagged after removal at ``fpr``.
    """
    stages = list(scores)
    attacks = list(next(iter(scores.values())))
    header = ["id", "source_id", "class"] + [f"{a}_{w}" for a in attacks for w in stages]
    header += [f"{p}_{w}" for p in ("p_gaussian", "p_rank") for w in stages] + [f"flagged_after@fpr={fpr:g}"]
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for k, record in enumerate(ids):
            row = [int(record), int(source_ids[k]), int(classes[k])]
            row += [repr(float(scores[w][a][record])) for a in attacks for w in stages]
            row += [repr(float(getattr(evidence[w], p)[k])) for p in ("p_gaussian", "p_rank") for w in stages]
            writer.writerow(row + [int(flagged[k])])
    return path
