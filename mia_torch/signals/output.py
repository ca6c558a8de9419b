"""Output defenses: what a model's prediction API serves (config group ``output``).

The store always holds raw logits; :func:`serve` turns them into the served output after
loading, for the target and its references alike, so attacks see only what the API
returns. Every served output is represented as a float tensor ``[..., C]`` that attacks
read as logits (their statistics use the log-softmax):

* ``logits`` — the raw logits, unchanged (default);
* ``temperature`` (``output.t``) — probabilities ``softmax(z / t)``, as log-probabilities;
* ``topk`` (``output.k``) — the k largest probabilities, the rest zeroed;
* ``round`` (``output.decimals``) — probabilities rounded to ``decimals`` decimals;
* ``label`` — the predicted label only (served as probability 1 on that class).

Probability outputs are computed in float64, as an API serving float64 probabilities
would, and passed on as log-probabilities ``log p~``, so ``softmax(log p~) = p~``. An
entry the API does not serve (zeroed by ``topk`` or ``label``, rounded to 0 by ``round``)
has no logarithm, so it gets a floor ``u`` chosen as follows:

* ``topk`` and ``label``: ``u = max(1 - S, 2^-53) / (#unserved)``, with ``S`` the sum of
  the served probabilities: the unserved mass, which the attacker can compute as
  ``1 - S``, spread evenly over the unserved classes (the maximum-entropy completion of the
  served vector, so ``p~`` still sums to 1 and a top-1 output keeps its confidence);
  ``2^-53`` is float64's resolution of ``1 - S``. For ``label``, ``S = 1``.
* ``round``: ``u = 10^-decimals / C``: below the smallest served step ``10^-decimals``, and
  all unserved entries together add less than one step of mass (the rounded vector itself
  need not sum to 1; attacks see it renormalised).

The result is float32 and finite, and every unserved entry is strictly below every served
entry of its row (ties among unserved entries are kept), so the served top class stays
the arg-max and every statistic (loss, confidence, entropies, phi) stays finite.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch

__all__ = ["OUTPUT_KEYS", "ServedOutput", "serve", "serve_array"]

#: Output kinds and the keys each one takes besides ``name``.
OUTPUT_KEYS: dict[str, tuple[str, ...]] = {
    "logits": (),
    "temperature": ("t",),
    "topk": ("k",),
    "round": ("decimals",),
    "label": (),
}

_MAX_DECIMALS = 15  # float64 resolves about 16 significant digits
_RESOLUTION = 2.0**-53


@dataclass(frozen=True)
class ServedOutput:
    """A validated output defense: ``name`` and its one parameter (``k``, ``decimals`` or ``t``)."""

    name: str = "logits"
    k: int | None = None
    decimals: int | None = None
    t: float | None = None

    @property
    def serves_scores(self) -> bool:
        """Whether the API serves a score vector (False: the predicted label only)."""
        return self.name != "label"

    def describe(self) -> str:
        """The command-line spelling, e.g. ``output=topk output.k=1``."""
        params = " ".join(f"output.{key}={getattr(self, key)}" for key in OUTPUT_KEYS[self.name])
        return f"output={self.name}" + (f" {params}" if params else "")

    @classmethod
    def from_config(cls, values: Mapping[str, Any] | None) -> "ServedOutput":
        """Validate the ``output`` config group (None = raw logits), naming the offending key."""
        if values is None:
            return cls()
        if not isinstance(values, Mapping):
            raise ValueError(f"config group `output` must be a mapping, got {values!r}: pick one, e.g. output=logits")
        name = values.get("name")
        if name not in OUTPUT_KEYS:
            raise ValueError(f"output.name={name!r} is invalid: expected one of {list(OUTPUT_KEYS)}")
        allowed = OUTPUT_KEYS[name]
        extra = sorted(set(values) - {"name", *allowed})
        if extra:
            valid = ", ".join(f"output.{key}" for key in allowed) or "none"
            raise ValueError(f"output.{extra[0]} does not apply to output={name} (its keys: {valid})")
        for key in allowed:
            if key not in values:
                raise ValueError(f"output={name} needs output.{key}")
        if name == "topk":
            k = values["k"]
            if isinstance(k, bool) or not isinstance(k, int) or k < 1:
                raise ValueError(f"output.k={k!r} is invalid: expected an integer >= 1 (classes served)")
            return cls(name, k=k)
        if name == "round":
            d = values["decimals"]
            if isinstance(d, bool) or not isinstance(d, int) or not 0 <= d <= _MAX_DECIMALS:
                raise ValueError(f"output.decimals={d!r} is invalid: expected an integer in [0, {_MAX_DECIMALS}]")
            return cls(name, decimals=d)
        if name == "temperature":
            t = values["t"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not (math.isfinite(t) and t > 0):
                raise ValueError(f"output.t={t!r} is invalid: expected a finite number > 0")
            return cls(name, t=float(t))
        return cls(name)

    def check_classes(self, num_classes: int) -> None:
        """Raise if ``output.k`` serves every class of a ``num_classes``-class dataset."""
        if self.name == "topk" and self.k is not None and self.k >= num_classes:
            raise ValueError(
                f"output.k={self.k} serves all {num_classes} classes of this dataset: "
                f"use output.k < {num_classes}, or output=temperature output.t=1 for full probabilities"
            )


def _complete(log_served: torch.Tensor, served: torch.Tensor, log_floor: torch.Tensor) -> torch.Tensor:
    """Served log-probabilities with the floor in unserved entries, float32, unserved strictly below served."""
    out = torch.where(served, log_served, log_floor).float()
    lowest = torch.where(served, out, torch.full_like(out, math.inf)).amin(-1, keepdim=True)
    below = torch.nextafter(lowest, torch.full_like(lowest, -math.inf))
    return torch.where(served, out, torch.minimum(out, below))


def _complete_mass(logp: torch.Tensor, served: torch.Tensor) -> torch.Tensor:
    """topk/label: spread the unserved mass ``max(1 - S, 2^-53)`` evenly over the unserved classes."""
    p = torch.where(served, logp.exp(), torch.zeros_like(logp))
    unserved = (~served).sum(-1, keepdim=True).clamp(min=1).to(logp.dtype)
    mass = (1.0 - p.sum(-1, keepdim=True)).clamp(min=_RESOLUTION)
    return _complete(logp, served, torch.log(mass / unserved))


def serve(logits: torch.Tensor, output: ServedOutput) -> torch.Tensor:
    """The served output for raw ``logits [..., C]``, represented as logits (see the module docstring).

    ``logits`` comes back unchanged for ``output=logits``; every other output is float32
    log-probabilities of the same shape.
    """
    if output.name == "logits":
        return logits
    z = logits.double()
    if output.name == "temperature":
        return torch.log_softmax(z / output.t, dim=-1).float()
    if output.name == "label":
        served = torch.zeros_like(z, dtype=torch.bool).scatter(-1, z.argmax(-1, keepdim=True), True)
        return _complete_mass(torch.zeros_like(z), served)  # probability 1 on the predicted label
    logp = torch.log_softmax(z, dim=-1)
    if output.name == "topk":
        k = min(output.k, z.shape[-1])
        served = torch.zeros_like(z, dtype=torch.bool).scatter(-1, logp.topk(k, dim=-1).indices, True)
        return _complete_mass(logp, served)
    if output.name == "round":
        rounded = torch.round(logp.exp(), decimals=output.decimals)
        served = rounded > 0
        floor = torch.tensor(10.0 ** -output.decimals / z.shape[-1], dtype=z.dtype, device=z.device)
        return _complete(torch.log(rounded), served, floor.log())
    raise ValueError(f"output.name={output.name!r} is invalid: expected one of {list(OUTPUT_KEYS)}")


def serve_array(logits: np.ndarray, output: ServedOutput) -> np.ndarray:
    """:func:`serve` for a numpy array (the raw array itself for ``output=logits``)."""
    if output.name == "logits":
        return logits
    return serve(torch.from_numpy(logits), output).numpy()
