"""``report.html`` of a sweep directory: the sweep summary, or the privacy-utility study when it is one.

The sweep summary and the privacy-utility study hand over what they read and found: the jobs
(each with its typed results), the sweep table (columns, one row per job, the swept keys) and,
for a study, the study itself. The page embeds the figures they wrote and links each job's own
``report.html``; nothing is recomputed.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mia_torch.report.html.files import Cell, Figure, read_figure
from mia_torch.report.html.page import REPORT_NAME
from mia_torch.report.html.render import render_page, write_page
from mia_torch.report.table import format_number, format_percent, tpr_mark
from mia_torch.report.types import fpr_of_key

#: The sweep table: its columns, one row (column -> value) per job, and the swept override keys.
SweepTable = tuple[list[str], list[dict[str, Any]], list[str]]

__all__ = ["SweepPage", "build_sweep_page", "write_sweep_html"]

#: The figures of a sweep directory, by file name, with their captions (shown when present).
FIGURES = {
    "privacy_utility.png": "Each setting's test accuracy (right is better) against what its strongest attack finds "
                           "(lower is better); the shaded region holds settings that cost accuracy and buy no privacy.",
    "sweep_summary.png": "Attack success against each swept value, one line per attack.",
}


@dataclass
class SweepPage:
    """What the sweep template reads: the sweep table as cells, each job's page, the figures and the study."""

    title: str
    sweep_dir: Path
    jobs: Sequence[Any]
    swept: list[str]
    columns: list[str]
    rows: list[list[Cell]]
    links: list[tuple[str, str | None, str | None]]
    figures: list[Figure] = field(default_factory=list)
    study: Any = None


def _cell(column: str, value: Any, job: Any) -> Cell:
    """A sweep table cell: TPRs as percentages with their reliability mark, other numbers to 3 decimals."""
    if value is None:
        return Cell("—")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return Cell(str(value))
    exact = repr(value) if math.isfinite(value) else None
    if "/tpr@" in column and job.results is not None and math.isfinite(value):
        attack, metric = column.split("/", 1)
        found = job.results.attacks.get(attack)
        mark = tpr_mark(found.pooled, fpr_of_key(metric) or 0.0) if found is not None else ""
        return Cell(format_percent(value) + mark, exact)
    return Cell(str(value) if isinstance(value, int) else format_number(value), exact)


def build_sweep_page(sweep_dir: Path, jobs: Sequence[Any], table: SweepTable,
                     *, study: Any = None) -> SweepPage:
    """The page of ``sweep_dir`` from its ``jobs`` (name, path, typed ``results``), their ``table`` and the
    privacy-utility ``study`` (its points, the undefended one, the recommendation), if it is one."""
    columns, rows, swept = table
    shown = [c for c in columns if c != "dir"]
    links = []
    for job in jobs:
        page = job.path / REPORT_NAME
        link = "./" + page.relative_to(sweep_dir).as_posix() if page.is_file() else None  # never read as a scheme
        links.append((job.name, link, job.missing_reason))
    title = f"Sweep of {len(jobs)} jobs" + (f" over {', '.join(swept)}" if swept else "")
    if study is not None:
        title = f"Privacy-utility study of {len(study.points)} settings"
    figures = [read_figure(sweep_dir / name, caption) for name, caption in FIGURES.items()
               if (sweep_dir / name).is_file()]
    return SweepPage(title=title, sweep_dir=sweep_dir, jobs=jobs, swept=swept, columns=shown,
                     rows=[[_cell(c, row.get(c), job) for c in shown] for row, job in zip(rows, jobs)], links=links,
                     figures=figures, study=study)


def write_sweep_html(sweep_dir: str | Path, jobs: Sequence[Any],
                     table: SweepTable, *,
                     study: Any = None) -> Path:
    """Write ``sweep_dir/report.html`` (see :func:`build_sweep_page`); returns its path."""
    sweep_dir = Path(sweep_dir)
    page = build_sweep_page(sweep_dir, jobs, table, study=study)
    html = render_page("sweep.html.j2", page=page, title=page.title)
    return write_page(sweep_dir / REPORT_NAME, html)
