"""``dataset.encoder``: your own encoding of a CSV table into the features your model was trained on.

Two forms, both applied unchanged to the population rows and to the test rows:

- ``{_target_: my_pkg.encode, ...}``: an importable callable that takes the DataFrame of
  the feature columns (numbers as numbers, text as text, missing cells as NaN) and
  returns the features ``[rows, F]``; extra keys are passed to it as keyword arguments.
  It must not fit anything on what it is given: fit it on your training data first.
- the path of a fitted scikit-learn transformer (e.g. a ``ColumnTransformer``) saved with
  ``skops.io.dump`` (relative to ``data_dir`` unless absolute). It is loaded only when
  every type in it is one skops trusts, one of :data:`SAFE_TYPES`, or one listed in
  ``dataset.encoder_trusted``; a pickle or joblib file is never loaded, since unpickling
  runs whatever code the file names.

What an encoder returns is checked before any training, naming ``dataset.encoder``: a 2-D
array (dense or sparse, or a DataFrame) of numbers, one row per record, finite and within
float32's range, with as many columns for the test rows as for the population.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mia_torch.data.datasets import DatasetNotFoundError, data_file

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["ENCODER_KEY", "SAFE_TYPES", "UserEncoder", "encode_table", "encode_tables", "load_encoder"]

ENCODER_KEY = "dataset.encoder"
#: Types a skops file may hold besides those skops trusts itself: plain data that runs no code.
SAFE_TYPES = ("numpy.dtype",)
#: The first byte of a pickle (protocol 2 and later), which joblib writes too.
_PICKLE_PROTOCOL = 0x80
_PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib", ".sav")


@dataclass(frozen=True)
class UserEncoder:
    """A loaded ``dataset.encoder``: ``transform(frame)`` gives the features; ``describe`` names it in errors."""

    transform: Callable[["pd.DataFrame"], Any]
    describe: str
    feature_names: Callable[[], Sequence[str]] | None = None


def _from_target(spec: Mapping[str, Any]) -> UserEncoder:
    """The function ``spec`` names, through the guarded builder (:func:`mia_torch.settings.trusted.bound_callable`)."""
    from mia_torch.settings import trusted

    fn = trusted.bound_callable(spec, kind="encoder", key=ENCODER_KEY)
    return UserEncoder(fn, f"{ENCODER_KEY}._target_={spec['_target_']}")


def _refuse_pickle(file: Path) -> None:
    with open(file, "rb") as handle:
        first = handle.read(1)
    if file.suffix.lower() in _PICKLE_SUFFIXES or first == bytes([_PICKLE_PROTOCOL]):
        raise ValueError(
            f"{file} ({ENCODER_KEY}) is a pickle or joblib file: refused without loading it, since unpickling runs "
            f"whatever code the file names. Save the fitted transformer with skops instead: "
            f"`skops.io.dump(encoder, 'encoder.skops')`")
    raise ValueError(f"{file} ({ENCODER_KEY}) is not a skops file (not a zip archive): save the fitted transformer "
                     f"with `skops.io.dump(encoder, 'encoder.skops')`")


def _from_skops(file: Path, trusted: Sequence[str]) -> UserEncoder:
    import skops.io as sio
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    if not zipfile.is_zipfile(file):
        _refuse_pickle(file)
    try:
        untrusted = sio.get_untrusted_types(file=file)
    except Exception as err:  # noqa: BLE001 - any unreadable archive, reported with the file
        raise ValueError(f"{file} ({ENCODER_KEY}) cannot be read as a skops file ({type(err).__name__}: {err}); "
                         f"save it again with skops.io.dump") from err
    refused = [name for name in untrusted if name not in SAFE_TYPES and name not in trusted]
    if refused:
        raise ValueError(
            f"{file} ({ENCODER_KEY}) holds types that skops does not trust: {refused}. It was not loaded. If you "
            f"trust this file and these types, list them: 'dataset.encoder_trusted=[{','.join(refused)}]'")
    encoder = sio.load(file, trusted=list(untrusted))
    if not callable(getattr(encoder, "transform", None)):
        raise ValueError(f"{file} ({ENCODER_KEY}) holds a {type(encoder).__name__}, which has no transform(): save "
                         f"a fitted scikit-learn transformer, e.g. a ColumnTransformer")
    try:
        check_is_fitted(encoder)
    except NotFittedError as err:
        raise ValueError(f"{file} ({ENCODER_KEY}) holds a {type(encoder).__name__} that is not fitted: fit it on "
                         f"your training data before saving it") from err
    names = getattr(encoder, "get_feature_names_out", None)
    return UserEncoder(encoder.transform, f"{ENCODER_KEY}={file}", names if callable(names) else None)


def load_encoder(spec: Any, *, root: Path | None, trusted: Sequence[str] | None = None) -> UserEncoder:
    """The encoder ``dataset.encoder`` names: ``{_target_: ...}`` or a skops file (see the module docstring)."""
    trusted = [] if trusted is None else trusted
    if isinstance(trusted, str) or not all(isinstance(t, str) for t in trusted):
        raise ValueError(f"`dataset.encoder_trusted` must be a list of type names, e.g. [numpy.dtype], got {trusted!r}")
    if isinstance(spec, Mapping) and "_target_" in spec:
        return _from_target(spec)
    if not isinstance(spec, (str, Path)) or not str(spec):
        raise ValueError(f"{ENCODER_KEY}={spec!r} is invalid: expected the path of a fitted transformer saved with "
                         f"skops, or {{_target_: my_pkg.encode}}")
    file = data_file(spec, root)
    if not file.is_file():
        raise DatasetNotFoundError(f"{file} not found: set `{ENCODER_KEY}` (relative to `data_dir` unless absolute) "
                                   f"to your transformer saved with skops.io.dump, or to {{_target_: my_pkg.encode}}")
    return _from_skops(file, trusted)


def _as_matrix(out: Any, describe: str, what: str) -> np.ndarray:
    """The encoder's output as a 2-D float64 array, refusing text and other non-numbers."""
    if hasattr(out, "toarray") and not hasattr(out, "columns"):  # scipy sparse
        out = out.toarray()
    if hasattr(out, "to_numpy"):  # a DataFrame
        out = out.to_numpy()
    array = np.asarray(out)
    if array.ndim != 2:
        raise ValueError(f"{describe} returned an array of shape {array.shape} for {what}; it must return "
                         f"[rows, features]: one row of features per record")
    if array.dtype.kind in "biuf":
        return array.astype(np.float64, copy=False)
    is_number = np.frompyfunc(lambda v: isinstance(v, (int, float, np.number)) and not isinstance(v, bool), 1, 1)
    wrong = ~is_number(array).astype(bool) if array.size else np.zeros(array.shape, dtype=bool)
    if wrong.any():
        row, column = (int(v) for v in np.argwhere(wrong)[0])
        value = array[row, column]
        raise ValueError(
            f"{describe} returned {type(value).__name__} {value!r} at row {row}, column {column} for {what}: it "
            f"must return numbers (encode text columns, e.g. with a OneHotEncoder, or drop them)")
    return array.astype(np.float64)


