"""Summary of a Hydra multirun sweep: one row per job, as CSV, Markdown and a metric plot.

:func:`write_sweep_summary` reads every job of a sweep directory (``hydra.sweep.dir``,
through :func:`mia_torch.report.sweep_jobs.collect_jobs`) and writes, into the sweep
directory:

- ``sweep_summary.csv`` and ``sweep_summary.md``: per job, the values of the swept
  overrides (the override keys whose value differs between jobs), the targets' train
  and test accuracy (mean over targets), the generalization gap (train - test
  accuracy), and per attack the pooled AUC and TPR at each FPR target of
  ``results.json`` (``attacks.<name>.pooled``); every reported field of the typed
  results (:func:`mia_torch.report.types.reported`) adds a column (``target_<field>``,
  the mean over targets, or ``<attack>/<field>``). The Markdown marks a TPR whose FPR is
  below 10/N (N non-members) as unreliable. Each ``results.json`` is read into
  :class:`~mia_torch.report.types.RunResults`; jobs without a readable one
  (``stage=train`` and ``stage=attack`` shards, failed or unfinished jobs) are listed as missing, with the
  reason, instead of failing the summary.
- ``report.html``: the same table as a page with the figure and a link to each job's
  ``report.html`` (:mod:`mia_torch.report.html.sweeps`; a privacy-utility study's page replaces it).
- ``sweep_summary.png``: AUC and TPR at the lowest FPR against each swept parameter,
  one line per attack (per attack and combination of the other swept values when
  several keys are swept). Numbers are placed on a log axis when they are all positive
  and span more than a decade; strings, lists and booleans on a categorical axis.

:class:`SweepSummaryCallback` runs the summary at the end of every multirun (it is
registered in ``configs/config.yaml`` under ``hydra.callbacks``); for sweeps whose
launching process did not survive (e.g. a SLURM array submitted and left),
``scripts/summarize_sweep.py <sweep_dir>`` writes the same files.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mia_torch.atomic import atomic_open
from mia_torch.report.html.sweeps import write_sweep_html
from mia_torch.report.sweep_jobs import SweepJob, attack_metric_keys, attack_value, collect_jobs, swept_keys
from mia_torch.report.table import format_number, format_percent, tpr_mark
from mia_torch.report.types import TargetResult, fpr_of_key, reported_values

__all__ = [
    "SweepSummary",
    "SweepSummaryCallback",
    "csv_text",
    "describe",
    "report_after_sweep",
    "summary_table",
    "write_sweep_summary",
]

log = logging.getLogger(__name__)

CSV_NAME = "sweep_summary.csv"
MARKDOWN_NAME = "sweep_summary.md"
FIGURE_NAME = "sweep_summary.png"

@dataclass
class SweepSummary:
    """What :func:`write_sweep_summary` wrote and found."""

    sweep_dir: Path
    csv: Path
    markdown: Path
    figure: Path | None
    columns: list[str]
    rows: list[dict[str, Any]]
    swept: list[str]
    missing: list[tuple[str, str]]
    html: Path | None = None


#: Target fields that get a sweep column even when no job measured them.
_ALWAYS_SHOWN = ("train_acc", "test_acc")


def _target_fields(jobs: Sequence[SweepJob]) -> list[str]:
    """Reported target fields over jobs (:class:`TargetResult`'s own first): the accuracies always,
    the others (early stopping's epoch, DP-SGD's epsilon, ...) when some job measured them."""
    measured: list[str] = []
    for job in jobs:
        for target in (job.results.targets.values() if job.results else ()):
            measured += [k for k in reported_values(target) if k not in measured]
    own = [f.name for f in fields(TargetResult) if "label" in f.metadata]
    return [n for n in own if n in _ALWAYS_SHOWN or n in measured] + [n for n in measured if n not in own]


def summary_table(jobs: Sequence[SweepJob]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """``(columns, rows, swept keys)``: one row per job, missing jobs included with empty metrics.

    Columns: ``job``, the swept keys, ``status`` (``ok`` or ``missing``), ``target_<field>``
    for each reported target field (mean over targets: ``target_train_acc``,
    ``target_test_acc``, ...), ``generalization_gap`` (train - test accuracy), then
    ``<attack>/<metric>`` per attack (see :func:`attack_metric_keys`), and ``dir``.
    """
    keys = swept_keys(jobs)
    attacks, metrics = attack_metric_keys(jobs)
    target_fields = _target_fields(jobs)
    target_columns = [f"target_{name}" for name in target_fields]
    columns = ["job", *keys, "status", *target_columns, "generalization_gap",
               *[f"{a}/{m}" for a in attacks for m in metrics], "dir"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, **{k: job.overrides.get(k) for k in keys}, "dir": str(job.path)}
        row["status"] = "missing" if job.results is None else "ok"
        if job.results is not None:
            for name in target_fields:
                row[f"target_{name}"] = job.results.mean_over_targets(name)
            train, test = row.get("target_train_acc"), row.get("target_test_acc")
            row["generalization_gap"] = train - test if train is not None and test is not None else None
            for name, attack in job.results.attacks.items():
                for metric in metrics:
                    row[f"{name}/{metric}"] = attack_value(attack, metric)
        rows.append(row)
    return columns, rows, keys


def csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    """CSV of ``rows`` under a header of ``columns`` (a missing or None value is written as empty)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buf.getvalue()


def _md_cell(column: str, value: Any, job: SweepJob) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if "/tpr@" in column and math.isfinite(value):
            attack, metric = column.split("/", 1)
            pooled = job.results.attacks[attack].pooled if job.results and attack in job.results.attacks else None
            return format_percent(value) + (tpr_mark(pooled, fpr_of_key(metric) or 0.0) if pooled else "")
        return format_number(value)  # nan and ∞ (e.g. DP-SGD's epsilon without noise) as such
    return str(value).replace("|", "\\|")


def _markdown_text(sweep_dir: Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]],
                   jobs: Sequence[SweepJob], keys: Sequence[str]) -> str:
    shown = [c for c in columns if c != "dir"]
    common = {k: v for k, v in jobs[0].overrides.items() if k not in keys} if jobs else {}
    lines = [f"# Sweep summary: `{sweep_dir}`", ""]
    done = sum(job.results is not None for job in jobs)
    lines.append(f"{len(jobs)} job(s), {done} with results. Swept: "
                 + (", ".join(f"`{k}`" for k in keys) if keys else "nothing (all jobs share their overrides)") + ".")
    if common:
        lines.append("Common overrides: " + " ".join(f"`{k}={v}`" for k, v in common.items()) + ".")
    lines += ["", "AUC and TPR@FPR are pooled over each job's targets; accuracies are the targets' mean; "
              "gap = train - test accuracy. TPR marks, for N non-members: * unreliable, the FPR is below 10/N "
              "(fewer than 10 false positives); ** below 1/N, the TPR at zero false positives.", ""]
    lines.append("| " + " | ".join(shown) + " |")
    lines.append("| " + " | ".join("---" for _ in shown) + " |")
    for row, job in zip(rows, jobs):
        lines.append("| " + " | ".join(_md_cell(c, row.get(c), job) for c in shown) + " |")
    missing = [job for job in jobs if job.results is None]
    if missing:
        lines += ["", "## Missing jobs", ""]
        lines += [f"- `{job.name}` ({job.path}): {job.missing_reason}" for job in missing]
    return "\n".join(lines) + "\n"


