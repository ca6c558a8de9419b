"""Digests that key stored artifacts by what determines them: the data as loaded and the code.

A trained model is a function of its data, its configuration and the code that trained
it; its logits additionally of the code that queried it. The store keys artifacts by
digests of exactly these, so a change to any of them makes a new key (the artifact is
rebuilt) and nothing else does:

- :func:`dataset_digest`: SHA-256 of the dataset's tensors as loaded (population and
  test images and labels, byte for byte) and its other fields (``num_classes``, ...).
  Computed once per loaded dataset, on the CPU, before the data moves to the device.
- :func:`code_digest`: SHA-256 of the source files listed in :data:`ARTIFACT_CODE`.
  Editing any covered file, or adding a file to a covered sub-package, changes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from mia_torch.data.datasets import Dataset

__all__ = ["ARTIFACT_CODE", "CodeScope", "PACKAGE_DIR", "code_digest", "dataset_digest", "tensor_digest"]

#: The installed ``mia_torch`` package directory (covered files are relative to it).
PACKAGE_DIR = Path(__file__).resolve().parent


@dataclass(frozen=True)
class CodeScope:
    """Source files as glob patterns relative to the package: ``include`` minus ``exclude``."""

    include: tuple[str, ...]
    exclude: tuple[str, ...] = ()


#: The code that determines each kind of stored artifact, in one place.
#:
#: ``models``: the trainer and everything it calls (``training/``: single and multi-model
#: training, optimizers, schedules, defenses), the architectures (``models/``) and the
#: training augmentation (``data/``). Whole sub-packages are covered, so a new module
#: there counts without being listed. Modules of ``data/`` whose product the key already
#: holds are left out: ``datasets.py`` (the tensors' container), ``loader.py`` (loading
#: and subsetting) and the loaders ``torchvision_sets.py``, ``builtin.py``, ``npz.py`` and
#: ``tabular.py`` with ``csv_cells.py`` and ``user_encoder.py`` (the key holds the digest of
#: the loaded tensors), and ``splits.py`` (the key holds the keep row). A new loader module
#: belongs on that list (a test checks every ``DatasetLoader`` of the package); a new
#: augmentation module must not be.
#:
#: ``signals``: the query code (``signals/``: logit collection and any served-output
#: transform applied before storing) on top of the model's own key, which a signal key
#: includes. ``signals/stats.py``, ``features.py``, ``source.py`` and ``manifest.py`` are left
#: out: they read stored logits and derive statistics from them.
#:
#: ``attack_scores``: a sharded attack stage's stored scores (``stage=attack``) on top of the
#: signal keys they read: the attacks, the features and served outputs they read, and the
#: stage that fits them, so a merge never mixes scores of two versions of that code.
#:
#: Both cover ``compute.py``, the evaluation batch size and autocast policy that training
#: and querying share.
#:
#: Not covered, on purpose: ``attacks/``, ``metrics/``, ``report/`` and ``evaluation.py``
#: read stored artifacts and never change a model or its logits, so editing them reuses
#: every model. ``pipeline.py`` is not covered either (it mostly wires attacks and the
#: report); the values it feeds training (seed, keep row, configs) are in the key by value,
#: so training logic belongs in ``training/`` where it counts.
ARTIFACT_CODE: dict[str, CodeScope] = {
    "models": CodeScope(
        include=("training/**/*.py", "models/**/*.py", "data/**/*.py", "compute.py"),
        exclude=(
            "data/datasets.py", "data/loader.py", "data/torchvision_sets.py", "data/builtin.py", "data/npz.py",
            "data/tabular.py", "data/csv_cells.py", "data/user_encoder.py", "data/splits.py",
        ),
    ),
    "signals": CodeScope(
        include=("signals/**/*.py", "compute.py"),
        exclude=("signals/stats.py", "signals/features.py", "signals/source.py", "signals/manifest.py"),
    ),
    "attack_scores": CodeScope(include=("attacks/**/*.py", "signals/**/*.py", "stages/attacks.py",
                                        "stages/attack_runs.py")),
}

_CHUNK = 1 << 24  # bytes hashed per task: large enough to amortise, small enough to spread over threads
_code_cache: dict[tuple[Any, ...], str] = {}


def covered_files(scope: CodeScope, *, root: Path | None = None) -> list[Path]:
    """The files ``scope`` covers under ``root`` (default: the package), sorted."""
    root = Path(root or PACKAGE_DIR)
    excluded = {root / pattern for pattern in scope.exclude}
    found = {p for pattern in scope.include for p in root.glob(pattern) if p.is_file()}
    return sorted(found - excluded)


def code_digest(kind: str, *, root: Path | None = None) -> str:
    """SHA-256 of the source that determines artifacts of ``kind`` (see :data:`ARTIFACT_CODE`).

    Hashes each covered file's path (relative to ``root``) and bytes, so editing, adding,
    removing or renaming a covered file changes the digest. The result is cached per file
    list, sizes and modification times, so repeated calls cost a few ``stat`` calls.
    """
    root = Path(root or PACKAGE_DIR)
    files = covered_files(ARTIFACT_CODE[kind], root=root)
    if not files:
        raise RuntimeError(f"no source files found for {kind!r} artifacts under {root}: is mia_torch installed?")
    stats = tuple((str(p), st.st_mtime_ns, st.st_size) for p in files for st in [p.stat()])
    signature = (kind, str(root), ARTIFACT_CODE[kind], stats)
    if signature not in _code_cache:
        h = hashlib.sha256()
        for path in files:
            h.update(path.relative_to(root).as_posix().encode() + b"\0")
            data = path.read_bytes()
            h.update(len(data).to_bytes(8, "little") + data)
        _code_cache[signature] = h.hexdigest()
    return _code_cache[signature]


def tensor_digest(tensor: torch.Tensor | np.ndarray) -> str:
    """SHA-256 of a tensor's dtype, shape and bytes (moved to the CPU first if needed).

    Large tensors are hashed in 16 MiB chunks on several threads (hashlib releases the
    GIL) and the chunk digests are hashed together, so the cost is a memory pass spread
    over the cores.
    """
    if isinstance(tensor, torch.Tensor):
        t = tensor.detach().cpu().contiguous()
        header = f"{t.dtype}{tuple(t.shape)}"
        buffer = memoryview(t.reshape(-1).view(torch.uint8).numpy())
    else:
        a = np.ascontiguousarray(tensor)
        header = f"{a.dtype.str}{a.shape}"
        buffer = memoryview(a.reshape(-1).view(np.uint8))
    starts = range(0, len(buffer), _CHUNK)

    def chunk_hash(start: int) -> bytes:
        return hashlib.sha256(buffer[start : start + _CHUNK]).digest()

    workers = min(len(starts), _cpu_count(), 8)
    if workers > 1:
        with ThreadPoolExecutor(workers) as pool:
            chunks = list(pool.map(chunk_hash, starts))
    else:
        chunks = [chunk_hash(start) for start in starts]
    h = hashlib.sha256(header.encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def dataset_digest(data: Dataset) -> str:
    """SHA-256 of everything a :class:`~mia_torch.data.datasets.Dataset` holds, computed once.

    Tensors and arrays (images, labels, indices) are hashed by content; other fields
    (``name``, ``num_classes``, ``mean``, ``std``) by their JSON value. The result is kept
    on the dataset (``content_digest``, carried over by ``Dataset.to``), so later calls are
    free; a dataset made with ``dataclasses.replace`` starts without it and is hashed anew.
    Modifying a loaded dataset's tensors in place is not detected: make a new one instead.
    """
    if data.content_digest is not None:
        return data.content_digest
    h = hashlib.sha256()
    for f in sorted((f for f in dataclasses.fields(data) if f.init), key=lambda f: f.name):
        value = getattr(data, f.name)
        if isinstance(value, (torch.Tensor, np.ndarray)):
            part = tensor_digest(value)
        else:
            try:
                part = json.dumps(value, sort_keys=True)
            except TypeError as err:
                raise TypeError(
                    f"dataset field `{f.name}` ({type(value).__name__}) has no stable digest: keep Dataset fields "
                    f"to tensors, arrays and JSON values"
                ) from err
        h.update(f"{f.name}={part};".encode())
    data.content_digest = h.hexdigest()
    return data.content_digest
