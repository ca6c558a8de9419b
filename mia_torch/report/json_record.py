"""Dataclasses that write themselves to JSON and read themselves back, by their annotations."""
from __future__ import annotations

import math
import types
import typing
from dataclasses import MISSING, fields
from typing import Any, Mapping

import numpy as np

__all__ = ["Record"]


def _dump(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _dump(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_dump(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def _load(tp: Any, value: Any, path: str) -> Any:
    """Convert JSON ``value`` to the annotated type ``tp``; errors name ``path``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _load(inner, value, path)
    if isinstance(tp, type) and issubclass(tp, Record):
        return tp.from_dict(value, path=path)
    if origin in (list, tuple) and not isinstance(value, list):
        raise ValueError(f"{path}: expected a list, got {type(value).__name__}")
    if origin is list:
        return [_load(args[0], v, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if len(value) != len(args):
            raise ValueError(f"{path}: expected {len(args)} values, got {len(value)}")
        return tuple(_load(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(value).__name__}")
        return {_load_key(args[0], k, path): _load(args[1], v, f"{path}.{k}") for k, v in value.items()}
    if tp is float:
        if value is None:  # non-finite numbers are written as null
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool):
        try:
            return tp(value)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{path}: expected {tp.__name__}, got {value!r}") from err
    raise TypeError(f"{path}: cannot read type {tp!r}")


def _load_key(tp: Any, key: Any, path: str) -> Any:
    """A mapping key: JSON writes every key as a string."""
    try:
        return key if tp in (str, Any) else tp(key)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: key {key!r} is not a {tp.__name__}") from err


class Record:
    """Mixin for the result dataclasses: ``to_dict`` for JSON, ``from_dict`` to read it back.

    Fields are written under their own names; a field with ``metadata={"json": False}``
    (e.g. a ROC curve) stays in memory only. ``from_dict`` converts each value to its
    annotated type, uses the field's default when a key is absent, ignores unknown keys
    and raises ``ValueError`` naming the missing or malformed key.
    """

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict (see :func:`mia_torch.report.json_file.write_json`)."""
        return {f.name: _dump(getattr(self, f.name)) for f in fields(self) if f.metadata.get("json", True)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, path: str = "") -> Any:
        """Inverse of :meth:`to_dict`; ``path`` names ``data`` in error messages."""
        path = path or cls.__name__
        if not isinstance(data, Mapping):
            raise ValueError(f"{path}: expected a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for f in fields(cls):
            if not f.init or not f.metadata.get("json", True):
                continue
            if f.name in data:
                kwargs[f.name] = _load(hints[f.name], data[f.name], f"{path}.{f.name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise ValueError(f"{path}: missing key {f.name!r}")
        return cls(**kwargs)
