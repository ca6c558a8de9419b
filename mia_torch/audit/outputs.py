"""``audit.outputs``: audit a model from its outputs alone (a model that is not a PyTorch module).

The file is a ``.npy`` array of the model's outputs on the population records, one row per
record in population order: ``[N, C]`` (one query) or ``[N, Q, C]`` (one entry per
configured query). ``audit.output_kind`` states what the numbers are:

- ``logits``: any finite scores whose softmax is the model's probabilities;
- ``probabilities``: each row in [0, 1], summing to 1 within :data:`SUM_TOLERANCE`
  (e.g. scikit-learn's ``predict_proba``);
- ``log_probabilities``: each row's logsumexp within :data:`SUM_TOLERANCE` of 0, ``-inf``
  allowed for a probability of 0 (e.g. ``predict_log_proba``).

Every kind becomes what the attacks read, a float32 ``[N, Q, C]`` tensor read as logits:
logits as given; probabilities as float64 log-probabilities of the row renormalised to sum
to exactly 1 (log-probabilities likewise shifted to logsumexp 0). Every statistic is then
computed from log-odds forms in float64, as for a model queried directly; a
log-probability kept in float32 loses nothing (the small probabilities that carry the
low-FPR information are stored as their logarithms).

A probability of exactly 0 has no logarithm: the information below the file's resolution
is lost. Such an entry gets a floor ``u = r / k`` (``r`` the file's resolution, 2^-53 for
float64 and 2^-24 for float32; ``k`` the zero entries of the row), the same completion the
``topk`` output defense uses, kept strictly below every nonzero entry of its row. A record
whose true-class probability is exactly 1 then gets the largest log-odds the file can
express, and all such records tie at the top of the ranking, where TPR at low FPR is read:
they are counted as *saturated* rows and reported. Give logits or log-probabilities when
you can (``decision_function``, ``predict_log_proba``).
"""
from __future__ import annotations

import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mia_torch.audit.checkpoint import CheckpointError

__all__ = ["PROXY_P_VALUES", "SUM_TOLERANCE", "AuditedOutputs", "outputs_metrics", "read_outputs", "to_logits",
           "warn_if_unordered"]

log = logging.getLogger(__name__)

#: How far a row of probabilities may sum from 1 (or a row of log-probabilities' logsumexp from 0).
SUM_TOLERANCE = 1e-3
#: Printed under the per-record answer of an audit from outputs.
PROXY_P_VALUES = ("with stand-in references, a record's p-values compare the audited model with models of another "
                  "architecture: they hold only as far as the stand-ins behave like it on records neither trained on "
                  "(with audit.members, the verdict's false-positive rate on the known non-members is measured above)")


@dataclass(frozen=True)
class AuditedOutputs:
    """The audited model's outputs as the attacks read them, and what the conversion found."""

    logits: torch.Tensor  # float32 [N, Q, C], read as logits
    file: Path
    kind: str
    saturated: int  # rows (over all queries) with a probability of exactly 1: tied at the top

    @property
    def predictions(self) -> np.ndarray:
        """Predicted class of every record on the first query."""
        return self.logits[:, 0].argmax(-1).numpy()


def _refuse(file: Path, problem: str) -> CheckpointError:
    return CheckpointError(f"{file} (audit.outputs) {problem}")


def _load(file: Path) -> np.ndarray:
    if not file.is_file():
        raise CheckpointError(f"audit.outputs={str(file)!r} does not exist: give the .npy file of your model's "
                              f"outputs on the population records")
    if zipfile.is_zipfile(file):
        raise _refuse(file, "is an .npz archive: save the one array of outputs with np.save(path, outputs)")
    try:
        array = np.load(file, allow_pickle=False)
    except ValueError as err:
        raise _refuse(file, f"cannot be read without unpickling it, or is not a .npy file ({err}): save a numeric "
                            f"array with np.save(path, outputs)") from err
    except (OSError, EOFError) as err:
        raise _refuse(file, f"cannot be read ({type(err).__name__}: {err}); write it again with np.save") from err
    if array.dtype.kind not in "iuf":
        raise _refuse(file, f"has dtype {array.dtype}: outputs must be numbers (float logits or probabilities)")
    return array


