"""The one door through which a config builds objects: every ``_target_`` is checked before Hydra sees it.

``hydra.utils.instantiate`` imports and calls whatever ``_target_`` names (``pathlib.Path.touch``,
``shutil.copyfile``), and it turns a plain string such as ``"${oc.create:{_target_: ...}}"``
back into a config node by resolving it. So mia_torch builds nothing from a config but through
:func:`build` (and :func:`resolve_target` for a callable it calls later), on the exact node
Hydra will receive:

- no string in the node may be an OmegaConf interpolation (``${...}``, escaped ``\\${...}``,
  nested forms) or the missing-value marker ``???`` (:func:`check_plain_data`): a resolved
  config has none, so one left means Hydra would resolve it a second time;
- every ``_target_`` anywhere in the node (``_args_``, nested configs, lists) must pass the
  :class:`TargetPolicy` in effect. A command-line run (:data:`TRUSTED`, the default) builds
  what its user wrote. A replay of a run directory (``mia-reproduce``, :meth:`TargetPolicy.replay`)
  builds only what is defined in mia_torch, reached through mia_torch modules alone, and of a
  kind that may be built there (:data:`KINDS`: a subclass of the kind's base, or what its
  ``accepts`` predicate names), plus the exact strings the user allowed (``--allow-target``);
  nothing else is imported or called;
- what was built must be of the kind the caller asked for (an :class:`~mia_torch.attacks.base.Attack`
  for ``attack.<name>``, a ``torch.nn.Module`` for ``model``).

To make something new buildable from a config, add its :class:`Kind` to :data:`KINDS` and build
it with ``build(node, kind=..., key=...)`` (or take the callable with ``resolve_target``).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

__all__ = [
    "KINDS", "PACKAGE", "TRUSTED", "Kind", "TargetPolicy", "UnsafeConfigError", "active_policy", "bound_callable",
    "build",
    "check_plain_data", "check_targets", "find_targets", "is_package_target", "policy_in_effect", "resolve_target",
]

#: The package whose classes a replayed config may build without being allowed explicitly.
PACKAGE = "mia_torch"
#: OmegaConf's missing-value marker: reading it raises instead of giving a value.
MISSING_MARKER = "???"
_LISTED = 6


class UnsafeConfigError(ValueError):
    """A config would build or resolve something it may not (the message names the key)."""


def _load(spec: str) -> Any:
    """The object ``"module:name"`` names (the module imported now)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Kind:
    """What a config may build at one place.

    ``base`` (``"module:Class"``, imported on use) is the class of every object built as this
    kind, and of the mia_torch classes a replay may build; ``None`` marks a plain callable
    (a function the caller calls later). ``accepts`` (``"module:predicate"``, optional) names a
    function that says which other objects defined in mia_torch a replay may build as this kind
    (e.g. registered loader functions). ``what`` names the kind in messages (``"an Attack"``)
    and ``hint`` says how to make one.
    """

    name: str
    base: str | None
    what: str
    hint: str
    accepts: str | None = None

    def base_class(self) -> type | None:
        """The class behind :attr:`base` (imported now), or None for a plain callable."""
        return None if self.base is None else _load(self.base)

    def includes(self, obj: Any) -> bool:
        """Whether ``obj``, found in mia_torch, may be built as this kind by a replay."""
        base = self.base_class()
        if base is not None and inspect.isclass(obj) and issubclass(obj, base):
            return True
        return self.accepts is not None and bool(_load(self.accepts)(obj))


#: Every kind of object a config builds, in one place: add a kind here to make it buildable.
KINDS: dict[str, Kind] = {kind.name: kind for kind in (
    Kind("model", "torch.nn:Module", "a torch.nn.Module",
         "use a torch.nn.Module class such as mia_torch.models.MLP"),
    Kind("attack", "mia_torch.attacks.base:Attack", "an Attack",
         "subclass mia_torch.attacks.base.Attack and implement score(logits, labels)"),
    Kind("dataset", "mia_torch.data.loader:DatasetLoader", "a DatasetLoader",
         "subclass mia_torch.data.loader.DatasetLoader and implement load(*, root, download, seed, **options)"),
    Kind("defense", "mia_torch.training.defense:Defense", "a Defense",
         "subclass mia_torch.training.defense.Defense (a dataclass) and override train(model, x, y, member_idx, "
         "cfg, *, seed, ...)"),
    Kind("callback", "hydra.experimental.callback:Callback", "a Hydra callback",
         "subclass hydra.experimental.callback.Callback"),
    Kind("preprocess", None, "a function", "name an importable function that maps the inputs"),
    Kind("encoder", None, "a function",
         "name an importable function that maps the DataFrame of the feature columns to features [rows, F]"),
)}


