"""Record ids given in the config: a list, one id, or a file (``.npy``, or text with one id per line)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["read_ids"]


def _from_file(path: Path, key: str) -> np.ndarray:
    if not path.is_file():
        raise ValueError(f"{key}={str(path)!r}: no such file (give a list of ids, or a .npy / text file of ids)")
    try:
        if path.suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            values = np.array(path.read_text().replace(",", " ").split(), dtype=np.float64)
    except ValueError as err:
        raise ValueError(f"{key}: {path} does not hold integer ids ({err})") from err
    return np.asarray(values).reshape(-1)


def read_ids(value: Any, *, key: str, population_size: int, data_dir: Path | None = None) -> np.ndarray:
    """Sorted, distinct int64 population indices from ``value``; errors name ``key``.

    ``value`` is an int, a list of ints, or a path (relative paths under ``data_dir`` when
    the file is not found as given) to a ``.npy`` array or a text file of ids separated by
    whitespace or commas. Every id must lie in ``[0, population_size)``.
    """
    if isinstance(value, (str, Path)):
        path = Path(value).expanduser()
        if not path.is_file() and not path.is_absolute() and data_dir is not None:
            path = Path(data_dir) / path
        raw = _from_file(path, key)
    elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        raw = np.array([value])
    elif isinstance(value, Sequence):
        raw = np.asarray(list(value), dtype=object)
    else:
        raise ValueError(f"{key}={value!r} is invalid: expected an id, a list of ids, or a file of ids")
    try:
        as_float = raw.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: ids must be integers, got {raw[:5].tolist()}") from err
    if raw.size == 0:
        raise ValueError(f"{key} is empty: give at least one record id")
    if not np.all(np.isfinite(as_float)) or not np.all(as_float == np.round(as_float)):
        raise ValueError(f"{key}: ids must be integers, got {raw[:5].tolist()}")
    ids = as_float.astype(np.int64)
    bad = ids[(ids < 0) | (ids >= population_size)]
    if bad.size:
        raise ValueError(f"{key}: ids {bad[:8].tolist()} are outside the population [0, {population_size})")
    unique = np.unique(ids)
    if unique.size != ids.size:
        raise ValueError(f"{key}: ids are repeated ({ids.size - unique.size} duplicates)")
    return unique
