"""Per-record vulnerability table: which examples each attack flags most strongly."""
from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.metrics.roc import average_ranks

from mia_torch.atomic import atomic_open

__all__ = ["write_vulnerability_csv", "vulnerability_columns"]


def vulnerability_columns(attack_names: list[str]) -> list[str]:
    """CSV header: ``id, class, member`` then ``<attack>_score, <attack>_rank_pct`` per attack."""
    cols = ["id", "class", "member"]
    for name in attack_names:
        cols += [f"{name}_score", f"{name}_rank_pct"]
    return cols


def _cell(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def write_vulnerability_csv(
    path: str | os.PathLike,
    *,
    example_ids: Any,
    labels_member: Any,
    scores_by_attack: Mapping[str, Any],
    class_labels: Any,
) -> Path:
    """Write one CSV row per example with its membership scores and rank percentiles.

    Columns are ``id``, ``class``, ``member`` (1 or 0), then for each attack
    ``<name>_score`` and ``<name>_rank_pct``: the example's average rank among all
    examples by that attack's score, as a percentage in (0, 100] (100 = scored most
    member-like; ties share their average). Rows keep the order of ``example_ids``.
    All arrays must have the same length and scores must be finite. Written atomically;
    returns ``path``.
    """
    ids = np.asarray(example_ids)
    member = np.asarray(labels_member)
    classes = np.asarray(class_labels)
    n = ids.shape[0] if ids.ndim == 1 else -1
    if ids.ndim != 1:
        raise ValueError(f"example_ids must be 1-D, got shape {ids.shape}")
    for what, arr in (("labels_member", member), ("class_labels", classes)):
        if arr.shape != (n,):
            raise ValueError(f"{what} must have shape ({n},), got {arr.shape}")
    if member.dtype != np.bool_:
        if not np.all((member == 0) | (member == 1)):
            raise ValueError("labels_member must be boolean or 0/1")
        member = member == 1
    names = [str(k) for k in scores_by_attack]
    if len(set(names)) != len(names):
        raise ValueError("attack names must be distinct")
    columns: list[tuple[np.ndarray, np.ndarray]] = []
    for name, scores in scores_by_attack.items():
        s = np.asarray(scores, dtype=np.float64)
        if s.shape != (n,):
            raise ValueError(f"scores of attack {name!r} must have shape ({n},), got {s.shape}")
        if not np.all(np.isfinite(s)):
            raise ValueError(f"scores of attack {name!r} contain non-finite values")
        pct = 100.0 * average_ranks(s) / n if n else s
        columns.append((s, pct))

    with atomic_open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(vulnerability_columns(names))
        for i in range(n):
            row: list[Any] = [_cell(ids[i]), _cell(classes[i]), int(member[i])]
            for s, pct in columns:
                row += [repr(float(s[i])), f"{pct[i]:.4f}"]
            writer.writerow(row)
    return Path(path)
