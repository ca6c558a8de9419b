"""A run's signals by reference: ``signals.json`` names the store artifacts instead of copying them.

A study's run directory holds ``signals.json`` (the store, each model's signal key, the
served output, the queries) and ``labels.npy``; the served outputs themselves stay in the
store, one artifact per model. ``save_signals=true`` also writes them densely as
``signals.npy`` (streamed model by model). :func:`load_run_signals` gives what the attacks
saw (``[M, N, Q, C]``, or a slice of models and examples) from either.
"""
from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.atomic import atomic_open, atomic_write_bytes
from mia_torch.signals.output import ServedOutput
from mia_torch.signals.source import SignalSource
from mia_torch.store import ArtifactStore

__all__ = ["MANIFEST", "has_run_signals", "load_run_signals", "open_run_signals", "run_model_signals", "write_dense_signals",
           "write_manifest"]

#: The manifest's file name in a run directory.
MANIFEST = "signals.json"
#: The dense copy's file name (``save_signals=true``, and runs made before manifests).
DENSE = "signals.npy"


def write_manifest(run_dir: Path, source: SignalSource) -> Path:
    """Write ``signals.json``: where every model's served output lies in the store."""
    output = {k: v for k, v in vars(source.output).items() if v is not None}
    record = {"store_dir": str(Path(source.store.root).resolve()), "num_examples": int(len(source.labels)),
              "num_queries": source.num_queries, "output": output,
              "signals": {str(m): key for m, key in source.keys.items()}}
    return atomic_write_bytes(Path(run_dir) / MANIFEST, json.dumps(record, indent=1).encode())


def has_run_signals(run_dir: Path) -> bool:
    """Whether run ``run_dir`` records its signals (a manifest or a dense ``signals.npy``)."""
    return (Path(run_dir) / MANIFEST).is_file() or (Path(run_dir) / DENSE).is_file()


def _read_manifest(path: Path) -> dict[str, Any]:
    try:
        record = json.loads(path.read_text())
        ok = (isinstance(record, dict) and isinstance(record.get("signals"), dict) and
              isinstance(record.get("store_dir"), str) and isinstance(record.get("output"), dict))
    except (OSError, ValueError) as err:
        raise ValueError(f"{path} is not a signals manifest: {err}") from err
    if not ok:
        raise ValueError(f"{path} is not a signals manifest (it needs store_dir, output and signals)")
    return record


def open_run_signals(run_dir: Path) -> SignalSource:
    """The signal source recorded in ``run_dir/signals.json`` (the store it names must still hold them)."""
    run_dir = Path(run_dir)
    if not (run_dir / MANIFEST).is_file():
        raise FileNotFoundError(f"{run_dir} has neither {MANIFEST} nor {DENSE}: is it a study's run directory?")
    record = _read_manifest(run_dir / MANIFEST)
    store_dir = Path(record["store_dir"])
    if not store_dir.is_dir():
        raise FileNotFoundError(f"{run_dir / MANIFEST} points to the store {store_dir}, which does not exist: "
                                "the signals went with it (rerun the study, or keep signals.npy with save_signals=true)")
    labels = np.load(run_dir / "labels.npy", allow_pickle=False)
    keys = {int(m): str(key) for m, key in record["signals"].items()}
    return SignalSource(ArtifactStore(store_dir), keys, ServedOutput.from_config(record["output"]), labels,
                        num_queries=int(record["num_queries"]))


def load_run_signals(run_dir: Path, models: Sequence[int] | None = None,
                     examples: slice | Sequence[int] | np.ndarray = slice(None)) -> np.ndarray:
    """What the attacks of run ``run_dir`` saw: the served outputs ``[M, N, Q, C]`` of ``models`` (default: all)
    on ``examples`` (default: all), from ``signals.npy`` if the run wrote one, else from the store."""
    run_dir = Path(run_dir)
    rows = examples if isinstance(examples, slice) else np.asarray(examples, dtype=np.int64)
    if (run_dir / DENSE).is_file():
        dense = np.load(run_dir / DENSE, mmap_mode="r", allow_pickle=False)
        chosen = dense if models is None else dense[list(models)]
        return np.ascontiguousarray(chosen[:, rows])
    return open_run_signals(run_dir).dense(models, rows)


def run_model_signals(run_dir: Path) -> tuple[list[int], Callable[[int], np.ndarray]]:
    """The models of run ``run_dir``'s signals and a reader of one model's served output ``[N, Q, C]`` (from
    ``signals.npy`` if the run wrote one, else from the store): the run is opened once."""
    run_dir = Path(run_dir)
    if (run_dir / DENSE).is_file():
        dense = np.load(run_dir / DENSE, mmap_mode="r", allow_pickle=False)
        return list(range(len(dense))), lambda model: np.array(dense[model])
    source = open_run_signals(run_dir)
    return source.models, source.served_array


def write_dense_signals(path: Path, source: SignalSource) -> Path:
    """Write every model's served output as one ``.npy`` ``[M, N, Q, C]``, a model at a time (atomically)."""
    first = source.served_array(source.models[0])
    header = {"descr": np.lib.format.dtype_to_descr(first.dtype), "fortran_order": False,
              "shape": (len(source.models), *first.shape)}
    with atomic_open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(first.tobytes())
        for model in source.models[1:]:
            handle.write(source.served_array(model).astype(first.dtype, copy=False).tobytes())
    return Path(path)
