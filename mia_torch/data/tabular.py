"""Tabular records as datasets: your CSV file (``csv``) and scikit-learn's breast cancer records.

Both loaders hand a population table and a test table (pandas DataFrames) to
:func:`tabular_dataset`, which encodes them into a :class:`Dataset` of kind ``"tabular"``
(``x`` is float32 ``[N, F]``), with every encoding fitted on the population rows only:

- a feature column is *numeric* when more than half of its values in the population parse
  as numbers, otherwise *categorical*; ``categorical=[...]`` makes more columns categorical
  (integer codes). A numeric column holding some text (``abc`` among ages) is refused, naming
  the column, rows and values, in the population and the test rows alike, unless
  ``non_numeric="missing"`` makes such cells missing values;
- numeric columns: a missing value becomes the population's median of that column
  (``SimpleImputer(strategy="median")``), then the column is standardised with the
  population's mean and std (``StandardScaler``);
- categorical columns: a missing value becomes a category of its own, ``"<missing>"``,
  then the column is one-hot encoded over the population's categories; a category the
  population lacks (seen only in the test rows) encodes as all zeros
  (``OneHotEncoder(handle_unknown="ignore")``);
- the label column becomes class ids ``0..C-1`` in sorted order of its values (numbers
  numerically, text alphabetically); ``Dataset.class_names`` keeps the values.

With ``encoder`` (``dataset.encoder``) the user's own encoding replaces these column rules
(:mod:`mia_torch.data.user_encoder`); the label is encoded as above.

Refused, with the file, column or config key named: a missing file, a missing label
column or label value, a column with no value in the population, a label with a single
class, a test label the population lacks, an unknown column in ``categorical`` or
``drop``, a non-number in a numeric column, any missing value with ``missing="error"``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch

from mia_torch.data.csv_cells import check_numbers, meant_numeric, read_csv
from mia_torch.data.datasets import (
    Dataset,
    data_file,
    is_int_in,
    split_rows,
)
from mia_torch.data.loader import DatasetLoader
from mia_torch.data.user_encoder import UserEncoder, encode_tables, load_encoder

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["MISSING_CATEGORY", "MISSING_POLICIES", "NON_NUMERIC_POLICIES", "BreastCancer", "CsvRecords", "read_csv",
           "tabular_dataset"]

log = logging.getLogger(__name__)

#: The category a missing value of a categorical column becomes.
MISSING_CATEGORY = "<missing>"
#: ``dataset.missing``: ``impute`` (median / own category) or ``error`` (refuse any missing value).
MISSING_POLICIES = ("impute", "error")
#: ``dataset.non_numeric``: text in a numeric column is an ``error`` or becomes a ``missing`` value.
NON_NUMERIC_POLICIES = ("error", "missing")
DEFAULT_TEST_FRACTION = 0.2


def tabular_dataset(
    name: str,
    population: "pd.DataFrame",
    test: "pd.DataFrame",
    *,
    label: str,
    categorical: Sequence[str] = (),
    missing: str = "impute",
    non_numeric: str = "error",
    source: str,
    test_source: str,
    indices: np.ndarray | None = None,
    test_indices: np.ndarray | None = None,
    encoder: UserEncoder | None = None,
) -> Dataset:
    """Encode a population table and a test table into a tabular :class:`Dataset` (see the module doc).

    ``label`` is the class column; every other column of ``population`` is a feature, and
    ``test`` must hold the same columns. ``categorical`` names numeric columns to one-hot
    encode anyway. ``missing`` is ``"impute"`` or ``"error"``; ``non_numeric`` is ``"error"`` or
    ``"missing"`` (text in a numeric column becomes a missing value). ``source`` and
    ``test_source`` name where the tables came from, for error messages; ``indices`` /
    ``test_indices`` are the rows' positions in that source. ``encoder`` (``dataset.encoder``)
    replaces mia_torch's encoding by the user's own (:mod:`mia_torch.data.user_encoder`).
    """
    if missing not in MISSING_POLICIES:
        raise ValueError(f"`dataset.missing` must be one of {MISSING_POLICIES}, got {missing!r}")
    if non_numeric not in NON_NUMERIC_POLICIES:
        raise ValueError(f"`dataset.non_numeric` must be one of {NON_NUMERIC_POLICIES}, got {non_numeric!r}")
    if non_numeric == "missing" and missing == "error":
        raise ValueError("`dataset.non_numeric`=missing makes text cells of numeric columns missing values, which "
                         "`dataset.missing`=error refuses: set dataset.missing=impute, or dataset.non_numeric=error")
    _check_labels(population, label, source)
    _check_labels(test, label, test_source)
    features = [c for c in population.columns if c != label]
    if not features:
        raise ValueError(f"{source} has no feature columns besides the label column `{label}`")
    lacking = [c for c in features if c not in test.columns]
    if lacking:
        raise ValueError(f"{test_source} lacks column(s) {lacking} that {source} has")
    if encoder is not None and categorical:
        raise ValueError("`dataset.categorical` chooses columns for mia_torch's own encoding, but `dataset.encoder` "
                         "encodes the columns: remove dataset.categorical")
    for column in features if encoder is None else ():
        if population[column].isna().all():
            raise ValueError(
                f"column `{column}` of {source} has no value in any population row: "
                f"remove it from the file or list it in dataset.drop"
            )
    if missing == "error":
        for frame, where in ((population, source), (test, test_source)):
            gaps = [c for c in features if frame[c].isna().any()]
            if gaps:
                raise ValueError(
                    f"column(s) {gaps} of {where} have missing values and dataset.missing=error: fill them in, or "
                    f"set dataset.missing=impute (numeric: the population median; categorical: a category of its own)"
                )
    if encoder is None:
        x, x_test, feature_names = _own_encoding(population[features], test[features], categorical=categorical,
                                                 non_numeric=non_numeric, source=source, test_source=test_source)
    else:
        numeric = [c for c in features if _parses_as_numbers(population[c])]
        x, x_test, feature_names = encode_tables(encoder, population[features], test[features], numeric=numeric,
                                                 source=source, test_source=test_source)
    y, y_test, class_names = _encode_labels(population[label], test[label], label=label, source=source,
                                            test_source=test_source)
    return Dataset(
        name=name,
        x=torch.as_tensor(x),
        y=y,
        x_test=torch.as_tensor(x_test),
        y_test=y_test,
        num_classes=len(class_names),
        indices=None if indices is None else torch.as_tensor(indices, dtype=torch.int64),
        test_indices=None if test_indices is None else torch.as_tensor(test_indices, dtype=torch.int64),
        kind="tabular",
        feature_names=feature_names,
        class_names=class_names,
    )


def _own_encoding(population: "pd.DataFrame", test: "pd.DataFrame", *, categorical: Sequence[str],
                  non_numeric: str, source: str, test_source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """mia_torch's encoding of the feature columns (see the module doc), fitted on the population."""
    features = list(population.columns)
    categories = set(categorical) | {c for c in features if not meant_numeric(population[c])}
    numeric = [c for c in features if c not in categories]
    categoric = [c for c in features if c in categories]
    _warn_identifier_like(population, categoric, source)
    pop_x = _typed(population, numeric, categoric, source, non_numeric=non_numeric)
    test_x = _typed(test, numeric, categoric, test_source, non_numeric=non_numeric)
    encoder = _encoder(numeric, categoric).fit(pop_x)
    return (np.asarray(encoder.transform(pop_x), dtype=np.float32),
            np.asarray(encoder.transform(test_x), dtype=np.float32),
            tuple(str(f) for f in encoder.get_feature_names_out()))


