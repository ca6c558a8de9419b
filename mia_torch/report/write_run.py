"""Write everything a finished run reports, from its typed results: figures (PNG and
TensorBoard), per-record CSVs, ``results.json``, and the printed summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
from matplotlib.figure import Figure

from mia_torch.report.dp_audit_plot import dp_audit_figure
from mia_torch.report.html import REPORT_NAME, finish_run_html
from mia_torch.report.pictures import ImageSource, confidence_figure, exposed_records_figure, slices_figure
from mia_torch.report.plots import figure_to_array, roc_figure, save_png
from mia_torch.report.vulnerability import write_vulnerability_csv
from mia_torch.report.json_file import write_json
from mia_torch.report.table import format_summary
from mia_torch.report.tensorboard import write_report
from mia_torch.report.types import RunResults, Scores
from mia_torch.signals.stats import confidence, logit_scaled_confidence

log = logging.getLogger(__name__)

#: Keys of the resolved config logged as TensorBoard hparams (compared across a sweep).
HPARAM_SECTIONS = ("dataset", "model", "train", "defense", "output", "num_models", "threat_model", "queries", "seed")
#: Records shown in the gallery of the most exposed training records of each target.
GALLERY_SIZE = 16
#: Targets that get their own figures (the first ones of ``target_ids``): a study of every model as
#: a target would otherwise draw hundreds; their numbers are all in results.json and TensorBoard.
FIGURE_TARGETS = 8


#: TensorBoard category of the figures: all in one, ROC first (tags sort alphabetically).
FIGURE_CATEGORY = "report"


def exposed_records(
    results: RunResults, target: int, *, scores: Scores, keep: np.ndarray, eval_mask: np.ndarray,
    labels: np.ndarray, images: ImageSource, size: int = GALLERY_SIZE,
) -> Figure | None:
    """Gallery of the target's members that the strongest attack scores highest, with their p-values
    (from the attack's evaluation on that target)."""
    attack = results.strongest_attack()
    if attack is None:
        return None
    evaluation = next(m for m in results.attacks[attack].per_target if m.target == target)
    mask = eval_mask & ~np.isnan(scores[attack][target])  # the records it scored (as its evaluation: NaN = unscored)
    ids = np.flatnonzero(mask)
    score, members = scores[attack][target][mask].astype(np.float64), keep[target][mask]
    order = np.argsort(-score[members], kind="stable")[:size]
    top = ids[members][order]
    p_values = evaluation.p_values[members][order]
    return exposed_records_figure(
        images.get(top), labels=labels[top].tolist(), scores=score[members][order].tolist(),
        p_values=p_values.tolist(), record_ids=top.tolist(),
        title=f"target {target}: the members {attack} flags most\np = (1 + #non-members scoring at least as high)"
              f"\n/ (1 + {int((~members).sum())} non-members)")


def report_figures(
    results: RunResults, *, scores: Scores, keep: np.ndarray, eval_mask: np.ndarray, labels: np.ndarray,
    target_logits: Mapping[int, np.ndarray], images: ImageSource | None,
) -> dict[str, Figure]:
    """Every figure of the run by file stem: ``roc``, ``slices``, ``target<t>_confidence``,
    ``target<t>_exposed`` (image data only; both for the first :data:`FIGURE_TARGETS` targets) and
    ``dp_audit`` (a one-run DP audit)."""
    curves = {n: (a.pooled.curve.fpr, a.pooled.curve.tpr, a.pooled.auc) for n, a in results.attacks.items()
              if a.pooled.curve is not None}
    figures: dict[str, Figure] = {}
    if curves:
        reliable = max(a.pooled.reliable_fpr for a in results.attacks.values())
        title = f"{results.dataset.get('name')}: {len(results.target_ids)} target(s), {len(keep)} models"
        figures["roc"] = roc_figure(curves, title=title, reliable_fpr=reliable)
    evaluated = torch.from_numpy(labels[eval_mask])
    for target in results.target_ids[:FIGURE_TARGETS]:
        if target in target_logits:
            logits = torch.from_numpy(np.asarray(target_logits[target])[eval_mask]).double()
            figures[f"target{target}_confidence"] = confidence_figure(
                confidence(logits, evaluated).numpy(), logit_scaled_confidence(logits, evaluated).numpy(),
                keep[target][eval_mask], title=f"target {target}: true-class confidence")
        if images is not None:
            gallery = exposed_records(results, target, scores=scores, keep=keep, eval_mask=eval_mask, labels=labels,
                                      images=images)
            if gallery is not None:
                figures[f"target{target}_exposed"] = gallery
    slices = slices_figure(results)
    if slices is not None:
        figures["slices"] = slices
    if results.dp_audit is not None and results.dp_audit.curve is not None:
        figures["dp_audit"] = dp_audit_figure(results)
    return figures


def write_run_report(
    run_dir: Path,
    results: RunResults,
    *,
    scores: Scores,
    keep: np.ndarray,
    eval_mask: np.ndarray,
    labels: np.ndarray,
    target_logits: Mapping[int, np.ndarray],
    images: ImageSource | None = None,
) -> None:
    """Write the figures (PNG and TensorBoard), per-record CSVs and results.json; print the summary.

    ``labels`` are the population's classes, ``target_logits[t]`` target t's logits
    ``[N, C]`` on the identity query, ``images`` the population's images (None for
    non-image data: no gallery). ``results.json`` is written last, so its presence marks a
    finished run; ``report.html`` is then built from the run directory.
    """
    figures = report_figures(results, scores=scores, keep=keep, eval_mask=eval_mask, labels=labels,
                             target_logits=target_logits, images=images)
    pixels = {stem: figure_to_array(fig) for stem, fig in figures.items()}  # each figure is drawn once
    for stem, image in pixels.items():
        save_png(image, run_dir / f"{stem}.png")
    config = results.config
    write_report(
        run_dir / "tensorboard",
        results,
        pooled_scores={name: (a.pooled.sample.scores, a.pooled.sample.members) for name, a in results.attacks.items()
                       if a.pooled.sample is not None},
        images={f"{FIGURE_CATEGORY}/{stem}": image for stem, image in pixels.items()},
        hparams={k: config[k] for k in HPARAM_SECTIONS if k in config},
    )
    example_ids = np.flatnonzero(eval_mask)
    for target in results.target_ids:
        write_vulnerability_csv(
            run_dir / f"records_target{target}.csv",
            example_ids=example_ids,
            labels_member=keep[target][eval_mask],
            scores_by_attack={name: per[target][eval_mask] for name, per in scores.items()},
            class_labels=labels[eval_mask],
        )
    write_json(run_dir / "results.json", results.to_dict())
    finish_run_html(run_dir)
    print(format_summary(results) + f"\noutputs: {run_dir} ({REPORT_NAME}, results.json, tensorboard/, "
          + ", ".join(f"{stem}.png" for stem in figures) + ")", flush=True)
