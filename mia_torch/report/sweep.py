"""Summary of a Hydra multirun sweep: one row per job, as CSV, Markdown and a metric plot.

A sweep directory (``hydra.sweep.dir``) holds one subdirectory per job, each with the
job's ``.hydra/overrides.yaml`` and, once the job has finished its report,
``results.json``. :func:`write_sweep_summary` reads them all and writes, into the sweep
directory:

- ``sweep_summary.csv`` and ``sweep_summary.md``: per job, the values of the swept
  overrides (the override keys whose value differs between jobs), the targets' train
  and test accuracy (mean over targets), the generalization gap (train - test
  accuracy), and per attack the pooled AUC and TPR at each FPR target of
  ``results.json`` (``attacks.<name>.pooled``). Jobs without a readable
  ``results.json`` (``stage=train`` shards, failed or unfinished jobs) are listed as
  missing, with the reason, instead of failing the summary.
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
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mia_torch.atomic import atomic_open
from mia_torch.report.results import read_json

__all__ = [
    "SweepJob",
    "SweepSummary",
    "SweepSummaryCallback",
    "collect_jobs",
    "describe",
    "summary_table",
    "sweep_figure",
    "swept_keys",
    "write_sweep_summary",
]

log = logging.getLogger(__name__)

CSV_NAME = "sweep_summary.csv"
MARKDOWN_NAME = "sweep_summary.md"
FIGURE_NAME = "sweep_summary.png"

#: Above this many lines per panel, the other swept keys are averaged out instead.
MAX_LINES_PER_PANEL = 12

_TPR_KEY = re.compile(r"^tpr@(.+)fpr$")
_NUM = re.compile(r"(\d+)")


@dataclass
class SweepJob:
    """One job of a sweep: its directory, parsed overrides and results (None when missing)."""

    name: str
    path: Path
    overrides: dict[str, str] = field(default_factory=dict)
    values: dict[str, Any] = field(default_factory=dict)
    results: dict[str, Any] | None = None
    missing_reason: str | None = None


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


def _natural_key(text: str) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in _NUM.split(text)]


def _parse_overrides(lines: Sequence[str]) -> tuple[dict[str, str], dict[str, Any]]:
    """``key -> value as written`` and ``key -> typed value`` of a job's override strings."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    shown: dict[str, str] = {}
    typed: dict[str, Any] = {}
    for line in lines:
        line = str(line)
        try:
            override = parser.parse_override(line)
        except Exception:  # noqa: BLE001 - an odd override is still shown as written
            key, _, value = line.lstrip("+~").partition("=")
            shown[key], typed[key] = value, value
            continue
        key = override.key_or_group + (f"@{override.package}" if override.package else "")
        shown[key] = line.partition("=")[2]
        try:
            typed[key] = override.value()
        except Exception:  # noqa: BLE001
            typed[key] = shown[key]
    return shown, typed


def _job_dirs(sweep_dir: Path) -> list[Path]:
    found = {p.parent.parent for p in sweep_dir.rglob("overrides.yaml")
             if p.parent.name == ".hydra" and ".submitit" not in p.parts}
    found |= {p.parent for p in sweep_dir.glob("*/results.json")}
    return sorted(found, key=lambda p: _natural_key(p.relative_to(sweep_dir).as_posix()))


def _saved_stage(job_dir: Path) -> Any:
    """``stage`` of the job's saved config (``.hydra/config.yaml``), or None."""
    from omegaconf import OmegaConf

    try:
        return OmegaConf.load(job_dir / ".hydra" / "config.yaml").get("stage")
    except Exception:  # noqa: BLE001 - absent or unreadable: unknown
        return None


def collect_jobs(sweep_dir: str | Path) -> list[SweepJob]:
    """Every job under ``sweep_dir`` (directories with ``.hydra/overrides.yaml`` or ``results.json``).

    Jobs are ordered by their directory name (job numbers numerically). A job whose
    ``results.json`` is absent or unreadable gets ``results=None`` and a
    ``missing_reason``. Raises ``FileNotFoundError`` when ``sweep_dir`` does not exist
    and ``ValueError`` when it holds no job.
    """
    from omegaconf import OmegaConf

    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep directory {sweep_dir} does not exist")
    jobs = []
    for path in _job_dirs(sweep_dir):
        name = path.relative_to(sweep_dir).as_posix()
        job = SweepJob(name=name if name != "." else path.name, path=path)
        overrides_file = path / ".hydra" / "overrides.yaml"
        if overrides_file.is_file():
            try:
                lines = OmegaConf.to_container(OmegaConf.load(overrides_file))
                job.overrides, job.values = _parse_overrides(lines if isinstance(lines, list) else [])
            except Exception as err:  # noqa: BLE001 - a broken file marks the job, not the sweep
                log.warning("cannot read %s: %s", overrides_file, err)
        results_file = path / "results.json"
        if results_file.is_file():
            try:
                results = read_json(results_file)
                if not isinstance(results, dict) or "attacks" not in results:
                    raise ValueError("no `attacks` entry")
                job.results = results
            except Exception as err:  # noqa: BLE001
                job.missing_reason = f"unreadable results.json ({err})"
        elif job.values.get("stage", _saved_stage(path)) == "train":
            job.missing_reason = "stage=train (trains models only, writes no results.json)"
        else:
            job.missing_reason = "no results.json (job failed or has not finished)"
        jobs.append(job)
    if not jobs:
        raise ValueError(f"no Hydra jobs under {sweep_dir}: expected job folders with .hydra/overrides.yaml")
    return jobs