def _csv(
    *,
    root: Path | None,
    download: bool,
    seed: int,
    path: str | None = None,
    label: str | None = None,
    test_path: str | None = None,
    test_fraction: float | None = None,
    categorical: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    missing: str = "impute",
    non_numeric: str = "error",
    encoder: Any = None,
    encoder_trusted: Sequence[str] | None = None,
) -> Dataset:
    """Your records: a CSV file with a header row, one record per row, the class in column ``label``.

    ``path`` and ``test_path`` are relative to ``data_dir`` unless absolute. The test rows
    come from ``test_path`` (same columns) or are a seeded ``test_fraction`` of the file's
    rows (default 0.2). ``drop`` lists columns to ignore (identifiers, free text).
    ``indices`` are the population's row positions in the file (0-based, header excluded).
    ``encoder`` is your own encoding of the columns (see :mod:`mia_torch.data.user_encoder`;
    ``encoder_trusted``: extra types its skops file may hold).
    """
    if not path:
        raise ValueError("dataset=csv needs `dataset.path`: the CSV file of records (a header row, one record per row)")
    if not label:
        raise ValueError("dataset=csv needs `dataset.label`: the name of the column that holds each record's class")
    categorical, drop = _column_list(categorical, "categorical"), _column_list(drop, "drop")
    file = data_file(path, root)
    frame = read_csv(file, key="dataset.path")
    _check_columns(frame, label=str(label), categorical=categorical, drop=drop, file=file)
    frame = frame.drop(columns=drop)
    user_encoder = None if encoder is None else load_encoder(encoder, root=root, trusted=encoder_trusted)
    if test_path is not None:
        if test_fraction is not None:
            raise ValueError("set `dataset.test_path` or `dataset.test_fraction`, not both")
        test_file = data_file(test_path, root)
        test = read_csv(test_file, key="dataset.test_path")
        test = test.drop(columns=[c for c in drop if c in test.columns])
        return tabular_dataset("csv", frame, test, label=str(label), categorical=categorical, missing=missing,
                               non_numeric=non_numeric, source=str(file), test_source=str(test_file),
                               encoder=user_encoder)
    fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
    valid = isinstance(fraction, (int, float)) and not isinstance(fraction, bool) and 0 < fraction < 1
    num_test = round(len(frame) * fraction) if valid else 0
    if not 1 <= num_test <= len(frame) - 2:
        raise ValueError(
            f"`dataset.test_fraction`={test_fraction!r} must be in (0, 1) and leave at least 1 test row and 2 "
            f"population rows of the {len(frame)} in {file}; or give a test file with `dataset.test_path`"
        )
    pop_rows, test_rows = split_rows(len(frame), num_test, seed=seed)
    return tabular_dataset(
        "csv", frame.iloc[pop_rows], frame.iloc[test_rows], label=str(label), categorical=categorical,
        missing=missing, non_numeric=non_numeric, source=str(file),
        test_source=f"{file} (the rows held out by dataset.test_fraction)", indices=pop_rows, test_indices=test_rows,
        encoder=user_encoder,
    )


