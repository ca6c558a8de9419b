"""``results.json`` writing (atomic, strict JSON) and reading."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.atomic import atomic_open

__all__ = ["to_jsonable", "write_json", "read_json"]


def _key(k: Any) -> str:
    if isinstance(k, str):
        return k
    if isinstance(k, np.generic):
        k = k.item()
    if isinstance(k, bool):
        return "true" if k else "false"
    if k is None:
        return "null"
    return str(k)


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types (dict, list, str, int, float, bool, None).

    Handles numpy scalars and arrays, torch tensors, tuples and sets, paths, dataclasses
    and mappings with non-string keys. Non-finite floats (NaN, +-inf) become ``None`` so
    the output is strict JSON. Raises ``TypeError`` for anything else.
    """
    if obj is None or isinstance(obj, (str, bool)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(obj, torch.Tensor):
        return to_jsonable(obj.detach().cpu().tolist())
    if isinstance(obj, Mapping):
        return {_key(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(obj, key=repr)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    raise TypeError(f"cannot convert object of type {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Atomically write ``obj`` as JSON to ``path`` after :func:`to_jsonable` conversion.

    The file is written to a temporary name in the same directory, fsync'ed and renamed,
    so ``path`` holds either the old or the complete new content. Returns ``path``.
    """
    text = json.dumps(to_jsonable(obj), indent=indent, allow_nan=False, sort_keys=False)
    with atomic_open(path, "w") as f:
        f.write(text)
        f.write("\n")
    return Path(path)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file written by :func:`write_json` (plain ``json.load``)."""
    with open(path, encoding="utf-8") as f:
        return json.load(f)
