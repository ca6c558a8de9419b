"""Checks shared by the config dataclasses: unknown keys and invalid values, named by their full key.

Dependency-free, so that any config module (``train.augment`` in :mod:`mia_torch.data.mixing`
included) can use it without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

__all__ = ["known_keys"]


def known_keys(values: Mapping[str, Any], cls: type, prefix: str) -> dict[str, Any]:
    """``values`` as a dict, refusing keys that are not fields of the dataclass ``cls``, e.g. ``train.augment.cutot``."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(f'{prefix}.{k}' for k in unknown)}; valid keys: {sorted(known)}")
    return dict(values)