def _breast_cancer(*, root: Path | None, download: bool, seed: int, num_test: int = 100) -> Dataset:
    """scikit-learn's bundled Wisconsin diagnostic breast cancer records (569 patients, offline).

    30 numeric features per record (measurements of cell nuclei in a biopsy image); the
    class is the diagnosis, 0 = benign and 1 = malignant. A seeded split keeps ``num_test``
    records for test accuracy; the other records are the population.
    """
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer(as_frame=True)
    frame = bunch.data.assign(diagnosis=bunch.target_names[bunch.target.to_numpy()])
    total = len(frame)
    if not is_int_in(num_test, 1, total - 2):
        raise ValueError(
            f"`dataset.num_test` for breast_cancer must be an integer in [1, {total - 2}], got {num_test!r}"
        )
    pop_rows, test_rows = split_rows(total, int(num_test), seed=seed)
    return tabular_dataset(
        "breast_cancer", frame.iloc[pop_rows], frame.iloc[test_rows], label="diagnosis",
        source="the breast_cancer records", test_source="the breast_cancer test records",
        indices=pop_rows, test_indices=test_rows,
    )


class CsvRecords(DatasetLoader):
    """``dataset=csv``: your records, from a CSV file; its options are :func:`_csv`'s."""

    kind = "tabular"
    load = staticmethod(_csv)


class BreastCancer(DatasetLoader):
    """``dataset=breast_cancer``: scikit-learn's bundled breast cancer records; see :func:`_breast_cancer`."""

    kind = "tabular"
    load = staticmethod(_breast_cancer)


# --------------------------------------------------------------------------- helpers


def _column_list(values: Sequence[str] | None, key: str) -> list[str]:
    if values is None:
        return []
    if isinstance(values, str) or not isinstance(values, Sequence):
        raise ValueError(f"`dataset.{key}` must be a list of column names, e.g. dataset.{key}=[a,b], got {values!r}")
    return [str(v) for v in values]


def _check_columns(frame: "pd.DataFrame", *, label: str, categorical: list[str], drop: list[str], file: Path) -> None:
    columns = list(frame.columns)
    if label not in columns:
        raise ValueError(f"`dataset.label`={label!r} is not a column of {file}; its columns are: {columns}")
    for key, names in (("categorical", categorical), ("drop", drop)):
        unknown = [c for c in names if c not in columns]
        if unknown:
            raise ValueError(f"`dataset.{key}` names column(s) {unknown} that {file} lacks; its columns are: {columns}")
        if label in names:
            raise ValueError(f"`dataset.{key}` lists the label column {label!r} (`dataset.label`)")


