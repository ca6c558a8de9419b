"""Content-addressed artifact store: atomic publication, verified reads, quarantine, locks.

An artifact lives in ``<root>/<kind>/<key>/``: a ``payload`` file and a ``meta.json``
that records the payload's SHA-256. Both are written into a private folder under
``<root>/.staging/`` that is then renamed into place, so an artifact folder appears
complete or not at all, and when two processes publish the same key the first one wins.

A reader trusts nothing it did not verify. A folder that lacks ``meta.json`` or
``payload``, a payload whose checksum does not match, or one that does not decode
(:meth:`ArtifactStore.load` with ``decode``: e.g. a checkpoint that fails
``torch.load(weights_only=True)``, an array that needs pickle) is *corrupt*: it is moved
aside to ``<key>.corrupt-<time>-<id>`` (never deleted), listed in
:attr:`ArtifactStore.corrupt`, and treated as absent, so the caller rebuilds it.

Processes sharing a store coordinate through :meth:`ArtifactStore.lease` (see
:mod:`mia_torch.locks`). Files and folders are created with the process umask, so a store
on a group-writable folder (umask 002) can be shared by a group.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from filelock import SoftFileLease

from mia_torch.atomic import atomic_write_bytes, fsync_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Folder under the store root where artifacts are written before they are renamed into place.
STAGING = ".staging"

__all__ = [
    "ArtifactStore",
    "array_from_bytes",
    "array_to_bytes",
    "digest",
    "state_dict_from_bytes",
    "state_dict_to_bytes",
]


def digest(spec: Mapping[str, Any]) -> str:
    """Stable SHA-256 key of a JSON-serialisable description of an artifact."""
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def array_to_bytes(array: np.ndarray) -> bytes:
    """Serialise a numpy array in ``.npy`` format (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def array_from_bytes(data: bytes) -> np.ndarray:
    """Inverse of :func:`array_to_bytes`; refuses pickled objects and anything but one array."""
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected one .npy array, found {type(array).__name__}")
    return array


def state_dict_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a model state dict (tensors only) for the store."""
    import torch  # here, so that the store itself (and a process that only coordinates) needs no torch

    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


def state_dict_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``: nothing arbitrary is unpickled.

    Raises (``pickle.UnpicklingError``, ``RuntimeError``, ``ValueError``) unless the payload
    is a mapping of names to tensors that loads under ``weights_only``.
    """
    import torch

    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"expected a state dict of tensors, found {type(state).__name__}")
    return dict(state)


def _file_digest(path: Path, *, block: int = 1 << 22) -> tuple[int, str]:
    """Size and SHA-256 of a file, read in blocks."""
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(block):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