def _first_row(mask: np.ndarray) -> str:
    rows = np.flatnonzero(mask.reshape(len(mask), -1).any(axis=1))
    return f"{len(rows)} row(s), first at row {int(rows[0])}"


def _check_shape(file: Path, array: np.ndarray, *, num_records: int, num_classes: int, queries: tuple[str, ...]):
    if array.ndim not in (2, 3):
        raise _refuse(file, f"has shape {array.shape}: outputs must be [N, C] (one row per record) or [N, Q, C] "
                            f"(one per query)")
    if len(array) != num_records:
        raise _refuse(file, f"has {len(array)} rows, but the population has {num_records} records: give one row per "
                            f"population record, in population order (row i is the record with id i in records.csv; "
                            f"for dataset=csv, the rows of dataset.path when dataset.test_path holds the test rows)")
    if array.shape[-1] != num_classes:
        raise _refuse(file, f"has {array.shape[-1]} classes per row, but the dataset has {num_classes}: give one "
                            f"output per class, in the order of the dataset's class ids")
    given = 1 if array.ndim == 2 else array.shape[1]
    if given != len(queries):
        raise _refuse(file, f"holds {given} output(s) per record, but queries={list(queries)} asks for "
                            f"{len(queries)}: give [N, {len(queries)}, C], or set queries=[identity] for [N, C]")


def _floor(logp: np.ndarray, zero: np.ndarray, resolution: float) -> np.ndarray:
    """``logp`` with its zero-probability entries (``zero``) at ``log(resolution / k)``, below every other entry."""
    count = zero.sum(-1, keepdims=True)
    if not count.any():
        return logp
    floor = np.log(resolution / np.maximum(count, 1))
    lowest = np.where(zero, np.inf, logp).min(-1, keepdims=True)
    floor = np.minimum(floor, np.nextafter(lowest, -np.inf))
    return np.where(zero, floor, logp)


def to_logits(array: np.ndarray, kind: str, *, file: Path) -> tuple[np.ndarray, int]:
    """Checked float64 outputs ``[..., C]`` of ``kind`` as logits (see the module docstring); and the saturated rows."""
    values = array.astype(np.float64)
    resolution = float(np.finfo(array.dtype).eps) / 2 if array.dtype.kind == "f" else 2.0 ** -53
    if np.isnan(values).any():
        raise _refuse(file, f"holds NaN in {_first_row(np.isnan(values))}: fix or drop those records")
    if kind == "logits":
        if not np.isfinite(values).all() or not np.isfinite(values.astype(np.float32)).all():
            raise _refuse(file, f"holds infinite logits (or beyond float32's range) in "
                                f"{_first_row(~np.isfinite(values.astype(np.float32)))}: logits must be finite")
        return values, 0
    if kind == "probabilities":
        outside = (values < 0) | (values > 1 + SUM_TOLERANCE)
        if outside.any():
            raise _refuse(file, f"holds values outside [0, 1] in {_first_row(outside)} (e.g. "
                                f"{values[outside][0]!r}): are these logits? then set audit.output_kind=logits")
        total = values.sum(-1, keepdims=True)
        zero = values == 0
        logp = np.log(np.where(zero, 1.0, values / np.where(total > 0, total, 1.0)))
    elif kind == "log_probabilities":
        if (values == np.inf).any() or (values > SUM_TOLERANCE).any():
            raise _refuse(file, f"holds positive log-probabilities in {_first_row(values > SUM_TOLERANCE)}: are "
                                f"these logits? then set audit.output_kind=logits")
        zero = values == -np.inf
        if zero.all(-1).any():
            raise _refuse(file, f"has rows of -inf only in {_first_row(zero.all(-1))}: log-probabilities of a row "
                                f"must sum (as probabilities) to 1")
        top = np.where(zero, -np.inf, values).max(-1, keepdims=True)
        total = top + np.log(np.where(zero, 0.0, np.exp(values - top)).sum(-1, keepdims=True))
        logp = np.where(zero, 0.0, values - total)
        total = np.exp(total)
    else:
        raise ValueError(f"audit.output_kind={kind!r} is invalid")
    off = np.abs(total - 1) > SUM_TOLERANCE
    if off.any():
        row = np.flatnonzero(off.reshape(len(off), -1).any(axis=1))[0]
        raise _refuse(file, f"has rows whose probabilities do not sum to 1 in {_first_row(off)} (row {int(row)} sums "
                            f"to {float(total.reshape(len(total), -1)[row].max()):.6g}; tolerance {SUM_TOLERANCE:g}): "
                            f"give every class's probability, or logits with audit.output_kind=logits")
    saturated = int(((~zero).sum(-1) == 1).reshape(len(values), -1).any(axis=1).sum())
    return _floor(logp, zero, resolution), saturated