def _check_labels(frame: "pd.DataFrame", label: str, source: str) -> None:
    if label not in frame.columns:
        raise ValueError(
            f"`dataset.label`={label!r} is not a column of {source}; its columns are: {list(frame.columns)}"
        )
    empty = frame.index[frame[label].isna().to_numpy()]
    if len(empty):
        raise ValueError(
            f"column `{label}` (dataset.label) of {source} is empty in {len(empty)} row(s) "
            f"(row {', '.join(str(r) for r in empty[:5])}{', ...' if len(empty) > 5 else ''}; 0-based, header "
            f"excluded): every record needs a class; remove those rows"
        )


def _parses_as_numbers(values: "pd.Series") -> bool:
    import pandas as pd

    if pd.api.types.is_numeric_dtype(values):
        return True
    present = values.notna()
    return bool(pd.to_numeric(values[present], errors="coerce").notna().all())


def _typed(frame: "pd.DataFrame", numeric: list[str], categoric: list[str], source: str, *,
           non_numeric: str = "error") -> "pd.DataFrame":
    """Numeric columns as float64 (missing: NaN), categorical columns as text (missing: NaN).

    Text in a numeric column is refused, naming the column, rows and values, unless
    ``non_numeric="missing"`` makes it a missing value.
    """
    import pandas as pd

    out: dict[str, Any] = {}
    for column in numeric:
        if non_numeric == "error":
            check_numbers(frame[column], column=column, source=source)
        values = pd.to_numeric(frame[column], errors="coerce").astype("float64")
        if np.isinf(values.to_numpy()).any():
            raise ValueError(f"column `{column}` of {source} holds an infinite value: fix it or leave the cell empty")
        out[column] = values
    for column in categoric:
        out[column] = frame[column].astype(str).astype(object).where(frame[column].notna(), np.nan)
    return pd.DataFrame(out, index=frame.index)


def _encoder(numeric: list[str], categoric: list[str]) -> Any:
    """The ColumnTransformer of the module doc (not yet fitted)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    return ColumnTransformer(
        [
            ("num", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()), numeric),
            ("cat", make_pipeline(SimpleImputer(strategy="constant", fill_value=MISSING_CATEGORY),
                                  OneHotEncoder(handle_unknown="ignore", sparse_output=False)), categoric),
        ],
        sparse_threshold=0.0,
    )


def _encode_labels(
    labels: "pd.Series", test_labels: "pd.Series", *, label: str, source: str, test_source: str
) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    """Class ids fitted on the population's labels (sorted values), and the class names."""
    import pandas as pd
    from sklearn.preprocessing import LabelEncoder

    def values(series: pd.Series, numeric: bool) -> np.ndarray:
        if not numeric:
            return series.astype(str).to_numpy(dtype=object)
        parsed = pd.to_numeric(series, errors="coerce")  # unparsable: NaN, i.e. a class the population lacks
        return parsed.to_numpy(dtype=np.float64)

    numeric = _parses_as_numbers(labels)
    pop, test = values(labels, numeric), values(test_labels, numeric)
    encoder = LabelEncoder().fit(pop)
    classes = encoder.classes_
    names = tuple(_class_name(c) for c in classes)
    if len(classes) < 2:
        raise ValueError(
            f"column `{label}` (dataset.label) of {source} has a single class ({names[0]!r}) in the population: "
            f"membership inference needs a classifier of at least 2 classes; check `dataset.label`"
        )
    unseen = ~np.isin(test, classes)
    if unseen.any():
        shown = sorted({_class_name(v) for v in test_labels.to_numpy()[unseen]})
        raise ValueError(
            f"column `{label}` (dataset.label) of {test_source} holds class(es) {shown[:5]} that the population of "
            f"{source} never has; the classes are fitted on the population: remove the records of those classes "
            f"or add some to the population"
        )
    return (torch.as_tensor(encoder.transform(pop), dtype=torch.int64),
            torch.as_tensor(encoder.transform(test), dtype=torch.int64), names)


def _class_name(value: Any) -> str:
    """``1.0`` -> ``"1"``; anything else as text."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _warn_identifier_like(frame: "pd.DataFrame", categoric: list[str], source: str) -> None:
    rows = len(frame)
    for column in categoric:
        distinct = frame[column].nunique()
        if rows >= 20 and distinct > rows // 2:
            log.warning(
                "column `%s` of %s has %d distinct values in %d population rows: it looks like an identifier, and "
                "one-hot encoding it lets a model memorise records by it; drop it with dataset.drop=[%s] unless "
                "it is a real feature", column, source, distinct, rows, column,
            )
