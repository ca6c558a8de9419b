"""TensorBoard report of one run: model scalars, attack metrics, ROC figure, PR curves,
score histograms and hyperparameters, all in a single run directory.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.metrics.roc import (
    auc_score,
    average_ranks,
    membership_metrics,
    roc_curve,
    validate_scores_labels,
)

from .plots import figure_to_array, roc_figure

__all__ = ["flatten_hparams", "rank_scale", "write_report"]

HParamValue = str | float | int | bool


def _scalar_value(v: Any) -> float | None:
    """``float(v)`` for a real number (numpy and 0-d tensors included), else ``None``."""
    if isinstance(v, (bool, np.bool_)):
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    if hasattr(v, "ndim") and getattr(v, "ndim", None) == 0 and hasattr(v, "item"):
        item = v.item()
        if isinstance(item, (int, float)) and not isinstance(item, bool):
            return float(item)
    return None


def flatten_hparams(nested: Mapping[str, Any], *, sep: str = ".") -> dict[str, HParamValue]:
    """Flatten a nested config into TensorBoard hparams: ``{"a.b.c": value}``.

    Values are kept when they are ``str``, ``bool``, ``int`` or ``float`` (numpy
    scalars are unwrapped); ``None`` becomes ``"None"``; lists, tuples and anything else
    become their string form. Nested mappings are walked with ``sep``-joined keys; empty
    mappings are dropped. Already-flat dicts pass through unchanged.
    """
    out: dict[str, HParamValue] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, Mapping):
            for k, v in value.items():
                walk(f"{prefix}{sep}{k}" if prefix else str(k), v)
            return
        if isinstance(value, np.generic):
            value = value.item()
        if value is None:
            out[prefix] = "None"
        elif isinstance(value, (str, bool, int, float)):
            out[prefix] = value
        elif isinstance(value, (list, tuple)):
            out[prefix] = str([v.item() if isinstance(v, np.generic) else v for v in value])
        else:
            out[prefix] = str(value)

    if not isinstance(nested, Mapping):
        raise TypeError(f"hparams must be a mapping, got {type(nested).__name__}")
    for key, value in nested.items():
        walk(str(key), value)
    return out


def rank_scale(scores: Any) -> np.ndarray:
    """Map scores to [0, 1] by rank (ties share their average rank); order is preserved."""
    s = np.asarray(scores, dtype=np.float64)
    if s.size <= 1:
        return np.full(s.shape, 0.5)
    return (average_ranks(s) - 1.0) / (s.size - 1.0)


def write_report(
    log_dir: str | os.PathLike,
    *,
    model_metrics: Sequence[Mapping[str, Any]],
    attacks: Mapping[str, Mapping[str, Any]],
    hparams: Mapping[str, Any],
    summary_metrics: Mapping[str, float],
) -> Path:
    """Write the run's TensorBoard report into one run directory ``log_dir``.

    Writes, at step 0 unless noted: ``model/<i>/<key>`` for each numeric entry of each
    ``model_metrics`` dict (lists such as ``epoch_train_loss`` as curves with step =
    epoch, starting at 1); ``attack/<name>/<key>`` for each numeric metric of each
    attack (``attacks[name]`` holds ``scores``, ``labels`` and ``metrics``; metrics are
    computed if missing); the image ``roc`` (all attacks, log-log and linear); PR curves
    ``pr/<name>`` on rank-scaled scores; histograms ``scores/<name>/member`` and
    ``scores/<name>/nonmember``; and the hparams summaries (``hparams`` flattened with
    :func:`flatten_hparams`, metrics = ``summary_metrics``, whose values are also written
    as scalars unless already present) so the HParams view compares runs of a sweep.
    Flushes and closes the writer; returns ``log_dir``.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    log_dir = Path(log_dir)
    prepared: dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]] = {}
    for name, attack in attacks.items():
        if "scores" not in attack or "labels" not in attack:
            raise ValueError(f"attack {name!r} needs 'scores' and 'labels'")
        scores, labels = validate_scores_labels(attack["scores"], attack["labels"])
        metrics = attack.get("metrics")
        if metrics is None:
            metrics = membership_metrics(scores, labels)
        prepared[str(name)] = (scores, labels, dict(metrics))
    flat_hparams = flatten_hparams(hparams)
    metric_dict: dict[str, float] = {}
    for key, value in summary_metrics.items():
        v = _scalar_value(value)
        if v is None:
            raise ValueError(f"summary metric {key!r} must be a real number, got {value!r}")
        metric_dict[str(key)] = v

    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(log_dir))
    written: set[str] = set()

    def scalar(tag: str, value: float, step: int = 0) -> None:
        writer.add_scalar(tag, value, global_step=step)
        written.add(tag)

    try:
        for idx, entry in enumerate(model_metrics):
            model_id = entry.get("model", idx)
            for key, value in entry.items():
                if key == "model":
                    continue
                tag = f"model/{model_id}/{key}"
                v = _scalar_value(value)
                if v is not None:
                    scalar(tag, v)
                elif isinstance(value, (list, tuple, np.ndarray)):
                    for epoch, ev in enumerate(value, start=1):
                        fv = _scalar_value(ev)
                        if fv is not None:
                            scalar(tag, fv, epoch)

        curves: dict[str, tuple[np.ndarray, np.ndarray, float]] = {}
        for name, (scores, labels, metrics) in prepared.items():
            for key, value in metrics.items():
                v = _scalar_value(value)
                if v is not None:
                    scalar(f"attack/{name}/{key}", v)
            fpr, tpr, _ = roc_curve(scores, labels)
            auc = _scalar_value(metrics.get("auc"))
            curves[name] = (fpr, tpr, auc if auc is not None else auc_score(fpr, tpr))
            writer.add_pr_curve(f"pr/{name}", labels, rank_scale(scores), global_step=0)
            writer.add_histogram(f"scores/{name}/member", scores[labels], global_step=0)
            writer.add_histogram(f"scores/{name}/nonmember", scores[~labels], global_step=0)

        if curves:
            fig = roc_figure(curves, title=f"ROC, {len(curves)} attack(s)")
            writer.add_image("roc", figure_to_array(fig), global_step=0, dataformats="HWC")

        exp, ssi, sei = hparams_summary(flat_hparams, metric_dict)
        file_writer = writer._get_file_writer()
        file_writer.add_summary(exp)
        file_writer.add_summary(ssi)
        file_writer.add_summary(sei)
        for key, value in metric_dict.items():
            if key not in written and math.isfinite(value):
                scalar(key, value)
        writer.flush()
    finally:
        writer.close()
    return log_dir
