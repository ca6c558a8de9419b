"""A CSV file's cells read as text, and the checks that keep a typo from changing what a column means.

:func:`read_csv` reads every cell as text (empty cells are missing) and refuses two columns
of one name; :func:`meant_numeric` decides that a feature column is numeric when more than
half of its values parse as numbers, and :func:`check_numbers` refuses the few that do not,
naming the column, rows and values, instead of letting one ``abc`` turn ``age`` into 500
categories.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mia_torch.data.datasets import DatasetNotFoundError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["check_numbers", "meant_numeric", "non_numbers", "read_csv"]

_LISTED = 5


def read_csv(file: Path, *, key: str) -> "pd.DataFrame":
    """Every cell of the CSV ``file`` (header row, one record per row) as text; empty cells are missing.

    ``key`` is the config key that names the file, for error messages.
    """
    import pandas as pd

    if not file.is_file():
        raise DatasetNotFoundError(
            f"{file} not found: set `{key}` (relative to `data_dir` unless absolute) to your CSV file"
        )
    try:
        frame = pd.read_csv(file, dtype=str, skipinitialspace=True)
    except pd.errors.EmptyDataError as err:
        raise ValueError(f"{file} (`{key}`) is empty: it needs a header row and one row per record") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} (`{key}`) cannot be read as CSV: {err}") from err
    if frame.empty:
        raise ValueError(f"{file} (`{key}`) has a header row but no records")
    _check_unique_header(file, key)
    frame.columns = [str(c).strip() for c in frame.columns]
    return frame


def _check_unique_header(file: Path, key: str) -> None:
    """Refuse two columns of one name (pandas would silently rename the second ``name.1``)."""
    import csv

    with open(file, newline="", encoding="utf-8-sig") as handle:
        header = [name.strip() for name in next(csv.reader(handle, skipinitialspace=True), [])]
    repeated = {name: [i for i, n in enumerate(header) if n == name] for name in header if header.count(name) > 1}
    if repeated:
        listed = "; ".join(f"{name!r} in columns {positions}" for name, positions in repeated.items())
        raise ValueError(f"{file} (`{key}`) has duplicate column names ({listed}; 0-based): each column needs its own "
                         "name, so rename or remove the repeated ones")


def non_numbers(values: "pd.Series") -> "pd.Series":
    """The present cells of ``values`` that do not parse as numbers (indexed by their rows)."""
    import pandas as pd

    present = values[values.notna()]
    return present[pd.to_numeric(present, errors="coerce").isna().to_numpy()]


def meant_numeric(values: "pd.Series") -> bool:
    """Whether a feature column is numeric: more than half of its present values parse as numbers."""
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values):
        return True
    present = int(values.notna().sum())
    return present > 0 and 2 * len(non_numbers(values)) < present


def check_numbers(values: "pd.Series", *, column: str, source: str) -> None:
    """Refuse text in the numeric ``column`` of ``source``, naming its rows (0-based, header excluded) and values."""
    text = non_numbers(values)
    if not len(text):
        return
    cells = ", ".join(f"row {row}: {value!r}" for row, value in text.iloc[:_LISTED].items())
    more = f" (+{len(text) - _LISTED} more)" if len(text) > _LISTED else ""
    raise ValueError(
        f"column `{column}` of {source} is numeric (in the population) but holds text in {len(text)} of "
        f"{len(values)} rows: {cells}{more} (rows 0-based, header excluded). Fix those cells, set "
        f"dataset.non_numeric=missing to read them as missing values, or list `{column}` in dataset.categorical "
        "to encode the column as categories"
    )
