"""Per-record evidence of membership: p-values against the reference models' OUT distribution.

For each record the statistic is LiRA's logit-scaled confidence phi (Carlini et al. 2022) of the
target model, and the null hypothesis is "the record was not in the target's training set",
under which the target's phi is distributed like the OUT reference models' phi:

- ``p_gaussian``: one-sided p-value from LiRA's offline Gaussians, ``Phi(-z)`` with ``z`` the
  mean over queries of ``(phi_q - mu_out_q) / sigma_out_q``. Each ``z_q`` is standard normal
  under the null and the mean of correlated standard normals has variance at most 1, so this
  p-value is conservative (valid) for ``z >= 0``, the side that matters.
- ``p_rank``: non-parametric: ``(1 + #{OUT references with phi >= the target's}) / (1 + n_out)``
  on the query-averaged phi, valid when the target and the OUT references are exchangeable.
  Its smallest possible value is ``1 / (1 + n_out)``: with few references no record can reach a
  small p-value, which is the honest answer.
- ``log_lr``: LiRA's online log likelihood ratio of IN vs OUT (mean over queries), when the
  references include models trained on the record.

A verdict of "member" at false-positive rate ``fpr`` means ``p_gaussian <= fpr``; "no evidence"
is not proof that the record was not used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import norm

from mia_torch.attacks.base import ReferenceSignals
from mia_torch.attacks.feature_attack import ReferenceFeatures
from mia_torch.attacks.lira import _NO_OUT_WARNING, LiRA
from mia_torch.signals.features import Feature, phi_feature
from mia_torch.signals.stats import logit_scaled_confidence

__all__ = ["CAVEAT", "EVIDENCE_FEATURES", "RecordEvidence", "record_evidence", "verdicts"]

#: What the evidence reads of every reference model: φ per query (LiRA's statistic).
EVIDENCE_FEATURES: tuple[Feature, ...] = (phi_feature(),)

CAVEAT = ('"no evidence" is not proof of absence: a record the model was trained on can leave no measurable trace, '
          "and an attack with more or better reference models may still find one.")


@dataclass(frozen=True)
class RecordEvidence:
    """Per-record arrays (length N) for one target model.

    ``source`` says what the null distribution comes from: ``references`` (the OUT reference
    models, as above) or ``quantile`` (the quantile attack's regression, without reference
    models: :func:`mia_torch.audit.public.residual_evidence`; ``num_out`` then counts the
    held-out public records that calibrate ``p_rank``).
    """

    phi: np.ndarray
    z: np.ndarray
    p_gaussian: np.ndarray
    p_rank: np.ndarray
    num_out: np.ndarray
    log_lr: np.ndarray | None
    source: str = "references"

    def subset(self, ids: np.ndarray) -> "RecordEvidence":
        """The evidence of records ``ids`` only."""
        return RecordEvidence(phi=self.phi[ids], z=self.z[ids], p_gaussian=self.p_gaussian[ids],
                              p_rank=self.p_rank[ids], num_out=self.num_out[ids],
                              log_lr=None if self.log_lr is None else self.log_lr[ids], source=self.source)


def record_evidence(
    target_logits: torch.Tensor, labels: torch.Tensor, ref: ReferenceFeatures | ReferenceSignals, *, online: bool,
    variance: str = "global"
) -> RecordEvidence:
    """Evidence for every record from the target's logits ``[N, Q, C]`` and the references' features.

    ``ref`` holds φ per query of the R references (:data:`EVIDENCE_FEATURES`, ``[R, N, Q]``;
    reference signals are reduced to it first). ``online`` adds LiRA's IN-vs-OUT likelihood
    ratio (it needs references trained on the records); ``variance`` is LiRA's
    (``global`` or ``per_example``).
    """
    if isinstance(ref, ReferenceSignals):
        ref = ReferenceFeatures.from_signals(ref, EVIDENCE_FEATURES)
    # The fitted Gaussians do not depend on ``online``: one fit gives the OUT z-scores and the score.
    lira = LiRA(online=online, variance=variance, calibrate_threshold=False).fit_features(ref)
    keep = ref.keep_of()
    if online and bool(keep.all()):
        warnings.warn(_NO_OUT_WARNING)  # the offline test behind z has no OUT reference either
    z = lira.out_zscores(target_logits, labels).mean(-1)
    phi_target = logit_scaled_confidence(target_logits.double(), labels[:, None]).mean(-1)
    out = ~keep
    at_least = torch.zeros_like(phi_target, dtype=torch.long)
    for models in ref.chunks(ref.features["phi"][0].numel()):  # a few references at a time
        phi_refs = ref.take("phi", models).mean(-1)  # [r, N]
        at_least += ((phi_refs >= phi_target) & out[models]).sum(0)
    num_out = out.sum(0)
    log_lr = lira.score(target_logits, labels).double().cpu().numpy() if online else None
    z_np = z.cpu().numpy()
    return RecordEvidence(
        phi=phi_target.cpu().numpy(),
        z=z_np,
        p_gaussian=norm.sf(z_np),
        p_rank=((1 + at_least) / (1 + num_out)).double().cpu().numpy(),
        num_out=num_out.cpu().numpy(),
        log_lr=log_lr,
    )


def verdicts(p_values: np.ndarray, fpr: float) -> np.ndarray:
    """``"member"`` where the p-value is at most ``fpr``, else ``"no evidence"``."""
    return np.where(np.asarray(p_values) <= fpr, "member", "no evidence")
