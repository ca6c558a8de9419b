"""Refuse configs whose ``_target_`` would make Hydra call code outside mia_torch.

A config read from a run directory (``mia-reproduce <run_dir>``) is untrusted input:
``hydra.utils.instantiate`` calls whatever ``_target_`` names, e.g. ``pathlib.Path.touch``
or ``os.system``. :func:`check_targets` walks the whole config and accepts a
``_target_`` only when it names a model, attack or Hydra callback class defined in a
``mia_torch`` module, reached through ``mia_torch`` modules alone (so
``mia_torch.atomic.os.system`` is refused), or when the user allowed that exact string
explicitly. Nothing outside ``mia_torch`` is imported to decide. Functions and other
classes are refused even inside ``mia_torch``: a config only ever builds models, attacks
and callbacks, while a function such as ``mia_torch.atomic.atomic_write_bytes`` would
write any file it is given and ``mia_torch.store.ArtifactStore`` creates a folder.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from types import ModuleType
from typing import Any

from hydra.experimental.callback import Callback
from torch import nn

from mia_torch.attacks.base import Attack

__all__ = ["PACKAGE", "UnsafeConfigError", "check_targets", "find_targets", "is_package_class"]

#: The package whose classes a config may build without being allowed explicitly.
PACKAGE = "mia_torch"
#: What a config builds: models, attacks and Hydra callbacks (the sweep summaries).
BUILDABLE = (nn.Module, Attack, Callback)


class UnsafeConfigError(ValueError):
    """A config names a ``_target_`` that is neither a mia_torch class nor explicitly allowed."""


def find_targets(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every ``(key path, value)`` of a ``_target_`` key in nested mappings and lists."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            if key == "_target_":
                yield path, value
            else:
                yield from find_targets(value, path)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from find_targets(value, f"{prefix}[{index}]")


def _in_package(module_name: str) -> bool:
    """Whether ``module_name`` is mia_torch or one of its submodules."""
    return module_name == PACKAGE or module_name.startswith(PACKAGE + ".")


def is_package_class(target: str) -> bool:
    """Whether dotted ``target`` resolves, through mia_torch modules only, to a model, attack or callback
    class (:data:`BUILDABLE`) defined in mia_torch."""
    parts = target.split(".")
    if parts[0] != PACKAGE or not all(part.isidentifier() for part in parts):
        return False
    obj: Any = importlib.import_module(PACKAGE)
    for part in parts[1:]:
        if not (isinstance(obj, ModuleType) and _in_package(obj.__name__)):
            return False  # only mia_torch modules may be walked through
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(f"{obj.__name__}.{part}")
        except ImportError:
            return False
    return (inspect.isclass(obj) and issubclass(obj, BUILDABLE)
            and _in_package(getattr(obj, "__module__", None) or ""))


def check_targets(config: Any, *, allowed: Iterable[str] = (), source: str = "the config",
                  flag: str = "--allow-target") -> None:
    """Raise :class:`UnsafeConfigError` naming the key unless every ``_target_`` in ``config`` is acceptable.

    ``config`` is a plain (resolved) mapping. A ``_target_`` is acceptable when it is a
    class defined in mia_torch (see :func:`is_package_class`) or equal to one of the
    ``allowed`` strings. ``source`` (where the config came from) and ``flag`` (how the
    user allows a target) appear in the error message.
    """
    allowed = set(allowed)
    refused = [(path, value) for path, value in find_targets(config)
               if not (isinstance(value, str) and (value in allowed or is_package_class(value)))]
    if refused:
        listed = "; ".join(f"{path}: {value!r}" for path, value in refused)
        raise UnsafeConfigError(
            f"{source} names code other than {PACKAGE}'s models, attacks and callbacks ({listed}). Only those "
            f"are built from a config read from a run directory, since building a _target_ calls it. If you trust this "
            f"directory and the code it names, allow each one explicitly: "
            + " ".join(f"{flag} {value}" for _, value in refused if isinstance(value, str))
        )
