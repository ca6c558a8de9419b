"""The ``audit`` keys: which model to audit, how to feed it, which records to ask about."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from mia_torch.settings.checks import known_keys

__all__ = ["OUTPUT_KINDS", "AuditConfig"]


def _check_fpr(key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"{key}={value!r} is invalid: expected a false-positive rate in (0, 1), e.g. 0.01")
    return float(value)


def _check_ids(key: str, value: Any) -> Any:
    if isinstance(value, bool) or (value is not None and not isinstance(value, (str, int, list))):
        raise ValueError(f"{key}={value!r} is invalid: expected record ids, a list of them, or a file of them")
    return value


#: ``audit.output_kind``: what the numbers in ``audit.outputs`` are.
OUTPUT_KINDS = ("logits", "probabilities", "log_probabilities")


def _check_outputs(config: "AuditConfig") -> None:
    """``audit.outputs`` is a path, stated by ``audit.output_kind``, and excludes ``audit.checkpoint``."""
    if config.outputs is None:
        if config.output_kind is not None:
            raise ValueError(f"audit.output_kind={config.output_kind!r} describes audit.outputs, which is not set")
        return
    if not isinstance(config.outputs, str) or not config.outputs:
        raise ValueError(f"audit.outputs={config.outputs!r} is invalid: expected the path of a .npy file of your "
                         "model's outputs on the population records")
    if config.checkpoint is not None:
        raise ValueError("audit.checkpoint and audit.outputs both name the audited model: set one of them")
    if config.output_kind not in OUTPUT_KINDS:
        raise ValueError(f"audit.output_kind={config.output_kind!r} is invalid: state what audit.outputs holds, one "
                         f"of {', '.join(OUTPUT_KINDS)} (e.g. predict_proba gives probabilities)")


@dataclass(frozen=True)
class AuditConfig:
    """Validated ``audit.*`` keys; auditing is on when ``checkpoint`` or ``outputs`` is set.

    ``checkpoint``: the user's model (a state dict, or a ``torch.export`` ``.pt2``);
    ``outputs``: instead of a model, its outputs on the population records (a ``.npy``
    file of ``output_kind``, see :mod:`mia_torch.audit.outputs`); ``preprocess``: how the
    dataset's inputs map to the model's (see
    :mod:`mia_torch.audit.preprocess`); ``members``: the population records the model was
    trained on, when known (ground truth: the full report); ``candidates``: the records to
    ask about (default: every population record); ``fpr``: the false-positive rate of each
    record's verdict; ``online``: whether reference models may train on the candidates
    (needed by online attacks); ``public``: population records known not to be in the model's
    training set, which attacks without reference models (``quantile``) learn from.
    """

    checkpoint: str | None = None
    outputs: str | None = None
    output_kind: str | None = None
    preprocess: Any = "dataset"
    members: Any = None
    candidates: Any = None
    fpr: float = 0.01
    online: bool = False
    public: Any = None

    @property
    def enabled(self) -> bool:
        """Whether this run audits a user's model (from its weights or from its outputs)."""
        return self.checkpoint is not None or self.outputs is not None

    @property
    def key(self) -> str:
        """The key that names the audited model: ``audit.checkpoint`` or ``audit.outputs``."""
        return "audit.outputs" if self.outputs is not None else "audit.checkpoint"

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> "AuditConfig":
        """Validate ``audit.*`` (a missing section, as in runs saved before it existed, means off)."""
        out = cls(**known_keys(values or {}, cls, "audit"))
        if out.checkpoint is not None and (not isinstance(out.checkpoint, str) or not out.checkpoint):
            raise ValueError(f"audit.checkpoint={out.checkpoint!r} is invalid: expected the path of your model file")
        _check_outputs(out)
        _check_fpr("audit.fpr", out.fpr)
        _check_ids("audit.members", out.members)
        _check_ids("audit.candidates", out.candidates)
        _check_ids("audit.public", out.public)
        if not isinstance(out.online, bool):
            raise ValueError(f"audit.online={out.online!r} is invalid: expected true or false")
        if not out.enabled and any(v is not None for v in (out.members, out.candidates, out.public)):
            raise ValueError("audit.members / audit.candidates / audit.public need audit.checkpoint or audit.outputs: "
                             "the model to audit, or its outputs")
        return replace(out, fpr=float(out.fpr))