def read_outputs(path: str | Path, *, kind: str, num_records: int, num_classes: int, queries: tuple[str, ...],
                 data_dir: Path | None = None) -> AuditedOutputs:
    """Read and check ``audit.outputs`` (relative paths also under ``data_dir``); errors name the file.

    Refused: a missing or unreadable file, a pickle or object array, an array of the wrong
    shape (rows, classes or queries), NaN, infinite logits, probabilities outside [0, 1] or
    rows that do not sum to 1. Saturated rows are counted and logged, not refused.
    """
    file = Path(path).expanduser()
    if not file.is_file() and not file.is_absolute() and data_dir is not None and (Path(data_dir) / file).is_file():
        file = Path(data_dir) / file
    array = _load(file)
    _check_shape(file, array, num_records=num_records, num_classes=num_classes, queries=queries)
    if array.ndim == 2:
        array = array[:, None, :]
    logits, saturated = to_logits(array, kind, file=file)
    if saturated:
        log.warning("%s (audit.outputs): %d of %d record(s) have a probability of exactly 1 (every other class 0): "
                    "their log-odds is capped at the file's resolution, so they tie, which caps the TPR at low FPR; "
                    "logits or log-probabilities keep that information", file, saturated, len(array))
    return AuditedOutputs(torch.from_numpy(logits.astype(np.float32)), file, kind, saturated)


def outputs_metrics(served: torch.Tensor, labels: torch.Tensor, members: np.ndarray | None) -> dict[str, float]:
    """Accuracy of the audited outputs ``[N, Q, C]`` (first query) on the population, and, when the members are
    known, accuracy and mean loss on them (``train_*``) and on the other population records (``test_*``)."""
    from mia_torch.signals.stats import cross_entropy

    logits, y = served[:, 0].double().cpu(), labels.cpu()
    correct = (logits.argmax(-1) == y).double()
    out = {"population_acc": float(correct.mean())}
    if members is None:
        return out
    loss = cross_entropy(logits, y)
    inside = torch.zeros(len(y), dtype=torch.bool)
    inside[torch.from_numpy(members)] = True
    for prefix, rows in (("train", inside), ("test", ~inside)):
        if rows.any():
            out[f"{prefix}_acc"], out[f"{prefix}_loss"] = float(correct[rows].mean()), float(loss[rows].mean())
    return out


def warn_if_unordered(outputs: AuditedOutputs, labels: np.ndarray) -> None:
    """Log a warning when the outputs predict the population's labels no better than its most common class.

    A model that learned anything does better; outputs whose rows are not in population
    order usually do not.
    """
    accuracy = float(np.mean(outputs.predictions == labels))
    majority = float(np.bincount(labels).max() / len(labels))
    if accuracy <= majority:
        log.warning("%s (audit.outputs): the outputs predict the population's labels with accuracy %.3f, no better "
                    "than always predicting the most common class (%.3f): check that row i is population record i "
                    "and that the classes are in the dataset's order", outputs.file, accuracy, majority)
