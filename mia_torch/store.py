"""Content-addressed artifact store with atomic writes and verified reads.

An artifact lives in ``<root>/<kind>/<key>/``: a ``payload`` file and a ``meta.json``
that records the payload's SHA-256. ``meta.json`` is written last, so an artifact
without it is an interrupted write and counts as absent. A payload whose checksum does
not match is reported, moved aside (never deleted) and treated as absent, so the caller
rebuilds it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from mia_torch.atomic import atomic_write_bytes

log = logging.getLogger(__name__)


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
    """Inverse of :func:`array_to_bytes`; refuses pickled objects."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def state_dict_to_bytes(state: Mapping[str, torch.Tensor]) -> bytes:
    """Serialise a model state dict (tensors only) for the store."""
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


def state_dict_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``: nothing arbitrary is unpickled."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class ArtifactStore:
    """A directory of immutable, checksummed artifacts keyed by content hashes."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.corrupt: list[Path] = []

    def _dir(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def save(self, kind: str, key: str, payload: bytes, meta: Mapping[str, Any] | None = None) -> Path:
        """Store ``payload`` under ``kind/key`` with ``meta``; returns the artifact folder."""
        folder = self._dir(kind, key)
        atomic_write_bytes(folder / "payload", payload)
        record = {"sha256": hashlib.sha256(payload).hexdigest(), "size": len(payload), "meta": dict(meta or {})}
        atomic_write_bytes(folder / "meta.json", json.dumps(record, indent=1, default=str).encode())
        return folder

    def contains(self, kind: str, key: str) -> bool:
        """Whether a completed artifact exists (not verified; :meth:`load` verifies)."""
        folder = self._dir(kind, key)
        return (folder / "meta.json").is_file() and (folder / "payload").is_file()

    def load(self, kind: str, key: str) -> tuple[bytes, dict[str, Any]] | None:
        """Return ``(payload, meta)`` after verifying the checksum, or None if absent or corrupt."""
        folder = self._dir(kind, key)
        if not self.contains(kind, key):
            return None
        try:
            record = json.loads((folder / "meta.json").read_text())
            payload = (folder / "payload").read_bytes()
            ok = hashlib.sha256(payload).hexdigest() == record["sha256"] and len(payload) == record["size"]
        except (OSError, ValueError, KeyError):
            ok = False
        if ok:
            return payload, record["meta"]
        self._quarantine(folder)
        return None

    def _quarantine(self, folder: Path) -> None:
        aside = folder.with_name(f"{folder.name}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}")
        log.warning("artifact %s failed its checksum: moved to %s and rebuilding it", folder, aside)
        os.replace(folder, aside)
        self.corrupt.append(aside)