@dataclass(frozen=True)
class TargetPolicy:
    """Which ``_target_`` a config may build.

    ``trusted``: the user's own config (a command-line run): any importable target. Otherwise
    (a config read from a run directory, named by ``source``) only mia_torch classes of a
    registered kind and the exact strings in ``allowed``, which the user gives with ``flag``.
    """

    trusted: bool = True
    allowed: frozenset[str] = field(default_factory=frozenset)
    source: str = "the config"
    flag: str = "--allow-target"

    @classmethod
    def replay(cls, allowed: Iterable[str] = (), *, source: str, flag: str = "--allow-target") -> "TargetPolicy":
        """The policy of a replayed run directory: mia_torch's classes plus ``allowed``."""
        return cls(trusted=False, allowed=frozenset(allowed), source=source, flag=flag)

    def permits(self, target: Any, kinds: Iterable[Kind]) -> bool:
        """Whether ``target`` (a ``_target_`` value) may be built as one of ``kinds``; imports nothing outside
        mia_torch unless trusted."""
        if self.trusted:
            return True
        if not isinstance(target, str):
            return False
        return target in self.allowed or is_package_target(target, kinds)


#: The policy of a command-line run: the user's own config builds what it names.
TRUSTED = TargetPolicy()
_in_effect: list[TargetPolicy] = [TRUSTED]


def active_policy() -> TargetPolicy:
    """The policy :func:`build` applies when given none (:data:`TRUSTED` outside :func:`policy_in_effect`)."""
    return _in_effect[-1]


@contextlib.contextmanager
def policy_in_effect(policy: TargetPolicy) -> Iterator[TargetPolicy]:
    """Apply ``policy`` to every build in the block (process-wide, so threads see it too)."""
    depth = len(_in_effect)
    _in_effect.append(policy)
    try:
        yield policy
    finally:
        del _in_effect[depth:]


# ---------------------------------------------------------------- plain data