class ArtifactStore:
    """A directory of immutable, checksummed artifacts keyed by content hashes.

    ``lease_s`` is how long a lock must be seen unrefreshed before another process takes
    it over (its holder refreshes it every third of that; a holder that died on the same
    host is detected at once); ``poll_s`` is how often a process waiting for another's
    artifact looks again.
    """

    def __init__(self, root: str | Path, *, lease_s: float = 300.0, poll_s: float = 1.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.lease_s = lease_s
        self.poll_s = poll_s
        self.corrupt: list[Path] = []
        self._remove_abandoned_staging()

    def _remove_abandoned_staging(self, *, older_than_s: float = 86400.0) -> None:
        """Delete staging folders left by writers killed mid-write over a day ago (never published)."""
        staging = self.root / STAGING
        if not staging.is_dir():
            return
        for entry in staging.iterdir():
            try:
                if time.time() - entry.stat().st_mtime > older_than_s:
                    shutil.rmtree(entry, ignore_errors=True)
            except FileNotFoundError:
                pass

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def save(self, kind: str, key: str, payload: bytes, meta: Mapping[str, Any] | None = None) -> Path:
        """Publish ``payload`` with ``meta`` as ``kind/key``; returns the artifact folder.

        Written to a staging folder and renamed into place. If a valid artifact already
        exists (another process published it first), that one is kept and this copy
        discarded; a corrupt one there is moved aside and replaced.
        """
        folder = self._dir(kind, key)
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = self.root / STAGING / f"{kind}-{key}-{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        try:
            record = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), "meta": dict(meta or {})}
            atomic_write_bytes(staging / "payload", payload)
            atomic_write_bytes(staging / "meta.json", json.dumps(record, indent=1, default=str).encode())
            for _ in range(3):
                try:
                    os.rename(staging, folder)
                    break
                except OSError as err:
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
                if self.load(kind, key) is not None:  # a corrupt one there is moved aside: then retry
                    log.info("%s/%s was published by another process first: keeping that one", kind, key)
                    return folder
            else:
                raise RuntimeError(f"could not publish {folder}: it keeps reappearing corrupt")
            fsync_dir(folder.parent)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
        return folder

    def payload_path(self, kind: str, key: str) -> Path:
        """Where the payload of ``kind/key`` lies (whether or not it exists yet)."""
        return self._dir(kind, key) / "payload"

    def contains(self, kind: str, key: str) -> bool:
        """Whether a complete artifact exists (not verified; :meth:`load` verifies)."""
        folder = self._dir(kind, key)
        return (folder / "meta.json").is_file() and (folder / "payload").is_file()

    def _verified(self, kind: str, key: str, *, whole: bool) -> tuple[os.stat_result, dict, bytes | None] | None:
        """``(stat of the folder, record, payload)`` of ``kind/key`` after verifying its checksum, or None if absent
        or corrupt (moved aside). ``whole``: read the payload into memory; else hash it in a streaming pass."""
        folder = self._dir(kind, key)
        try:
            seen = os.stat(folder)
        except FileNotFoundError:
            return None
        payload = None
        try:
            record = json.loads((folder / "meta.json").read_text())
            if whole:
                payload = (folder / "payload").read_bytes()
                size, sha = len(payload), hashlib.sha256(payload).hexdigest()
            else:
                size, sha = _file_digest(folder / "payload")
        except FileNotFoundError as err:
            self.quarantine(kind, key, reason=f"incomplete artifact: no {Path(err.filename).name}", seen=seen)
            return None
        except (OSError, ValueError) as err:
            self.quarantine(kind, key, reason=f"unreadable: {err}", seen=seen)
            return None
        if not (isinstance(record, dict) and record.get("size") == size and record.get("sha256") == sha):
            self.quarantine(kind, key, reason="payload does not match its checksum", seen=seen)
            return None
        return seen, record, payload

    def _decoded(self, kind: str, key: str, seen: os.stat_result, decode: Callable[[], T]) -> tuple[T] | None:
        """``(decode(),)``, or None when it raises (the artifact is then moved aside as corrupt)."""
        try:
            return (decode(),)
        except MemoryError:
            raise
        except Exception as err:  # noqa: BLE001 - any decoding failure means a bad payload
            self.quarantine(kind, key, reason=f"payload does not decode ({type(err).__name__}: {err})", seen=seen)
            return None

    def load(
        self, kind: str, key: str, *, decode: Callable[[bytes], T] | None = None
    ) -> tuple[bytes | T, dict[str, Any]] | None:
        """``(payload, meta)`` after verifying the checksum, or None if absent or corrupt.

        With ``decode``, returns ``(decode(payload), meta)``; a payload that ``decode``
        rejects (raises) is corrupt too. ``decode`` must fail only on bad payloads.
        """
        found = self._verified(kind, key, whole=True)
        if found is None:
            return None
        seen, record, payload = found
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        if decode is None:
            return payload, meta
        value = self._decoded(kind, key, seen, lambda: decode(payload))
        return None if value is None else (value[0], meta)

    def open_array(self, kind: str, key: str, *, check: Callable[[np.ndarray], None] | None = None) -> np.ndarray | None:
        """Array artifact ``kind/key`` memory-mapped read-only after verifying its checksum, or None if absent
        or corrupt (moved aside, as :meth:`load` does).

        The payload is hashed in a streaming pass, so a large array is never read into memory
        at once; ``check(array)`` may raise to reject an array (e.g. of the wrong shape).
        Artifacts are immutable once published, so the mapped file is the verified one.
        """
        found = self._verified(kind, key, whole=False)
        if found is None:
            return None

        def mapped() -> np.ndarray:
            array = np.load(self.payload_path(kind, key), mmap_mode="r", allow_pickle=False)
            if check is not None:
                check(array)
            return array

        value = self._decoded(kind, key, found[0], mapped)
        return None if value is None else value[0]

    def quarantine(self, kind: str, key: str, *, reason: str, seen: os.stat_result | None = None) -> Path | None:
        """Move artifact ``kind/key`` aside as corrupt; returns where it went.

        Returns None, without error, when the folder is gone (another process moved it
        aside first) or, given ``seen`` (its ``os.stat`` when it was read), when it has
        been replaced since (another process rebuilt it).
        """
        folder = self._dir(kind, key)
        aside = folder.with_name(f"{key}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}")
        try:
            if seen is not None and not os.path.samestat(seen, os.stat(folder)):
                return None
            os.rename(folder, aside)
        except FileNotFoundError:
            log.info("%s/%s was already moved aside by another process", kind, key)
            return None
        log.warning("artifact %s is corrupt (%s): moved to %s, rebuilding it", folder, reason, aside)
        self.corrupt.append(aside)
        return aside

    def lease(self, kind: str, key: str) -> SoftFileLease:
        """The lock that one process holds while it builds ``kind/key`` (``<key>.lock``, not yet acquired)."""
        path = self._dir(kind, key).with_name(f"{key}.lock")
        path.parent.mkdir(parents=True, exist_ok=True)
        return SoftFileLease(path, lease_duration=self.lease_s, thread_local=False)