def encode_table(encoder: UserEncoder, frame: "pd.DataFrame", *, what: str) -> np.ndarray:
    """``encoder``'s features of ``frame`` as float32 ``[rows, F]``, checked (see the module docstring)."""
    try:
        out = encoder.transform(frame)
    except Exception as err:  # noqa: BLE001 - any failure of the user's encoder, reported with the key
        raise ValueError(f"{encoder.describe} fails on {what} ({type(err).__name__}: {err}); it gets the DataFrame "
                         f"of the feature columns {list(frame.columns)[:8]}") from err
    array = _as_matrix(out, encoder.describe, what)
    if len(array) != len(frame):
        raise ValueError(f"{encoder.describe} returned {len(array)} rows for the {len(frame)} records of {what}: it "
                         f"must return one row of features per record, in order")
    features = array.astype(np.float32)
    bad = ~np.isfinite(features)
    if bad.any():
        row, column = (int(v) for v in np.argwhere(bad)[0])
        raise ValueError(f"{encoder.describe} returned {float(array[row, column])!r} at row {row}, column {column} for "
                         f"{what} ({int(bad.any(axis=1).sum())} row(s)): features must be finite numbers within "
                         f"float32's range (impute missing cells in the encoder)")
    return features


def feature_names(encoder: UserEncoder, width: int) -> tuple[str, ...]:
    """The encoder's names of its ``width`` output columns when it has them, else ``()``."""
    if encoder.feature_names is None:
        return ()
    try:
        names = tuple(str(n) for n in encoder.feature_names())
    except Exception:  # noqa: BLE001 - names are a convenience; some transformers cannot give them
        return ()
    return names if len(names) == width else ()


def encode_tables(encoder: UserEncoder, population: "pd.DataFrame", test: "pd.DataFrame", *, numeric: Sequence[str],
                  source: str, test_source: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """The features of the population and test tables (their feature columns only) and their names.

    Columns ``numeric`` (those whose population cells all parse as numbers) are parsed as
    numbers first, as ``pandas.read_csv`` would; rows are numbered from 0. Both tables must
    encode to the same number of features.
    """
    x = encode_table(encoder, _as_read(population, numeric, source), what=f"the population rows of {source}")
    x_test = encode_table(encoder, _as_read(test, numeric, test_source), what=f"the test rows of {test_source}")
    if x.shape[1] != x_test.shape[1]:
        raise ValueError(f"{encoder.describe} returned {x.shape[1]} features for the population rows of {source} but "
                         f"{x_test.shape[1]} for the test rows of {test_source}: it must encode every record alike")
    return x, x_test, feature_names(encoder, x.shape[1])


def _as_read(frame: "pd.DataFrame", numeric: Sequence[str], source: str) -> "pd.DataFrame":
    import pandas as pd

    out = frame.reset_index(drop=True)
    parsed = {}
    for column in numeric:
        values = pd.to_numeric(out[column], errors="coerce")
        bad = values.isna().to_numpy() & out[column].notna().to_numpy()
        if bad.any():
            raise ValueError(f"column `{column}` of {source} holds {out[column][bad].iloc[0]!r}, but it holds numbers "
                             f"in the population: fix the value")
        parsed[column] = values
    return out.assign(**parsed)