def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(key path, value)`` of every key and leaf of nested mappings and lists (keys as ``path.<key>``)."""
    if isinstance(node, Mapping):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            yield f"{path} (a key)", key
            yield from _walk(value, path)
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _walk(value, f"{prefix}[{index}]")
    else:
        yield prefix, node


def omegaconf_special(value: Any) -> bool:
    """Whether OmegaConf would not take ``value`` as it is: an interpolation or resolver call (any string
    holding ``${``, escaped or nested forms included: OmegaConf's own test) or the missing marker ``???``."""
    return isinstance(value, str) and ("${" in value or value == MISSING_MARKER)


def check_plain_data(node: Any, *, source: str) -> None:
    """Refuse, naming each key, every string in ``node`` that OmegaConf would interpolate, resolve or treat as
    missing (see :func:`omegaconf_special`); nothing is resolved to decide."""
    try:
        found = [(path, value) for path, value in _walk(node) if omegaconf_special(value)]
    except RecursionError as err:
        raise UnsafeConfigError(f"{source} is nested too deeply to be a config") from err
    if found:
        listed = "; ".join(f"{path}: {value!r}"[:200] for path, value in found[:_LISTED])
        more = f" (+{len(found) - _LISTED} more)" if len(found) > _LISTED else ""
        raise UnsafeConfigError(
            f"{source} holds OmegaConf interpolations or markers ({listed}{more}). A config read from a run "
            "directory is data: interpolations and resolver calls (${...}, escaped \\${...}) are refused, never "
            "resolved, since resolving one can build and call code. A run's recorded config (results.json) holds "
            "none; edit the value into a plain one if you wrote it yourself"
        )


# ---------------------------------------------------------------- targets


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


def is_package_target(target: str, kinds: Iterable[Kind] | None = None) -> bool:
    """Whether dotted ``target`` resolves, through mia_torch modules only, to an object defined in mia_torch that
    one of ``kinds`` includes (default: any registered kind). Imports nothing outside mia_torch."""
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
    if isinstance(obj, ModuleType) or not _in_package(getattr(obj, "__module__", None) or ""):
        return False
    return any(kind.includes(obj) for kind in (KINDS.values() if kinds is None else kinds))


def _refuse_targets(refused: list[tuple[str, Any]], policy: TargetPolicy) -> UnsafeConfigError:
    listed = "; ".join(f"{path}: {value!r}" for path, value in refused)
    kinds = ", ".join(k.name + "s" for k in KINDS.values() if k.base is not None or k.accepts is not None)
    return UnsafeConfigError(
        f"{policy.source} names code other than {PACKAGE}'s {kinds} ({listed}). Only those are built from a "
        f"config read from a run directory, since building a _target_ calls it. If you trust this directory and "
        f"the code it names, allow each one explicitly: "
        + " ".join(f"{policy.flag} {value}" for _, value in refused if isinstance(value, str))
    )


def check_targets(config: Any, *, allowed: Iterable[str] = (), source: str = "the config",
                  flag: str = "--allow-target") -> None:
    """Raise :class:`UnsafeConfigError` naming the keys unless a replay may build every ``_target_`` in ``config``.

    ``config`` is plain data. A ``_target_`` passes when it is a mia_torch class of a registered
    kind (:func:`is_package_target`) or one of the ``allowed`` strings; ``source`` (where the config
    came from) and ``flag`` (how the user allows a target) appear in the message. :func:`build`
    checks the same again on each node it builds, with the kind expected there.
    """
    policy = TargetPolicy.replay(allowed, source=source, flag=flag)
    refused = [(path, value) for path, value in find_targets(config) if not policy.permits(value, KINDS.values())]
    if refused:
        raise _refuse_targets(refused, policy)


def _checked_node(node: Any, *, kind: Kind, key: str, policy: TargetPolicy) -> dict[str, Any]:
    """``node`` as the plain dict Hydra will receive, after every check of :func:`build`."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(node, DictConfig):  # a trusted config resolves as its user wrote it; an untrusted one never
        node = OmegaConf.to_container(node, resolve=policy.trusted)
    if not isinstance(node, Mapping) or "_target_" not in node:
        raise ValueError(f"{key} has no _target_: set {key}._target_ to {kind.what} class, e.g. "
                         f"+{key}._target_=my_package.MyClass")
    check_plain_data(node, source=f"{key} of {policy.source}")
    refused = [(f"{key}.{path}", value) for path, value in find_targets(node)
               if not policy.permits(value, [kind] if path == "_target_" else KINDS.values())]
    if refused:
        raise _refuse_targets(refused, policy)
    return dict(node)


def _target_of(plain: Mapping[str, Any], key: str) -> Any:
    import hydra

    try:
        return hydra.utils.get_object(str(plain["_target_"]))
    except Exception as err:  # noqa: BLE001 - re-raised naming the key
        raise ValueError(f"{key}._target_={plain['_target_']!r} cannot be imported: {err}") from err


def resolve_target(node: Any, *, kind: str, key: str, policy: TargetPolicy | None = None) -> Any:
    """The class or function that ``node``'s ``_target_`` names, after the checks of :func:`build`; nothing is
    called (e.g. to read its signature, or to call it later with data)."""
    return _target_of(_checked_node(node, kind=KINDS[kind], key=key, policy=policy or active_policy()), key)


def bound_callable(node: Any, *, kind: str, key: str, policy: TargetPolicy | None = None) -> Any:
    """The function ``node``'s ``_target_`` names (:func:`resolve_target`), with ``node``'s other keys bound as
    keyword arguments: what a config names to be called later with data. Refused naming ``key`` when it is not
    callable."""
    plain = _checked_node(node, kind=KINDS[kind], key=key, policy=policy or active_policy())
    fn = _target_of(plain, key)
    if not callable(fn):
        raise ValueError(f"{key}._target_={plain['_target_']!r} names a {type(fn).__name__}, not a function: "
                         f"{KINDS[kind].hint}")
    kwargs = {k: v for k, v in plain.items() if k != "_target_"}
    return functools.partial(fn, **kwargs) if kwargs else fn


def build(node: Any, *, kind: str, key: str, policy: TargetPolicy | None = None, **kwargs: Any) -> Any:
    """Instantiate config ``node`` (at config key ``key``) as a ``kind`` from :data:`KINDS`, the one guarded
    ``hydra.utils.instantiate`` of mia_torch.

    ``policy`` defaults to the one in effect (:func:`active_policy`). Refuses, naming the key: a
    node without ``_target_``, interpolation strings anywhere in it, any ``_target_`` in it the
    policy does not permit, a build that fails, and a result that is not of the kind. ``kwargs``
    are passed on to the target (e.g. the data's ``input_shape``).
    """
    import hydra

    spec = KINDS[kind]
    plain = _checked_node(node, kind=spec, key=key, policy=policy or active_policy())
    check_plain_data(kwargs, source=f"the arguments given to {key}")
    try:
        built = hydra.utils.instantiate(plain, **kwargs)
    except Exception as err:  # noqa: BLE001 - re-raised naming the key, with the constructor's own message
        cause = err.__cause__ if isinstance(err.__cause__, (TypeError, ValueError)) else err
        raise ValueError(f"{key} cannot be built: {cause}") from err
    base = spec.base_class()
    if base is not None and not isinstance(built, base):
        raise ValueError(f"{key}._target_={plain['_target_']} builds a {type(built).__module__}."
                         f"{type(built).__qualname__}, which is not {spec.what}: {spec.hint}")
    return built
