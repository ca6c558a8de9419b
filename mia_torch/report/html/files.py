"""What the HTML report reads from a run directory besides ``results.json``: figures and per-record CSVs.

Figures are the PNG files the run wrote, embedded as data URIs (nothing is redrawn). A per-record
CSV is read as text: its column names and cells reach the page only through the autoescaped
templates, and numbers keep their exact text for sorting.
"""
from __future__ import annotations

import base64
import csv
import io
import math
import re
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Cell", "Figure", "RecordTable", "read_figure", "read_records", "run_figures"]

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Figure:
    """One figure of the page: the PNG's file name, its caption, pixel size and data URI, or why it has none."""

    file: str
    caption: str
    data_uri: str | None = None
    width: int = 0
    height: int = 0
    problem: str | None = None


@dataclass(frozen=True)
class Cell:
    """One table cell: what is shown and, for a number, its exact text (the sort key)."""

    text: str
    number: str | None = None


@dataclass
class RecordTable:
    """Rows of a per-record CSV as shown on the page: ``shown`` of ``total`` rows, in ``order``.

    ``problem`` says why the rows are empty when the file is absent or cannot be read.
    """

    file: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[Cell]] = field(default_factory=list)
    total: int = 0
    order: str = ""
    problem: str | None = None

    @property
    def shown(self) -> int:
        """How many rows the page shows."""
        return len(self.rows)


def _problem(err: Exception) -> str:
    """Why a file could not be shown, in words for the page."""
    if isinstance(err, FileNotFoundError):
        return "is not in the run directory"
    return f"cannot be read ({type(err).__name__}: {err})"


def _read(path: Path) -> bytes:
    """The bytes of the run's own file ``path``: a link is not followed, so that a page handed on can carry
    nothing from outside the run directory."""
    if path.is_symlink():
        raise OSError(f"{path.name} is a link; the page embeds only the run directory's own files")
    return path.read_bytes()


def _png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header; (0, 0) when the bytes are not a PNG (nothing else is embedded)."""
    if len(data) < 24 or not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return 0, 0
    return struct.unpack(">II", data[16:24])


def read_figure(path: Path, caption: str) -> Figure:
    """The PNG at ``path`` as a data URI with its caption; a figure without data when the file is absent."""
    try:
        data = _read(path)
    except OSError as err:
        return Figure(file=path.name, caption=caption, problem=_problem(err))
    width, height = _png_size(data)
    if not width:
        return Figure(file=path.name, caption=caption, problem="is not a PNG image")
    uri = "data:image/png;base64," + base64.b64encode(data).decode("ascii")
    return Figure(file=path.name, caption=caption, data_uri=uri, width=width, height=height)


#: Captions of the run's figures, in the order the page shows them (``{t}``: the target).
_CAPTIONS = {
    "roc": "How well each attack tells training records from unseen ones, pooled over the targets. Top: "
           "log-log axes, which show the low false-alarm rates that matter for individuals; the shaded band holds "
           "false-alarm rates resting on fewer than 10 false alarms (unreliable). Bottom: linear axes. The "
           "diagonal is a random guess.",
    "confidence": "Target {t}: how confident the model is in the true class of records it trained on (members) "
                  "and of records it never saw (non-members). The further apart, the more an attacker can tell; "
                  "the lower panel spreads out the confident end on the logit scale.",
    "exposed": "Target {t}: the training records the strongest attack flags most, with label, score and p-value "
               "(the chance that a record the model never saw scores as high).",
    "slices": "Attack success (AUC) per class and for records the model classifies correctly or incorrectly: "
              "which groups of people are most exposed.",
}


def run_figures(run_dir: Path, targets: Sequence[int], *, has_attacks: bool) -> list[Figure]:
    """The run's figures: ROC, each target's confidence gap and exposed records, slices, then any other PNG.

    Figures a finished study always writes are listed even when their file is missing (the page
    says so); the exposed-records gallery exists for image data only and is skipped when absent;
    any other PNG in the run directory (a figure of a newer analysis) follows with its file name.
    """
    figures = []
    if has_attacks:
        figures.append(read_figure(run_dir / "roc.png", _CAPTIONS["roc"]))
        for t in targets:
            figures.append(read_figure(run_dir / f"target{t}_confidence.png", _CAPTIONS["confidence"].format(t=t)))
            exposed = run_dir / f"target{t}_exposed.png"
            if exposed.is_file():
                figures.append(read_figure(exposed, _CAPTIONS["exposed"].format(t=t)))
        figures.append(read_figure(run_dir / "slices.png", _CAPTIONS["slices"]))
    shown = {f.file for f in figures}
    others = sorted(p for p in run_dir.glob("*.png") if p.name not in shown)
    return figures + [read_figure(p, f"{p.stem.replace('_', ' ')}.") for p in others]


_INTEGER = re.compile(r"[+-]?\d+")


def _cell(text: str) -> Cell:
    """A cell showing numbers with 4 significant digits (integers whole) and keeping their exact text."""
    if _INTEGER.fullmatch(text):
        return Cell(text, text)
    try:
        value = float(text)
    except ValueError:
        return Cell(text)
    return Cell(f"{value:.4g}" if math.isfinite(value) else text, text)


def _sort_key(text: str | None, *, descending: bool) -> tuple[int, float]:
    """Numbers first (in the asked direction), then cells that hold no number."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        value = math.nan
    return (1, 0.0) if math.isnan(value) else (0, -value if descending else value)


def read_records(
    path: Path,
    *,
    limit: int,
    order_by: str | None = None,
    descending: bool = False,
    keep: Callable[[dict[str, str]], bool] | None = None,
    order: str = "",
    first: Sequence[str] = (),
) -> RecordTable:
    """Up to ``limit`` rows of the CSV at ``path`` (those ``keep`` accepts), ordered by the number in
    column ``order_by`` when the file has it (file order otherwise); ``order`` says so on the page.
    The columns named in ``first`` (those the file has) are shown first, the others after them."""
    try:
        reader = csv.reader(io.StringIO(_read(path).decode("utf-8"), newline=""))
        columns = next(reader, [])
        rows = [row for row in reader if keep is None or keep(dict(zip(columns, row)))]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        return RecordTable(file=path.name, problem=_problem(err))
    if order_by in columns:
        index = columns.index(order_by)
        rows.sort(key=lambda row: _sort_key(row[index] if index < len(row) else None, descending=descending))
    else:
        order = "in the file's order"
    lead = [columns.index(c) for c in first if c in columns]
    positions = lead + [i for i in range(len(columns)) if i not in lead]
    shown = [[_cell(row[i]) if i < len(row) else Cell("") for i in positions] for row in rows[:limit]]
    return RecordTable(file=path.name, columns=[columns[i] for i in positions], rows=shown, total=len(rows),
                       order=order)
