"""Checks shared by the config dataclasses: unknown keys and invalid values, named by their full key.

Dependency-free, so that any config module (``train.augment`` in :mod:`mia_torch.data.augment`
included) can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

__all__ = ["check_values", "known_keys"]


def known_keys(values: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    """``values`` as a dict, refusing keys that are not fields of the dataclass ``cls``, e.g. ``train.augment.cutot``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; valid keys: {sorted(known)}")
    return dict(values)


def check_values(config: Any, prefix: str, checks: Iterable[tuple[bool, str, str]]) -> None:
    """Raise on the first ``(ok, key, expected)`` that is not ok, naming ``{prefix}.{key}`` and its value."""
    for ok, key, expected in checks:
        if not ok:
            raise ValueError(f"{prefix}.{key}={getattr(config, key)!r} is invalid: expected {expected}")