def swept_keys(jobs: Sequence[SweepJob]) -> list[str]:
    """Override keys whose value differs between jobs, in order of first appearance."""
    keys: list[str] = []
    for job in jobs:
        keys.extend(k for k in job.overrides if k not in keys)
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def _fpr_of(key: str) -> float | None:
    m = _TPR_KEY.match(key)
    if not m:
        return None
    try:
        return float(m.group(1))
    except ValueError:
        return None


def _attack_metric_keys(jobs: Sequence[SweepJob]) -> tuple[list[str], list[str]]:
    """Attack names and pooled metric keys (``auc`` then ``tpr@<f>fpr`` by decreasing FPR) over jobs."""
    attacks: list[str] = []
    tprs: set[str] = set()
    for job in jobs:
        for name, entry in (job.results or {}).get("attacks", {}).items():
            if name not in attacks:
                attacks.append(name)
            tprs.update(k for k in (entry.get("pooled") or {}) if _fpr_of(k) is not None)
    return attacks, ["auc", *sorted(tprs, key=lambda k: -(_fpr_of(k) or 0.0))]


def _mean_target(results: Mapping[str, Any], key: str) -> float | None:
    values = [float(t[key]) for t in (results.get("targets") or {}).values()
              if isinstance(t, Mapping) and isinstance(t.get(key), (int, float))]
    return sum(values) / len(values) if values else None


def summary_table(jobs: Sequence[SweepJob]) -> tuple[list[str], list[dict[str, Any]], list[str]]:
    """``(columns, rows, swept keys)``: one row per job, missing jobs included with empty metrics.

    Columns: ``job``, the swept keys, ``status`` (``ok`` or ``missing``),
    ``target_train_acc``, ``target_test_acc``, ``generalization_gap``, then
    ``<attack>/auc`` and ``<attack>/tpr@<f>fpr`` per attack (pooled over targets), and
    ``dir`` (the job directory).
    """
    keys = swept_keys(jobs)
    attacks, metrics = _attack_metric_keys(jobs)
    columns = ["job", *keys, "status", "target_train_acc", "target_test_acc", "generalization_gap",
               *[f"{a}/{m}" for a in attacks for m in metrics], "dir"]
    rows = []
    for job in jobs:
        row: dict[str, Any] = {"job": job.name, **{k: job.overrides.get(k) for k in keys}, "dir": str(job.path)}
        if job.results is None:
            row["status"] = "missing"
        else:
            row["status"] = "ok"
            train, test = _mean_target(job.results, "train_acc"), _mean_target(job.results, "test_acc")
            row["target_train_acc"], row["target_test_acc"] = train, test
            row["generalization_gap"] = train - test if train is not None and test is not None else None
            for name, entry in job.results.get("attacks", {}).items():
                for metric in metrics:
                    value = (entry.get("pooled") or {}).get(metric)
                    if isinstance(value, (int, float)) and not isinstance(value, bool):
                        row[f"{name}/{metric}"] = float(value)
        rows.append(row)
    return columns, rows, keys


def _csv_text(columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
    return buf.getvalue()


def _md_cell(column: str, value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "nan"
        if "/tpr@" in column:
            return f"{100 * value:.2f}%"
        return f"{value:.3f}"
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
              "gap = train - test accuracy.", ""]
    lines.append("| " + " | ".join(shown) + " |")
    lines.append("| " + " | ".join("---" for _ in shown) + " |")
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(c, row.get(c)) for c in shown) + " |")
    missing = [job for job in jobs if job.results is None]
    if missing:
        lines += ["", "## Missing jobs", ""]
        lines += [f"- `{job.name}` ({job.path}): {job.missing_reason}" for job in missing]
    return "\n".join(lines) + "\n"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def _axis(values: Sequence[Any], labels: Sequence[str]) -> tuple[str, list[float], list[str]]:
    """``(scale, x positions, tick labels)`` for swept ``values`` (shown as ``labels``).

    ``scale`` is ``"log"`` for positive numbers spanning more than a decade,
    ``"linear"`` for other numbers and ``"category"`` otherwise (ticks in order of
    first appearance; tick labels are only returned for categories).
    """
    if values and all(_is_number(v) for v in values):
        numbers = [float(v) for v in values]
        if all(v > 0 for v in numbers) and max(numbers) / min(numbers) > 10.0:
            return "log", numbers, []
        return "linear", numbers, []
    order = list(dict.fromkeys(labels))
    return "category", [float(order.index(v)) for v in labels], order


