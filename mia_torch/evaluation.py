"""Turn attack scores into the typed evaluation of every attack, computed once.

Per attack (:class:`~mia_torch.report.types.AttackEvaluation`): metrics per target, their
mean ± std over targets, the pooled ROC of all targets' examples (with its curve), the
sanity check on untrained targets, the slices (per class; correctly vs incorrectly
classified by the target), the empirical lower bound on ε and the precision at membership
priors from the pooled ROC. Every
ROC gets bootstrap intervals (``bootstrap`` resamples) and Clopper–Pearson intervals for
its TPRs. Per target (:func:`overconfidence`): ECE and member vs non-member confidence.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from mia_torch.atomic import atomic_open
from mia_torch.metrics import (
    DEFAULT_PRIORS,
    aggregate,
    bootstrap_intervals,
    clopper_pearson,
    confidence_gap,
    empirical_epsilon,
    expected_calibration_error,
    membership_metrics,
    precision_at_priors,
    roc_curve,
    tpr_key,
)
from mia_torch.report.types import (
    AttackEvaluation,
    EpsilonBound,
    MeanStd,
    PrecisionAtPrior,
    RocCurve,
    RocMetrics,
    SanityCheck,
    ScoredSample,
    Scores,
    SliceResult,
    TargetAttackMetrics,
)

#: Confidence of the sanity check's interval: wide enough that checking a dozen attacks
#: rarely raises a false alarm on a target that truly carries no membership information.
SANITY_CONFIDENCE = 0.99
#: A slice is evaluated only with at least this many members and this many non-members.
MIN_SLICE_SIZE = 10
#: Metrics averaged over targets (``AttackEvaluation.mean``), besides the TPRs.
_AVERAGED = ("auc", "advantage", "balanced_accuracy", "num_members", "num_nonmembers")


def measure(
    scores: np.ndarray,
    members: np.ndarray,
    *,
    fpr_targets: Sequence[float],
    bootstrap: int,
    seed: int,
    threshold: float | None = None,
    confidence: float = 0.95,
    keep_curve: bool = False,
) -> RocMetrics:
    """Metrics of one ROC with bootstrap (``bootstrap`` resamples, 0 = none) and Clopper–Pearson intervals.

    ``threshold`` is the attack's calibrated decision threshold (balanced accuracy is
    measured there; without it, at the best threshold). ``keep_curve`` keeps the ROC curve
    and the scores it was measured on in memory (``RocMetrics.curve``, ``.sample``) for figures.
    """
    roc = roc_curve(scores, members)
    raw = membership_metrics(scores, members, fpr_targets=fpr_targets, threshold=threshold, roc=roc)
    n_members = raw["num_members"]
    tpr = {float(f): raw[tpr_key(f)] for f in fpr_targets}
    low, high = clopper_pearson([round(t * n_members) for t in tpr.values()], n_members, confidence=confidence)
    ci = {}
    if bootstrap:
        ci = bootstrap_intervals(scores, members, fpr_targets=fpr_targets, num_resamples=bootstrap, seed=seed,
                                 confidence=confidence)
    return RocMetrics(
        auc=raw["auc"], advantage=raw["advantage"], balanced_accuracy=raw["balanced_accuracy"],
        balanced_accuracy_threshold=raw["balanced_accuracy_threshold"], num_members=n_members,
        num_nonmembers=raw["num_nonmembers"], tpr=tpr, ci=ci, confidence=confidence,
        tpr_exact_ci={f: (float(lo), float(hi)) for f, lo, hi in zip(tpr, np.atleast_1d(low), np.atleast_1d(high))},
        curve=RocCurve(*roc) if keep_curve else None,
        sample=ScoredSample(np.asarray(scores), np.asarray(members)) if keep_curve else None,
    )


def scored(scores: np.ndarray, eval_mask: np.ndarray) -> np.ndarray:
    """The evaluated records an attack scored on one target: ``eval_mask`` without its NaN scores (records the
    attack fitted on and so never scores, e.g. the quantile attack's public records)."""
    return eval_mask & ~np.isnan(scores)


def pooled(scores: Mapping[int, np.ndarray], keep: np.ndarray, eval_mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every target's evaluated, scored records' scores and membership labels (the pooled ROC)."""
    targets = sorted(scores)
    masks = [scored(scores[t], eval_mask) for t in targets]
    return (np.concatenate([scores[t][m] for t, m in zip(targets, masks)]),
            np.concatenate([keep[t][m] for t, m in zip(targets, masks)]))


def slice_masks(classes: np.ndarray, correct: np.ndarray | None) -> Iterator[tuple[str, str, np.ndarray]]:
    """``(name, kind, mask)`` of every slice: ``class=<c>`` per class, then ``correct`` and ``misclassified``;
    each mask is made when it is reached (one pooled-size mask in memory at a time)."""
    for c in np.unique(classes).tolist():
        yield f"class={c}", "class", classes == c
    if correct is not None:
        yield "correct", "classification", correct
        yield "misclassified", "classification", ~correct


def evaluate_slices(
    scores: np.ndarray,
    members: np.ndarray,
    masks: Iterable[tuple[str, str, np.ndarray]],
    *,
    fpr_targets: Sequence[float],
) -> list[SliceResult]:
    """Metrics of every slice (no bootstrap); a slice with fewer than ``MIN_SLICE_SIZE`` members
    or non-members is skipped with the reason."""
    out = []
    for name, kind, mask in masks:
        n_members = int(np.count_nonzero(members[mask]))
        n_nonmembers = int(np.count_nonzero(mask)) - n_members
        result = SliceResult(name=name, kind=kind, num_members=n_members, num_nonmembers=n_nonmembers)
        if min(n_members, n_nonmembers) < MIN_SLICE_SIZE:
            result.skipped = (f"{n_members} members and {n_nonmembers} non-members "
                              f"(each needs at least {MIN_SLICE_SIZE})")
        else:
            result.metrics = measure(scores[mask], members[mask], fpr_targets=fpr_targets, bootstrap=0, seed=0)
        out.append(result)
    return out


def _mean_over_targets(rows: Sequence[RocMetrics]) -> dict[str, MeanStd]:
    dicts = [{**{k: getattr(r, k) for k in _AVERAGED}, **{tpr_key(f): v for f, v in r.tpr.items()}} for r in rows]
    return {k: MeanStd(**v) for k, v in aggregate(dicts).items()}


def evaluate_attacks(
    scores: Scores,
    *,
    keep: np.ndarray,
    eval_mask: np.ndarray,
    fpr_targets: Sequence[float],
    bootstrap: int,
    seed: int,
    fitted_params: Mapping[str, Mapping[int, Mapping[str, Any]]] | None = None,
    sanity: Scores | None = None,
    labels: np.ndarray | None = None,
    predictions: Mapping[int, np.ndarray] | None = None,
    delta: float | None = None,
    priors: Sequence[float] = DEFAULT_PRIORS,
) -> dict[str, AttackEvaluation]:
    """Evaluate every attack: per target, mean ± std over targets, pooled (with its ROC curve).

    Membership labels come from the targets' keep rows, restricted to ``eval_mask``. With
    ``sanity`` (scores of untrained targets) each attack gets a sanity check whose AUC
    should be 0.5 within its 99% interval. With the class ``labels`` (``int[N]``) the pooled
    examples are also evaluated per class, and with each target's ``predictions``
    (``int[N]``, its predicted class) on correctly vs incorrectly classified examples.
    With ``delta`` each attack gets the lower bound on ε its pooled ROC implies at that δ
    (:func:`epsilon_bound`), and with ``priors`` the precision of its flags at each prior and FPR
    target. An attack is evaluated on the records it scored (:func:`scored`).
    """
    out: dict[str, AttackEvaluation] = {}
    for name, per_target in scores.items():
        rows, evaluated = [], {t: scored(per_target[t], eval_mask) for t in sorted(per_target)}
        for target, mask in evaluated.items():
            fitted = dict((fitted_params or {}).get(name, {}).get(target, {}))
            threshold = fitted.get("threshold")
            evaluated_scores, members = per_target[target][mask], keep[target][mask]
            m = measure(evaluated_scores, members, fpr_targets=fpr_targets, bootstrap=bootstrap, seed=seed,
                        threshold=threshold)
            rows.append(TargetAttackMetrics(**vars(m), target=target, threshold=threshold, fitted_params=fitted,
                                            p_values=empirical_p_values(evaluated_scores, evaluated_scores[~members])))
        all_scores, all_members = pooled(per_target, keep, eval_mask)
        classes = correct = None
        if labels is not None and evaluated:
            classes = np.concatenate([labels[mask] for mask in evaluated.values()])
            correct = None if predictions is None else np.concatenate(
                [predictions[t][mask] == labels[mask] for t, mask in evaluated.items()])
        entry = AttackEvaluation(
            per_target=rows,
            mean=_mean_over_targets(rows),
            pooled=measure(all_scores, all_members, fpr_targets=fpr_targets, bootstrap=bootstrap, seed=seed,
                           keep_curve=True),
            slices=evaluate_slices(all_scores, all_members, slice_masks(classes, correct) if classes is not None
                                   else (), fpr_targets=fpr_targets),
        )
        roc = (entry.pooled.curve.fpr, entry.pooled.curve.tpr, entry.pooled.curve.thresholds)
        entry.precision = [PrecisionAtPrior.of(point) for point in precision_at_priors(
            all_scores, all_members, fpr_targets=fpr_targets, priors=priors, roc=roc)]
        if delta is not None:
            entry.epsilon_bound = epsilon_bound(all_scores, all_members, delta=delta, curve=entry.pooled.curve)
            entry.empirical_epsilon = entry.epsilon_bound.epsilon
        entry.pooled.curve = entry.pooled.curve.thinned()  # every point read: keep what the figures draw
        if sanity is not None:
            blank_scores, blank_members = pooled(sanity[name], keep, eval_mask)
            check = measure(blank_scores, blank_members, fpr_targets=fpr_targets, bootstrap=max(bootstrap, 200),
                            seed=seed, confidence=SANITY_CONFIDENCE)
            low, high = check.ci["auc"]
            entry.sanity = SanityCheck(auc=check.auc, auc_ci=(low, high), chance_in_ci=bool(low <= 0.5 <= high),
                                       confidence=SANITY_CONFIDENCE)
        out[name] = entry
    return out


def epsilon_bound(
    scores: np.ndarray, members: np.ndarray, *, delta: float, curve: RocCurve | None = None
) -> EpsilonBound:
    """The 95% lower bound on ε implied by one ROC at ``delta`` (Clopper–Pearson, Bonferroni over its thresholds).

    ``curve`` is that ROC when the caller already has it. See
    :func:`mia_torch.metrics.empirical_epsilon`. Pooled over the examples of a few
    models, which are not independent trials, it is the usual heuristic audit, not a proof.
    """
    roc = None if curve is None else (curve.fpr, curve.tpr, curve.thresholds)
    return EpsilonBound(**asdict(empirical_epsilon(scores, members, delta=delta, roc=roc)))


def overconfidence(logits: Any, labels: np.ndarray, members: np.ndarray) -> dict[str, float]:
    """A target's over-confidence, as :class:`~mia_torch.report.types.TargetResult` fields.

    ``logits [N, C]`` is the target's served output on one query (the identity view),
    ``labels`` the true classes and ``members`` its membership, over the evaluated
    examples. ``ece``: expected calibration error on the non-members (records the target
    never trained on: its held-out half of the population); ``ece_members`` on the
    members; ``member_confidence`` and ``nonmember_confidence``: mean probability of the
    true class on each, and ``confidence_gap`` their difference. A side without examples
    is left out.
    """
    members = np.asarray(members, dtype=bool)
    logits = np.asarray(logits, dtype=np.float64)
    out = {}
    for key, side in (("ece", ~members), ("ece_members", members)):
        if side.any():
            out[key] = expected_calibration_error(logits[side], labels[side])
    if members.any() and not members.all():
        gap = confidence_gap(logits, labels, members)
        out |= {"member_confidence": gap.member_mean, "nonmember_confidence": gap.nonmember_mean,
                "confidence_gap": gap.gap}
    return out


def save_scores(path: Path, scores: Scores) -> None:
    """Atomically save scores as ``<attack>/target_<t>`` arrays in one ``.npz`` (written as it is made)."""
    with atomic_open(path, "wb") as handle:
        np.savez(handle, **{f"{name}/target_{t}": s for name, per in scores.items() for t, s in per.items()})


def load_scores(path: Path) -> dict[str, dict[int, np.ndarray]]:
    """Inverse of :func:`save_scores`."""
    out: dict[str, dict[int, np.ndarray]] = {}
    with np.load(path, allow_pickle=False) as z:
        for key in z.files:
            name, target = key.rsplit("/target_", 1)
            out.setdefault(name, {})[int(target)] = z[key]
    return out


def empirical_p_values(scores: np.ndarray, nonmember_scores: np.ndarray) -> np.ndarray:
    """Empirical p-value of each score against the non-members' scores (higher = member).

    ``p = (1 + #{non-members scoring at least as high}) / (1 + #non-members)``: the
    probability that a record which is not a member scores this high or higher, estimated
    from the target's non-members; the +1 keeps it a valid p-value (never 0), so the
    smallest reachable value is ``1 / (1 + #non-members)``.
    """
    ordered = np.sort(np.asarray(nonmember_scores, dtype=np.float64))
    at_least = ordered.size - np.searchsorted(ordered, np.asarray(scores, dtype=np.float64), side="left")
    return (1.0 + at_least) / (1.0 + ordered.size)
