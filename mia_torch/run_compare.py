"""Compare a run with its rerun: arrays, ``results.json`` metrics and software versions.

Each comparison yields :class:`Check` lines (``match``, ``mismatch``, ``info`` or
``skipped``) that :mod:`mia_torch.reproduce` prints, gates on and saves.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from mia_torch.report.types import RunResults

__all__ = ["HOST_ARRAYS", "Check", "compare_arrays", "compare_metrics", "flatten", "version_warnings"]

#: Arrays of a run directory compared exactly whatever the device.
HOST_ARRAYS = ("keep.npy", "eval_mask.npy", "labels.npy")


@dataclass
class Check:
    """One comparison: ``status`` is ``match``, ``mismatch``, ``info`` (not gated) or ``skipped``."""

    name: str
    status: str
    detail: str


def flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted.key[i], leaf)`` pairs of nested mappings and lists."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from flatten(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| (NaN in both counts as equal, NaN in one as infinite)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    diff[np.isnan(a64) & np.isnan(b64)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0


def _rank01(values: np.ndarray) -> np.ndarray:
    from mia_torch.metrics.roc import average_ranks

    values = np.asarray(values, dtype=np.float64).ravel()
    return (average_ranks(values) - 1.0) / max(1, values.size - 1)


def _compare_arrays(name: str, a: np.ndarray, b: np.ndarray, *, exact: bool, ranks: bool = False) -> list[Check]:
    if a.shape != b.shape or (exact and a.dtype != b.dtype):
        return [Check(name, "mismatch", f"shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}")]
    equal = np.array_equal(a, b, equal_nan=bool(np.issubdtype(a.dtype, np.floating)))
    if equal:
        return [Check(name, "match", f"identical {a.shape}")]
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        return [Check(name, "mismatch", f"{int(np.count_nonzero(a != b))} of {a.size} entries differ")]
    detail = f"max abs diff {_max_abs_diff(a, b):.3g}, {int(np.count_nonzero(a != b))} of {a.size} values differ"
    if ranks:
        detail += f"; rank-normalised max abs diff {_max_abs_diff(_rank01(a), _rank01(b)):.3g}"
    return [Check(name, "mismatch" if exact else "info", detail)]


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def _compare_signals(original: Path, new: Path, *, exact: bool) -> list[Check]:
    """The served outputs of both runs (``signals.npy``, or the store artifacts ``signals.json`` names), compared a
    model at a time so that memory holds two models' outputs; an original whose store is gone is skipped."""
    from mia_torch.signals.manifest import run_model_signals

    name = "signals"
    try:
        models, read_original = run_model_signals(original)
        if not models:
            raise ValueError("no model's signals are recorded")
        first = read_original(models[0])
    except (OSError, ValueError) as err:
        return [Check(name, "skipped", f"the original's signals cannot be read ({err})")]
    new_models, read_new = run_model_signals(new)
    if new_models != models:
        return [Check(name, "mismatch", f"models {models} vs {new_models}")]
    differ, worst, total = 0, 0.0, 0
    for m in models:
        a = first if m == models[0] else read_original(m)
        b = read_new(m)
        if a.shape != b.shape or (exact and a.dtype != b.dtype):
            return [Check(name, "mismatch", f"model {m}: shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}")]
        total += a.size
        if not np.array_equal(a, b, equal_nan=True):
            differ += int(np.count_nonzero(a != b))
            worst = max(worst, _max_abs_diff(a, b))
    shape = (len(models), *first.shape)
    if not differ:
        return [Check(name, "match", f"identical {shape}")]
    return [Check(name, "mismatch" if exact else "info",
                  f"max abs diff {worst:.3g}, {differ} of {total} values differ")]


