"""Build each missing artifact once, even when several processes share one store.

Two runs on one store (two terminals, a cluster array) must not train the same model
twice. Before building an artifact, a process takes its lock: ``<kind>/<key>.lock``,
created atomically with ``O_CREAT | O_EXCL`` (which works on NFS as well as on a local
disk) and holding the owner's pid, host and process start time. The lock is a lease
(:class:`filelock.SoftFileLease`): its holder refreshes it from a background thread, and
another process takes it over only when it has seen it unrefreshed for
``ArtifactStore.lease_s`` seconds (measured on its own clock, so clock skew between
hosts does not matter) or, on the same host, as soon as the owner process is gone. A
lock file left empty (its creator killed between creating it and writing its record,
which filelock takes for a live holder of an old filelock version and never breaks) is
removed once it has stayed empty for ``lease_s`` seconds.

:func:`build_missing` works in groups (models train ``parallel_models`` at a time): it
locks up to ``group`` missing artifacts that no one else holds, builds them, releases the
locks (also on error), and repeats; when everything left is held by others it waits for
their artifacts and loads them. Locks only prevent duplicate work: publication itself is
atomic and first-come (:meth:`ArtifactStore.save`), so even a lock taken over from a live
but stalled holder can never corrupt the store.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from filelock import Timeout

from mia_torch.store import ArtifactStore

log = logging.getLogger(__name__)

Item = TypeVar("Item", bound=Hashable)

__all__ = ["BuildOutcome", "build_missing"]


@dataclass
class BuildOutcome(Generic[Item]):
    """``meta`` of every item; which ones this process ``built`` and which it found ``reused``; with
    ``keep_values``, every item's decoded payload in ``values``."""

    meta: dict[Item, dict[str, Any]] = field(default_factory=dict)
    built: list[Item] = field(default_factory=list)
    reused: list[Item] = field(default_factory=list)
    values: dict[Item, Any] = field(default_factory=dict)


def build_missing(
    store: ArtifactStore,
    kind: str,
    keys: Mapping[Item, str],
    build: Callable[[list[Item]], object],
    *,
    group: int = 1,
    decode: Callable[[bytes], object] | None = None,
    on_built: Callable[[int], object] | None = None,
    keep_values: bool = False,
) -> BuildOutcome[Item]:
    """Make sure artifact ``kind/keys[item]`` exists for every item; build only what is missing.

    ``build(items)`` must save the artifacts of ``items`` (at most ``group`` of them) to
    ``store``; it runs only while this process holds their locks. Artifacts are verified
    with ``decode`` (see :meth:`ArtifactStore.load`); corrupt ones are moved aside and
    rebuilt. Items another process is building are waited for and then reused.
    ``on_built(n)`` is called after each group (e.g. to advance a progress bar). With
    ``keep_values``, the payloads decoded by these checks are kept in ``values``, so the
    caller need not load them again (off by default: models are not held in memory).
    """
    outcome: BuildOutcome[Item] = BuildOutcome()

    def pick_up(item: Item) -> bool:
        found = store.load(kind, keys[item], decode=decode)
        if found is not None:
            outcome.meta[item] = found[1]
            if keep_values:
                outcome.values[item] = found[0]
        return found is not None

    pending = [item for item in keys if not pick_up(item)]
    outcome.reused.extend(item for item in keys if item in outcome.meta)
    leases = {item: store.lease(kind, keys[item]) for item in pending}
    announced: set[Item] = set()
    empty_since: dict[Path, tuple[tuple[int, int], float]] = {}
    while pending:
        claimed = _claim(pending, leases, group=group, pick_up=pick_up, outcome=outcome)
        pending = [item for item in pending if item not in outcome.meta and item not in claimed]
        if claimed:
            try:
                build(claimed)
            finally:
                for item in claimed:
                    leases[item].release()
            for item in claimed:
                if not pick_up(item):
                    raise RuntimeError(f"building {kind} {item!r} did not store it under {keys[item]}")
                outcome.built.append(item)
            if on_built is not None:
                on_built(len(claimed))
            continue
        for item in pending:
            if item not in announced:
                owner = leases[item].owner
                holder = (f"pid {owner.pid} on {owner.hostname}" if owner is not None else
                          f"another process (or none: an empty lock is removed after {store.lease_s:g} s)")
                log.info("%s %r is being built by %s: waiting for it", kind, item, holder)
                announced.add(item)
            _remove_if_left_empty(Path(leases[item].lock_file), empty_since, after_s=store.lease_s)
        time.sleep(store.poll_s)
        pending = [item for item in pending if not (store.contains(kind, keys[item]) and _reuse(item, pick_up, outcome))]
    return outcome


def _reuse(item: Item, pick_up: Callable[[Item], bool], outcome: BuildOutcome[Item]) -> bool:
    if pick_up(item):
        outcome.reused.append(item)
        return True
    return False


def _claim(
    pending: list[Item],
    leases: Mapping[Item, Any],
    *,
    group: int,
    pick_up: Callable[[Item], bool],
    outcome: BuildOutcome[Item],
) -> list[Item]:
    """Lock up to ``group`` pending items that nobody else holds and that are still missing."""
    claimed: list[Item] = []
    for item in pending:
        if len(claimed) == group:
            break
        try:
            leases[item].acquire(blocking=False)
        except Timeout:
            continue
        if _reuse(item, pick_up, outcome):  # finished while we looked
            leases[item].release()
            continue
        claimed.append(item)
    return claimed


def _remove_if_left_empty(path: Path, empty_since: dict[Path, tuple[tuple[int, int], float]], *,
                          after_s: float) -> None:
    """Remove the lock file ``path`` once this process has seen it empty and unchanged for ``after_s`` seconds.

    A live holder writes its record right after creating the file and refreshes it, so a
    file that stays empty for a whole lease belongs to a process killed in between.
    ``empty_since`` remembers when each empty file was first seen. Should another process
    recreate the lock in the instant between the check and the removal, its file is put
    back; at worst an artifact is built twice, which the store's first-come publication
    tolerates.
    """
    try:
        stat = path.stat()
    except FileNotFoundError:
        empty_since.pop(path, None)
        return
    identity, now = (stat.st_ino, stat.st_mtime_ns), time.monotonic()
    if stat.st_size:
        empty_since.pop(path, None)
        return
    if path not in empty_since or empty_since[path][0] != identity:
        empty_since[path] = (identity, now)
        return
    if now - empty_since[path][1] < after_s:
        return
    aside = path.with_name(f"{path.name}.empty.{os.getpid()}")
    try:
        os.rename(path, aside)
    except FileNotFoundError:
        return
    moved = aside.stat()
    if (moved.st_ino, moved.st_mtime_ns, moved.st_size) != (*identity, 0):  # not the file we saw: put it back
        with contextlib.suppress(FileExistsError):
            os.link(aside, path)
    else:
        log.warning("removed the lock %s, left empty for %.0f s by a process killed while taking it", path,
                    now - empty_since[path][1])
    aside.unlink()
    empty_since.pop(path, None)