def sweep_figure(jobs: Sequence[SweepJob], *, title: str = "") -> Any:
    """AUC and TPR at the lowest FPR vs each swept key, one line per attack; None without results.

    One row of two panels per swept key (the job name is the x axis when nothing is
    swept). With several swept keys, each panel has one line per attack and combination
    of the other keys' values, or, above :data:`MAX_LINES_PER_PANEL` lines, one line
    per attack averaging over the other keys. Returns an Agg-backed figure.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = [job for job in jobs if job.results is not None]
    if not done:
        return None
    keys = swept_keys(jobs) or ["job"]
    attacks, metrics = _attack_metric_keys(done)
    tprs = [m for m in metrics if m != "auc"]
    low_tpr = min(tprs, key=lambda m: _fpr_of(m) or 1.0) if tprs else None
    panels = [("auc", "AUC")] + ([(low_tpr, f"TPR @ {100 * (_fpr_of(low_tpr) or 0):g}% FPR")] if low_tpr else [])

    def value_of(job: SweepJob, key: str) -> tuple[Any, str]:
        if key == "job":
            return job.name, job.name
        shown = job.overrides.get(key)
        return job.values.get(key, shown), "(unset)" if shown is None else shown

    fig = Figure(figsize=(5.5 * len(panels), 3.8 * len(keys)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), len(panels), squeeze=False)
    for row_axes, key in zip(axes, keys):
        others = [k for k in keys if k != key]
        pairs = [value_of(job, key) for job in done]
        scale, xs, ticks = _axis([p[0] for p in pairs], [p[1] for p in pairs])
        groups: dict[tuple[str, ...], list[int]] = {}
        for i, job in enumerate(done):
            groups.setdefault(tuple(f"{k}={job.overrides.get(k)}" for k in others), []).append(i)
        average = len(groups) * len(attacks) > MAX_LINES_PER_PANEL
        if average:
            groups = {("mean over " + ", ".join(others),): list(range(len(done)))}
        for ax, (metric, label) in zip(row_axes, panels):
            for name in attacks:
                for group, members in groups.items():
                    points: dict[float, list[float]] = {}
                    for i in members:
                        entry = done[i].results["attacks"].get(name)
                        value = ((entry or {}).get("pooled") or {}).get(metric)
                        if _is_number(value):
                            points.setdefault(xs[i], []).append(float(value))
                    if not points:
                        continue
                    px = sorted(points)
                    py = [sum(points[x]) / len(points[x]) for x in px]
                    suffix = f" ({', '.join(group)})" if group and (len(groups) > 1 or average) else ""
                    ax.plot(px, py, marker="o", lw=1.5, label=f"{name}{suffix}")
            if metric == "auc":
                ax.axhline(0.5, ls="--", color="grey", lw=1, label="chance")
            elif _fpr_of(metric) is not None:
                ax.axhline(_fpr_of(metric), ls="--", color="grey", lw=1, label="chance")
            if scale == "log":
                ax.set_xscale("log")
            elif scale == "linear" and len(set(xs)) <= 10:
                ax.set_xticks(sorted(set(xs)))
            elif scale == "category":
                long = max(len(t) for t in ticks) > 8
                ax.set_xticks(range(len(ticks)))
                ax.set_xlim(-0.5, len(ticks) - 0.5)
                ax.set_xticklabels(ticks, rotation=30 if long else 0, ha="right" if long else "center")
            ax.set_xlabel(key)
            ax.set_ylabel(label)
            ax.set_title(f"{label} vs {key}")
            ax.grid(True, alpha=0.3)
        row_axes[-1].legend(fontsize="small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


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
        fh.write(_csv_text(columns, rows))
    with atomic_open(md_path, "w") as fh:
        fh.write(_markdown_text(sweep_dir, columns, rows, jobs, keys))
    figure_path = None
    fig = sweep_figure(jobs, title=f"{sweep_dir}: " + (f"swept {', '.join(keys)}" if keys else "nothing swept"))
    if fig is not None:
        from mia_torch.report.plots import save_figure

        figure_path = save_figure(fig, sweep_dir / FIGURE_NAME)
    return SweepSummary(sweep_dir=sweep_dir, csv=csv_path, markdown=md_path, figure=figure_path, columns=columns,
                        rows=rows, swept=keys, missing=[(j.name, j.missing_reason or "") for j in jobs
                                                        if j.results is None])


def describe(summary: SweepSummary) -> str:
    """A few lines saying what was summarised and where the files are."""
    done = len(summary.rows) - len(summary.missing)
    lines = [f"sweep summary of {len(summary.rows)} job(s) ({done} with results, swept: "
             f"{', '.join(summary.swept) or 'nothing'}):",
             f"  {summary.csv}", f"  {summary.markdown}"]
    if summary.figure is not None:
        lines.append(f"  {summary.figure}")
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
        sweep_dir = Path(str(config.hydra.sweep.dir))
        try:
            summary = write_sweep_summary(sweep_dir)
        except Exception as err:  # noqa: BLE001 - the jobs are done; do not turn them into a failure
            log.exception("sweep summary of %s failed", sweep_dir)
            print(f"sweep summary of {sweep_dir} failed: {err}; retry with "
                  f"`python scripts/summarize_sweep.py {sweep_dir}`", flush=True)
            return
        print(describe(summary), flush=True)