def compare_arrays(original: Path, new: Path, *, exact: bool) -> list[Check]:
    """Keep matrix, mask, labels (always exact); signals and scores (exact or reported)."""
    from mia_torch.evaluation import load_scores
    from mia_torch.signals.manifest import has_run_signals

    checks: list[Check] = []
    for name in HOST_ARRAYS:
        a_path, b_path = original / name, new / name
        if not a_path.is_file() and not b_path.is_file():
            checks.append(Check(name, "skipped", "in neither run"))
        elif not a_path.is_file() or not b_path.is_file():
            checks.append(Check(name, "mismatch", f"missing in the {'original' if not a_path.is_file() else 'rerun'}"))
        else:
            checks += _compare_arrays(name, _load_array(a_path), _load_array(b_path), exact=True)
    a_has, b_has = has_run_signals(original), has_run_signals(new)
    if not a_has and not b_has:
        checks.append(Check("signals", "skipped", "in neither run"))
    elif not a_has or not b_has:
        checks.append(Check("signals", "mismatch", f"missing in the {'original' if not a_has else 'rerun'}"))
    else:
        checks += _compare_signals(original, new, exact=exact)
    a_path, b_path = original / "scores.npz", new / "scores.npz"
    if not (a_path.is_file() and b_path.is_file()):
        checks.append(Check("scores.npz", "mismatch", "missing in the " + ("original" if not a_path.is_file()
                                                                            else "rerun")))
        return checks
    a_scores, b_scores = load_scores(a_path), load_scores(b_path)
    a_keys = {(n, t) for n, per in a_scores.items() for t in per}
    b_keys = {(n, t) for n, per in b_scores.items() for t in per}
    for name, target in sorted(a_keys ^ b_keys):
        where = "rerun" if (name, target) in a_keys else "original"
        checks.append(Check(f"scores {name}/target_{target}", "mismatch", f"missing in the {where}"))
    for name, target in sorted(a_keys & b_keys):
        checks += _compare_arrays(f"scores {name}/target_{target}", a_scores[name][target], b_scores[name][target],
                                  exact=exact, ranks=True)
    return checks


def _numbers(node: Any, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in flatten(node, prefix):
        if key.endswith("seconds"):  # wall-clock times (a model's training, a regression's fit) never repeat
            continue
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _gated(results: RunResults) -> dict[str, float | None]:
    """What a study reports, compared within ``atol`` on CUDA: pooled AUCs and target accuracies."""
    out: dict[str, float | None] = {f"attacks.{n}.pooled.auc": a.pooled.auc for n, a in results.attacks.items()}
    for target, info in results.targets.items():
        out[f"targets.{target}.train_acc"] = info.train_acc
        out[f"targets.{target}.test_acc"] = info.test_acc
    return out


def compare_metrics(original: RunResults, new: RunResults, *, exact: bool, atol: float) -> list[Check]:
    """Metrics of results.json: all exactly, or pooled AUC and target accuracies within ``atol``."""
    checks: list[Check] = []
    sections = ("attacks", "targets", "models", "dataset", "dp_audit") if exact else ("attacks", "targets")
    a_dict, b_dict = original.to_dict(), new.to_dict()
    a = {k: v for s in sections for k, v in _numbers(a_dict.get(s), s).items()}
    b = {k: v for s in sections for k, v in _numbers(b_dict.get(s), s).items()}
    if exact:
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                        and not (isinstance(a.get(k), float) and isinstance(b.get(k), float)
                                 and math.isnan(a[k]) and math.isnan(b[k])))
        if not differ:
            checks.append(Check("results.json metrics", "match", f"{len(a)} values identical"))
        for key in differ:
            checks.append(Check(f"metric {key}", "mismatch", f"{a.get(key)!r} vs {b.get(key)!r}"))
        return checks

    gated_a, gated_b = _gated(original), _gated(new)
    for key in sorted(set(gated_a) | set(gated_b)):
        if key not in gated_a or key not in gated_b:
            where = "rerun" if key in gated_a else "original"
            checks.append(Check(f"metric {key}", "mismatch", f"missing in the {where}"))
            continue
        x, y = gated_a[key], gated_b[key]
        if x is None or y is None:
            checks.append(Check(f"metric {key}", "match" if x == y else "mismatch", f"{x!r} vs {y!r}"))
            continue
        diff = abs(x - y)
        checks.append(Check(f"metric {key}", "match" if diff <= atol else "mismatch",
                            f"{x:.4f} vs {y:.4f} (|diff| {diff:.2g}, atol {atol:g})"))
    others = [k for k in set(a) & set(b) if k not in gated_a and isinstance(a[k], float) and isinstance(b[k], float)]
    if others:
        worst = max(others, key=lambda k: abs(a[k] - b[k]))
        checks.append(Check("other metrics", "info", f"largest difference {worst}: {a[worst]!r} vs {b[worst]!r}"))
    return checks


def version_warnings(original: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """Aligned lines of both runs' versions, and one warning per differing entry."""
    original, new = dict(original or {}), dict(new or {})
    keys = list(dict.fromkeys([*original, *new]))
    width = max([len(k) for k in keys] + [8])
    lines = [f"  {'':<{width}}  {'original':<28}  rerun"]
    warnings = []
    for key in keys:
        a, b = original.get(key), new.get(key)
        lines.append(f"  {key:<{width}}  {str(a):<28}  {b}")
        if a != b:
            warnings.append(f"WARNING: {key} differs ({a} vs {b}): numbers may differ for that reason alone")
    return lines, warnings
