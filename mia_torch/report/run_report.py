"""Write everything a finished run reports: results.json, TensorBoard, ROC plot, CSVs, summary."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from mia_torch.evaluation import Scores, pooled
from mia_torch.metrics import auc_score, roc_curve
from mia_torch.report.plots import roc_figure, save_figure
from mia_torch.report.records import write_vulnerability_csv
from mia_torch.report.results import write_json
from mia_torch.report.table import format_summary
from mia_torch.report.tensorboard import write_report

log = logging.getLogger(__name__)

#: Keys of the resolved config logged as TensorBoard hparams (compared across a sweep).
HPARAM_SECTIONS = ("dataset", "model", "train", "num_models", "threat_model", "queries", "seed")


def summary_rows(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One table row per attack: pooled metrics over all targets, with intervals."""
    return [{"attack": name, **entry["pooled"]} for name, entry in results["attacks"].items()]


def summary_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """Headline numbers per attack for the HParams view, plus the target's accuracy."""
    out: dict[str, float] = {}
    for name, entry in results["attacks"].items():
        for key, value in entry["pooled"].items():
            if key == "auc" or key.startswith("tpr@"):
                out[f"hparam/{name}/{key}"] = float(value)
    accuracies = list(results["targets"].values())
    for key in ("train_acc", "test_acc"):
        values = [a[key] for a in accuracies if key in a]
        if values:
            out[f"hparam/target_{key}"] = float(np.mean(values))
    return out


def write_run_report(
    run_dir: Path,
    results: Mapping[str, Any],
    *,
    scores: Scores,
    keep: np.ndarray,
    eval_mask: np.ndarray,
    class_labels: np.ndarray,
) -> None:
    """Write results.json, the TensorBoard run, roc.png, per-record CSVs; print the summary."""
    curves, tb_attacks = {}, {}
    for name, per_target in scores.items():
        all_scores, members = pooled(per_target, keep, eval_mask)
        fpr, tpr, _ = roc_curve(all_scores, members)
        curves[name] = (fpr, tpr, auc_score(fpr, tpr))
        tb_attacks[name] = {"scores": all_scores, "labels": members, "metrics": results["attacks"][name]["pooled"]}
    title = f"{results['dataset']['name']}: {len(results['target_ids'])} target(s), {len(keep)} models"
    save_figure(roc_figure(curves, title=title), run_dir / "roc.png")
    config = results["config"]
    write_report(
        run_dir / "tensorboard",
        model_metrics=results["models"],
        attacks=tb_attacks,
        hparams={k: config[k] for k in HPARAM_SECTIONS if k in config},
        summary_metrics=summary_metrics(results),
    )
    example_ids = np.flatnonzero(eval_mask)
    for target in results["target_ids"]:
        write_vulnerability_csv(
            run_dir / f"records_target{target}.csv",
            example_ids=example_ids,
            labels_member=keep[target][eval_mask],
            scores_by_attack={name: per[target][eval_mask] for name, per in scores.items()},
            class_labels=class_labels[eval_mask],
        )
    write_json(run_dir / "results.json", results)
    print_summary(results, run_dir)


def print_summary(results: Mapping[str, Any], run_dir: Path) -> None:
    """Print the target accuracy, the attack table and the sanity check."""
    lines = []
    for target, acc in results["targets"].items():
        lines.append(f"target {target}: train acc {acc.get('train_acc', float('nan')):.3f}, "
                     f"test acc {acc.get('test_acc', float('nan')):.3f}")
    lines.append(format_summary(summary_rows(results)))
    failed = [n for n, e in results["attacks"].items() if "sanity" in e and not e["sanity"]["chance_in_ci"]]
    if any("sanity" in e for e in results["attacks"].values()):
        lines.append("sanity (untrained target, AUC should be 0.5): "
                     + ("ok" if not failed else f"0.5 OUTSIDE THE 99% INTERVAL for {', '.join(failed)}"))
    lines.append(f"outputs: {run_dir} (results.json, roc.png, tensorboard/)")
    print("\n".join(lines), flush=True)
