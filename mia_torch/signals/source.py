"""A study's signals where they live: one store artifact of raw logits ``[N, Q, C]`` per model.

:class:`SignalSource` reads them back one model at a time (memory-mapped once the checksum
is verified), applies the served-output transform (:mod:`mia_torch.signals.output`) and
either reduces them to the features the attacks read (:meth:`SignalSource.reduce`) or
materialises what the attacks saw (:meth:`SignalSource.dense`, the served outputs
``[M, N, Q, C]``), so nothing ever holds every model's logits unless asked to.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from mia_torch.signals.features import Feature, ServedChunk, unique
from mia_torch.signals.output import ServedOutput, serve, serve_array
from mia_torch.store import ArtifactStore

__all__ = ["SignalSource", "ServedQuery", "check_signals"]

#: Served logits per chunk when a model is reduced to features (float64 temporaries stay small).
CHUNK_ELEMENTS = 1 << 21


@dataclass
class SignalSource:
    """The raw logits of models ``keys`` (model index -> signal key) in ``store``, served as ``output``.

    ``labels`` are the population's classes (``[N]``) and ``num_queries`` the Q of every
    artifact. ``rebuild(model)`` collects a model's logits again when its artifact turns out
    corrupt and returns the models it verified (None: such a model is an error). ``verified`` holds the models
    whose artifacts this process has already verified (e.g. just collected): their first read
    maps them without hashing them again.
    """

    store: ArtifactStore
    keys: dict[int, str]
    output: ServedOutput
    labels: np.ndarray
    num_queries: int
    rebuild: Callable[[int], set[int]] | None = None
    progress: bool = False
    verified: set[int] = field(default_factory=set, repr=False)

    @property
    def models(self) -> list[int]:
        """The model indices, in order."""
        return list(self.keys)

    def raw(self, model: int) -> np.ndarray:
        """Model ``model``'s stored logits ``[N, Q, C]``, memory-mapped (checksum verified on first use, unless
        this process verified it already)."""
        key = self.keys[model]
        if model in self.verified:
            return np.load(self.store.payload_path("signals", key), mmap_mode="r", allow_pickle=False)
        check = partial(check_signals, num_examples=len(self.labels), num_queries=self.num_queries)
        array = self.store.open_array("signals", key, check=check)
        if array is None and self.rebuild is not None and model in self.rebuild(model):  # missing or corrupt
            self.verified.add(model)  # (moved aside): collected and verified again
            return self.raw(model)
        if array is None:
            raise FileNotFoundError(f"the signals of model {model} (signals/{key}) are not in the store "
                                    f"{self.store.root} or are corrupt: rerun the study with that store_dir")
        self.verified.add(model)
        return array

    def served(self, model: int, rows: slice | np.ndarray = slice(None), *, raw: np.ndarray | None = None
               ) -> torch.Tensor:
        """Model ``model``'s served output on examples ``rows``, float32 ``[n, Q, C]`` (CPU)."""
        raw = self.raw(model) if raw is None else raw
        return serve(torch.from_numpy(np.array(raw[rows])), self.output).float()

    def served_array(self, model: int, rows: slice | np.ndarray = slice(None)) -> np.ndarray:
        """What the attacks saw from model ``model`` on examples ``rows`` (``[n, Q, C]``): the stored dtype for
        ``output=logits``, float32 for the other outputs."""
        return serve_array(np.array(self.raw(model)[rows]), self.output)

    def dense(self, models: Sequence[int] | None = None, examples: slice | np.ndarray = slice(None)) -> np.ndarray:
        """The served outputs ``[m, n, Q, C]`` of ``models`` (default: all) on ``examples``, in memory (filled
        one model at a time: the result is the only full-size array)."""
        models = self.models if models is None else list(models)
        if not models:
            raise ValueError("SignalSource.dense needs at least one model")
        first = self.served_array(models[0], examples)
        out = np.empty((len(models), *first.shape), dtype=first.dtype)
        out[0] = first
        for i, model in enumerate(models[1:], start=1):
            out[i] = self.served_array(model, examples)
        return out

    def reduce(self, features: Iterable[Feature], *, models: Sequence[int] | None = None,
               device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
        """Every feature of ``models`` (default: all), ``{name: [M, N, ...]}`` on ``device``: each model's
        logits are read once, a chunk of examples at a time."""
        models = self.models if models is None else list(models)
        wanted = unique(features)
        labels = torch.from_numpy(self.labels).long()
        out: dict[str, torch.Tensor] = {}
        for i, model in enumerate(tqdm(models, desc="features", unit="model", disable=not self.progress,
                                       leave=False)):
            raw = self.raw(model)
            for rows in _example_chunks(raw):
                chunk = ServedChunk(self.served(model, rows, raw=raw).to(device), labels[rows].to(device))
                for name, feature in wanted.items():
                    value = feature.compute(chunk).to(feature.dtype)
                    if name not in out:
                        out[name] = torch.empty((len(models), len(self.labels), *value.shape[1:]),
                                                dtype=feature.dtype, device=device)
                    out[name][i, rows] = value
            del raw  # unmapped: at most one model's logits are mapped at a time
        return out

    def query_view(self, query: int) -> ServedQuery:
        """Every model's served output on query ``query`` (``[N, C]``), read when asked for."""
        return ServedQuery(self, query)


def check_signals(array: np.ndarray, *, num_examples: int, num_queries: int) -> None:
    """Raise ``ValueError`` unless ``array`` is the logits ``[N, Q, C]`` of ``num_examples`` examples under
    ``num_queries`` queries."""
    if array.ndim != 3 or array.shape[0] != num_examples or array.shape[1] != num_queries:
        raise ValueError(f"signals of shape {array.shape} for a population of {num_examples} under {num_queries} "
                         "queries")


class ServedQuery(Mapping[int, np.ndarray]):
    """``{model: served output [N, C] on one query}``, each read from the store on access (the last one kept)."""

    def __init__(self, source: SignalSource, query: int) -> None:
        self.source, self.query = source, query
        self._last: tuple[int, np.ndarray] | None = None

    def __getitem__(self, model: int) -> np.ndarray:
        if model not in self.source.keys:
            raise KeyError(model)
        if self._last is None or self._last[0] != model:
            raw_query = np.array(self.source.raw(model)[:, self.query])  # serving acts on each row: one query suffices
            self._last = (model, serve_array(raw_query, self.source.output))
        return self._last[1]

    def __iter__(self) -> Iterator[int]:
        return iter(self.source.keys)

    def __len__(self) -> int:
        return len(self.source.keys)


def _example_chunks(raw: np.ndarray) -> Iterator[slice]:
    """Consecutive example slices of ``raw [N, Q, C]`` of about :data:`CHUNK_ELEMENTS` elements each."""
    n, q, c = raw.shape
    step = max(1, CHUNK_ELEMENTS // max(1, q * c))
    for start in range(0, n, step):
        yield slice(start, min(n, start + step))
