"""Short aligned text table summarising the attacks of a run."""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["format_summary"]

_TPR_KEY = re.compile(r"^tpr@(.+)fpr$")
_DEFAULT_TARGETS = (0.01, 0.001)


def _interval(row: Mapping[str, Any], key: str) -> tuple[float, float] | None:
    for container in ("intervals", "ci"):
        ci = row.get(container)
        if isinstance(ci, Mapping) and key in ci and ci[key] is not None:
            low, high = ci[key]
            return float(low), float(high)
    value = row.get(f"{key}_ci")
    if value is not None:
        low, high = value
        return float(low), float(high)
    return None


def _fmt(value: Any, ci: tuple[float, float] | None, *, percent: bool) -> str:
    scale, unit, digits = (100.0, "%", 2) if percent else (1.0, "", 3)

    def num(x: float) -> str:
        if x is None or not math.isfinite(float(x)):
            return "nan"
        return f"{float(x) * scale:.{digits}f}{unit}"

    if value is None:
        return "-"
    if isinstance(value, Mapping):  # aggregated across targets: {"mean", "std"}
        if "mean" not in value:
            return "-"
        return f"{num(value['mean'])} ± {num(value.get('std', 0.0))}"
    text = num(value)
    if ci is not None:
        text += f" [{num(ci[0])}, {num(ci[1])}]"
    return text


def format_summary(rows: Sequence[Mapping[str, Any]]) -> str:
    """Aligned text table: attack, AUC (with CI), TPR at each FPR target, balanced acc.

    Each row is a mapping with ``attack`` (or ``name``) and the metrics of
    :func:`~mia_torch.metrics.membership_metrics`, either at the top level or under
    ``metrics``. Optional confidence intervals come from ``intervals`` / ``ci`` (a dict
    ``{key: (low, high)}`` as from ``bootstrap_intervals``) or ``auc_ci``; the AUC is
    then shown as ``0.712 [0.701, 0.723]``. A metric given as ``{"mean", "std"}`` (from
    ``aggregate``) prints as ``mean ± std``. TPR columns are in percent, one per
    ``tpr@<t>fpr`` key present (highest FPR first). Missing values print as ``-``.
    """
    targets: set[float] = set()
    prepared = []
    for i, row in enumerate(rows):
        name = row.get("attack", row.get("name", f"attack {i}"))
        metrics = row.get("metrics", row)
        if not isinstance(metrics, Mapping):
            raise ValueError(f"row {i}: 'metrics' must be a mapping")
        for key in metrics:
            m = _TPR_KEY.match(str(key))
            if m:
                try:
                    targets.add(float(m.group(1)))
                except ValueError:
                    pass
        prepared.append((str(name), metrics, row))
    ordered = sorted(targets or _DEFAULT_TARGETS, reverse=True)

    header = ["attack", "AUC"] + [f"TPR@{t * 100:g}%FPR" for t in ordered] + ["bal. acc"]
    table = [header]
    for name, metrics, row in prepared:
        ci = _interval(row, "auc") or (_interval(metrics, "auc") if metrics is not row else None)
        cells = [name, _fmt(metrics.get("auc"), ci, percent=False)]
        for t in ordered:
            cells.append(_fmt(metrics.get(f"tpr@{t:g}fpr"), None, percent=True))
        cells.append(_fmt(metrics.get("balanced_accuracy"), None, percent=False))
        table.append(cells)

    widths = [max(len(r[c]) for r in table) for c in range(len(header))]

    def line(cells: list[str]) -> str:
        parts = [cells[0].ljust(widths[0])]
        parts += [cell.rjust(w) for cell, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    lines = [line(header), "  ".join("-" * w for w in widths)]
    lines += [line(r) for r in table[1:]]
    return "\n".join(lines)
