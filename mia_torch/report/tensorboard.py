"""TensorBoard report of one run, read from its typed results: model, target and attack
scalars, slice metrics, figures, PR curves, score histograms and hyperparameters, all in a
single run directory.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.metrics.roc import average_ranks, tpr_key, validate_scores_labels
from mia_torch.report.types import RocMetrics, RunResults, reported_values

__all__ = ["flatten_hparams", "rank_scale", "summary_metrics", "write_report"]

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


def roc_scalars(metrics: RocMetrics) -> dict[str, float]:
    """The scalars of one ROC: AUC, advantage, balanced accuracy, TPR at each FPR, resolvable FPR."""
    return {"auc": metrics.auc, "advantage": metrics.advantage, "balanced_accuracy": metrics.balanced_accuracy,
            **{tpr_key(f): v for f, v in metrics.tpr.items()}, "resolvable_fpr": metrics.resolvable_fpr}


def summary_metrics(results: RunResults) -> dict[str, float]:
    """Headline numbers for the HParams view: each attack's pooled AUC, TPRs and reported fields (e.g. its
    empirical ε), and the mean over targets of each reported target field (accuracy, ECE, ε spent, ...)."""
    out: dict[str, float] = {}
    for name, attack in results.attacks.items():
        out[f"hparam/{name}/auc"] = attack.pooled.auc
        out.update({f"hparam/{name}/{tpr_key(f)}": v for f, v in attack.pooled.tpr.items()})
        out.update({f"hparam/{name}/{key}": v for key, (_, _, v) in reported_values(attack).items()})
    keys = dict.fromkeys(key for target in results.targets.values() for key in reported_values(target))
    for key in keys:
        value = results.mean_over_targets(key)
        if value is not None:
            out[f"hparam/target_{key}"] = value
    return out


def write_report(
    log_dir: str | os.PathLike,
    results: RunResults,
    *,
    pooled_scores: Mapping[str, tuple[np.ndarray, np.ndarray]],
    images: Mapping[str, np.ndarray],
    hparams: Mapping[str, Any],
) -> Path:
    """Write the run's TensorBoard report into one run directory ``log_dir``.

    Scalars (step 0 unless noted): ``model/<i>/<key>`` for each numeric entry of
    ``results.models`` (lists such as ``epoch_train_loss`` as curves with step = epoch,
    from 1); ``target/<t>/<field>`` for each reported field of each target;
    ``attack/<name>/<metric>`` for each attack's pooled metrics (see :func:`roc_scalars`),
    its reported fields and ``sanity_auc``; ``precision/<name>/prior=<π>/fpr=<f>`` (the precision of
    its flags at prior π where its TPR at FPR f is read); ``blind_baseline/auc`` and ``.../warning``
    (1 when it fired); ``slice/<name>/<slice>/auc`` and
    ``.../tpr@<f>fpr`` for each evaluated slice. Images: each entry of ``images`` (``uint8[H, W, 3]``) under its key.
    PR curves ``pr/<name>`` on rank-scaled scores and histograms ``scores/<name>/member``
    and ``.../nonmember`` from ``pooled_scores[name] = (scores, members)``. HParams:
    ``hparams`` flattened (:func:`flatten_hparams`) with :func:`summary_metrics` as its
    metrics. Flushes and closes the writer; returns ``log_dir``.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams as hparams_summary

    log_dir = Path(log_dir)
    checked = {str(name): validate_scores_labels(*pair) for name, pair in pooled_scores.items()}
    flat_hparams = flatten_hparams(hparams)
    metric_dict = summary_metrics(results)
    log_dir.mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(log_dir=str(log_dir))

    def scalar(tag: str, value: Any, step: int = 0) -> None:
        v = _scalar_value(value)
        if v is not None:
            writer.add_scalar(tag, v, global_step=step)

    try:
        for idx, entry in enumerate(results.models):
            model_id = entry.get("model", idx)
            for key, value in entry.items():
                if key != "model" and isinstance(value, (list, tuple, np.ndarray)):
                    for epoch, ev in enumerate(value, start=1):
                        scalar(f"model/{model_id}/{key}", ev, epoch)
                elif key != "model":
                    scalar(f"model/{model_id}/{key}", value)
        for target, info in results.targets.items():
            for key, (_, _, value) in reported_values(info).items():
                scalar(f"target/{target}/{key}", value)
        for name, attack in results.attacks.items():
            for key, value in roc_scalars(attack.pooled).items():
                scalar(f"attack/{name}/{key}", value)
            for key, (_, _, value) in reported_values(attack).items():
                scalar(f"attack/{name}/{key}", value)
            if attack.sanity is not None:
                scalar(f"attack/{name}/sanity_auc", attack.sanity.auc)
            for point in attack.precision:
                scalar(f"precision/{name}/prior={point.prior:g}/fpr={point.fpr_target:g}", point.ppv)
            for piece in attack.slices:
                if piece.metrics is not None:
                    scalar(f"slice/{name}/{piece.name}/auc", piece.metrics.auc)
                    for fpr, value in piece.metrics.tpr.items():
                        scalar(f"slice/{name}/{piece.name}/{tpr_key(fpr)}", value)
        if results.dp_audit is not None:
            for key, value in results.dp_audit.scalars().items():
                scalar(f"dp_audit/{key}", value)
        if results.blind_baseline is not None:
            scalar("blind_baseline/auc", results.blind_baseline.auc)
            scalar("blind_baseline/warning", float(results.blind_baseline.warning))
        for name, (scores, members) in checked.items():
            writer.add_pr_curve(f"pr/{name}", members, rank_scale(scores), global_step=0)
            writer.add_histogram(f"scores/{name}/member", scores[members], global_step=0)
            writer.add_histogram(f"scores/{name}/nonmember", scores[~members], global_step=0)
        for tag, image in images.items():
            writer.add_image(tag, image, global_step=0, dataformats="HWC")

        exp, ssi, sei = hparams_summary(flat_hparams, metric_dict)
        file_writer = writer._get_file_writer()
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        for key, value in metric_dict.items():
            if math.isfinite(value):
                scalar(key, value)
        writer.flush()
    finally:
        writer.close()
    return log_dir