def write_sweep_summary(sweep_dir: str | Path) -> SweepSummary:
    """Write ``sweep_summary.{csv,md,png}`` into ``sweep_dir``; see the module docstring.

    The PNG is skipped (``figure=None``) when no job has results. Files are written
    atomically. Raises like :func:`collect_jobs` when there is no sweep to summarise.
    """
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    columns, rows, keys = summary_table(jobs)
    csv_path, md_path = sweep_dir / CSV_NAME, sweep_dir / MARKDOWN_NAME
    with atomic_open(csv_path, "w", newline="") as fh:
        fh.write(csv_text(columns, rows))
    with atomic_open(md_path, "w") as fh:
        fh.write(_markdown_text(sweep_dir, columns, rows, jobs, keys))
    from mia_torch.report.plots import save_figure  # matplotlib: only when a summary is written
    from mia_torch.report.sweep_plot import sweep_figure

    figure_path = None
    fig = sweep_figure(jobs, title=f"{sweep_dir}: " + (f"swept {', '.join(keys)}" if keys else "nothing swept"))
    if fig is not None:
        figure_path = save_figure(fig, sweep_dir / FIGURE_NAME)
    html = write_sweep_html(sweep_dir, jobs, (columns, rows, keys))
    return SweepSummary(sweep_dir=sweep_dir, csv=csv_path, markdown=md_path, figure=figure_path, columns=columns,
                        rows=rows, swept=keys, missing=[(j.name, j.missing_reason or "") for j in jobs
                                                        if j.results is None], html=html)


def describe(summary: SweepSummary) -> str:
    """A few lines saying what was summarised and where the files are."""
    done = len(summary.rows) - len(summary.missing)
    lines = [f"sweep summary of {len(summary.rows)} job(s) ({done} with results, swept: "
             f"{', '.join(summary.swept) or 'nothing'}):",
             f"  {summary.csv}", f"  {summary.markdown}"]
    lines += [f"  {path}" for path in (summary.figure, summary.html) if path is not None]
    for name, reason in summary.missing:
        lines.append(f"  missing job {name}: {reason}")
    return "\n".join(lines)


class SweepSummaryCallback(Callback):
    """Hydra callback: write the sweep summary into ``hydra.sweep.dir`` when a multirun ends.

    Registered in ``configs/config.yaml`` (``hydra.callbacks.sweep_summary``). Single
    runs are untouched (only ``on_multirun_end`` is implemented). A failure to
    summarise is reported but does not fail the finished sweep; rerun it with
    ``scripts/summarize_sweep.py <sweep_dir>``.
    """

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Summarise the sweep that just finished and print where the files are."""
        report_after_sweep(config, "sweep summary", "scripts/summarize_sweep.py",
                           lambda sweep_dir: describe(write_sweep_summary(sweep_dir)))


def report_after_sweep(config: DictConfig, what: str, script: str, write: Callable[[Path], str]) -> None:
    """Run ``write(sweep_dir)`` when a multirun ends and print what it returns.

    The jobs are done by then, so a failure is logged and printed with the ``script`` that
    retries it, never raised (it would turn a finished sweep into a failed one).
    """
    sweep_dir = Path(str(config.hydra.sweep.dir))
    try:
        text = write(sweep_dir)
    except Exception as err:  # noqa: BLE001 - the jobs are done; do not turn them into a failure
        log.exception("%s of %s failed", what, sweep_dir)
        print(f"{what} of {sweep_dir} failed: {err}; retry with `python {script} {sweep_dir}`", flush=True)
        return
    print(text, flush=True)
