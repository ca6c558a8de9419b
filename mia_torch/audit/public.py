"""``audit.public``: records the audited model did not train on, which attacks without reference models learn from.

The quantile attack (:mod:`mia_torch.attacks.quantile`) needs no reference model: it trains one
regression model on the audited model's scores on records known to be outside its training
set (``audit.public``: e.g. records collected after it was trained). Those records are never
asked about: they are left out of the default candidates, and naming one as a candidate or a
member is refused. Without reference models (``num_models=1``) each record's evidence comes
from the quantile attack (:func:`residual_evidence`): a fifth of the public records is held
out of the regression to calibrate its p-values.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from mia_torch.attacks.base import Attack
from mia_torch.attacks.quantile import QuantileAttack, split_public
from mia_torch.audit.evidence import RecordEvidence
from mia_torch.audit.ids import read_ids
from mia_torch.evaluation import empirical_p_values
from mia_torch.stages.context import Context
from mia_torch.stages.record_attacks import fit_quantile

__all__ = ["CALIBRATION_FRACTION", "PublicRecords", "calibrated_p_values", "fit_public_attacks", "plan_public",
           "residual_evidence"]

#: Share of ``audit.public`` held out of the regression to calibrate p-values when there is no reference model.
CALIBRATION_FRACTION = 0.2


@dataclass(frozen=True)
class PublicRecords:
    """``audit.public`` split into the records the regression trains on and those that calibrate its p-values."""

    train: np.ndarray
    calibration: np.ndarray


def plan_public(ctx: Context, attacks: dict[str, Attack], *, candidates: np.ndarray | None,
                members: np.ndarray | None, calibrate: bool) -> tuple[PublicRecords | None, np.ndarray]:
    """Read ``audit.public`` and check it against the candidates and members; returns the public records (None
    when not given; with ``calibrate``, a share held out to calibrate p-values) and the candidates (by default
    every population record but the public ones)."""
    s, n = ctx.settings, len(ctx.data.y)
    needing = [name for name, attack in attacks.items() if isinstance(attack, QuantileAttack)]
    if s.audit.public is None:
        if needing:
            raise ValueError(f"attack(s) {', '.join(needing)} learn from records the audited model did not train on: "
                             "name them with audit.public (ids, or a .npy or text file of ids), e.g. records "
                             "collected after the model was trained")
        return None, np.arange(n) if candidates is None else candidates
    public = read_ids(s.audit.public, key="audit.public", population_size=n, data_dir=s.data_dir)
    for key, ids in (("audit.members", members), ("audit.candidates", candidates)):
        both = np.intersect1d(public, ids) if ids is not None else np.zeros(0, dtype=np.int64)
        if both.size:
            raise ValueError(f"audit.public and {key} share {both.size} record(s) (e.g. {both[:5].tolist()}): the "
                             "public records are the ones the model did not train on, and the regression must never "
                             f"be asked about a record it trained on: remove them from one of the two")
    if candidates is None:
        candidates = np.setdiff1d(np.arange(n), public)
    if len(public) < 10:
        raise ValueError(f"audit.public holds {len(public)} record(s): the regression needs at least 10")
    calibration = split_public(public, fraction=CALIBRATION_FRACTION, seed=s.seed) if calibrate else public[:0]
    return PublicRecords(train=np.setdiff1d(public, calibration), calibration=calibration), candidates


def fit_public_attacks(ctx: Context, attacks: dict[str, Attack], target: int, served: torch.Tensor,
                       public: PublicRecords | None) -> dict[str, np.ndarray]:
    """Fit every quantile attack on the audited model's served output on the public records; returns the records
    each trained on (left unscored)."""
    fitted = {}
    for name, attack in attacks.items():
        if isinstance(attack, QuantileAttack) and public is not None:
            fit_quantile(ctx, attack, target, served, public=public.train, sources={"audit.public": len(public.train)})
            fitted[name] = public.train
    return fitted


def calibrated_p_values(z: np.ndarray, held_out: np.ndarray) -> np.ndarray:
    """One-sided Gaussian p-values of residuals ``z`` ``[N]``, ``1 - Phi((z - m) / s)``, with ``m`` and ``s`` the mean
    and standard deviation of ``held_out`` ``[n]``: the residuals of public records the regression did not train on.

    The regression's predicted spread fits the records it trained on; on new records the residuals
    spread wider (on the bundled digits, a standard deviation of 1.46 instead of 1), and ``1 - Phi(z)``
    would flag about twice the intended share of non-members. Held-out residuals measure it.
    """
    held_out = np.asarray(held_out, dtype=np.float64)
    if len(held_out) < 2:
        raise ValueError(f"calibrating p-values needs at least 2 held-out public records, got {len(held_out)}")
    spread = float(held_out.std(ddof=1)) or 1.0
    return norm.sf((np.asarray(z, dtype=np.float64) - held_out.mean()) / spread)


def residual_evidence(ctx: Context, attack: QuantileAttack, served: torch.Tensor,
                      calibration: np.ndarray) -> RecordEvidence:
    """Per-record evidence without reference models, from the quantile attack's standardised residual z.

    ``phi`` is the audited model's modelled score, ``z`` the residual, ``p_gaussian`` its Gaussian
    p-value recalibrated on the held-out public records (:func:`calibrated_p_values`), ``p_rank`` the
    rank of z among the held-out public records' residuals, ``(1 + #{at least as high}) / (1 + n)``:
    exact when the audited model's non-members and the public records are exchangeable; ``num_out``
    is that n.
    """
    data = ctx.data
    labels = data.y.to(served.device)
    values = attack.statistic_of(served, labels)
    z = attack.score(served, labels).cpu().numpy()
    ids = torch.from_numpy(calibration).to(data.x.device)
    held_out = attack.residuals(data.x[ids], data.y[ids], values[ids.to(values.device)]).cpu().numpy()
    return RecordEvidence(phi=values.cpu().numpy(), z=z, p_gaussian=calibrated_p_values(z, held_out),
                          p_rank=empirical_p_values(z, held_out), num_out=np.full(len(z), len(held_out)), log_lr=None,
                          source="quantile")
