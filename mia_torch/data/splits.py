"""Seeded keep matrices: which population examples train which model.

Rows come in complementary pairs: model ``2k`` trains on a seeded random half of its
side of the population and model ``2k + 1`` on the other half. So every example is IN
for exactly half of the models (for an even number of models per side), and adding
models never changes the rows of the models that already exist, which keeps trained
models reusable when a study grows.

With early stopping, each model holds out a validation split carved from its own half
(:func:`carve_validation`). Those records are not trained on, so they are not members of
that model: the keep matrix then holds the *effective* membership (what each model
actually trained on), and ``Splits.validation`` the held-out records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

THREAT_MODELS = ("shared", "disjoint")
#: Stream tag of the validation carve-out's generator (keeps it apart from the keep matrix's draws).
_VALIDATION_STREAM = 0x7A1


@dataclass(frozen=True)
class Splits:
    """The membership layout of one experiment.

    ``keep[m, n]`` says whether example ``n`` trains model ``m``. ``eval_mask[n]`` marks
    the examples a target is evaluated on. ``reference_ids[t]`` lists the models an
    attack may use as references when model ``t`` is the target. ``validation[m, n]``
    (None without early stopping) marks the examples of model ``m``'s half held out for
    validation: not trained on, so ``keep[m, n]`` is False there.
    """

    keep: np.ndarray
    eval_mask: np.ndarray
    target_ids: tuple[int, ...]
    reference_ids: dict[int, tuple[int, ...]]
    threat_model: str
    validation: np.ndarray | None = None

    @property
    def assigned(self) -> np.ndarray:
        """The halves the models were dealt, before any validation carve-out: ``keep | validation``."""
        return self.keep if self.validation is None else self.keep | self.validation


def _paired_rows(models: list[int], side: np.ndarray, num_examples: int, seed: int, tag: int) -> dict[int, np.ndarray]:
    """Complementary half-splits of ``side`` (example indices) for ``models`` in order."""
    rows: dict[int, np.ndarray] = {}
    half = len(side) // 2
    for pair, start in enumerate(range(0, len(models), 2)):
        rng = np.random.default_rng([seed, tag, pair])
        chosen = side[rng.permutation(len(side))[:half]]
        first = np.zeros(num_examples, dtype=bool)
        first[chosen] = True
        rows[models[start]] = first
        if start + 1 < len(models):
            second = np.zeros(num_examples, dtype=bool)
            second[side] = True
            second[chosen] = False
            rows[models[start + 1]] = second
    return rows


def twin(model: int, num_models: int) -> int | None:
    """The model trained on the complement of ``model``'s half (None for an unpaired last model)."""
    other = model ^ 1
    return other if other < num_models else None


def make_splits(
    num_models: int,
    num_examples: int,
    *,
    seed: int,
    target_ids: list[int] | tuple[int, ...] = (0,),
    threat_model: str = "shared",
) -> Splits:
    """Build the keep matrix, evaluation mask and reference sets.

    ``shared`` (LiRA/RMIA standard): all models draw from the whole population and each
    target's references are all other models except the target's complementary twin.
    Leaving the twin out matters: with balanced columns, the number of references that
    hold an example would otherwise reveal whether the target holds it (a member of
    the target is IN for one reference fewer), and a model that carries no membership
    information could score above chance. Without the twin, every example is IN for
    the same number of references whatever the target's membership. ``disjoint`` (Shokri et
    al.): a seeded half of the population belongs to the target models, the other half
    to the shadow models; targets are evaluated on their half only and their
    references are the shadow models, whose data never overlaps the targets'.
    """
    if threat_model not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not one of {THREAT_MODELS}")
    targets = tuple(int(t) for t in target_ids)
    if not targets:
        raise ValueError("target_ids is empty: name at least one model index")
    bad = [t for t in targets if not 0 <= t < num_models]
    if bad or len(set(targets)) != len(targets):
        raise ValueError(f"target_ids={list(targets)} must be distinct indices in [0, num_models={num_models})")
    everyone = np.arange(num_examples)
    if threat_model == "shared":  # below 3 models a target has no reference (attacks that need none still run)
        rows = _paired_rows(list(range(num_models)), everyone, num_examples, seed, tag=0)
        eval_mask = np.ones(num_examples, dtype=bool)
        refs = {t: tuple(m for m in range(num_models) if m not in (t, twin(t, num_models))) for t in targets}
    else:
        shadows = [m for m in range(num_models) if m not in targets]
        if not shadows:
            raise ValueError("threat_model=disjoint needs shadow models: num_models must exceed len(target_ids)")
        order = np.random.default_rng([seed, 99]).permutation(num_examples)
        target_side, shadow_side = np.sort(order[: num_examples // 2]), np.sort(order[num_examples // 2 :])
        rows = _paired_rows(list(targets), target_side, num_examples, seed, tag=1)
        rows |= _paired_rows(shadows, shadow_side, num_examples, seed, tag=2)
        eval_mask = np.zeros(num_examples, dtype=bool)
        eval_mask[target_side] = True
        refs = {t: tuple(shadows) for t in targets}
    keep = np.stack([rows[m] for m in range(num_models)])
    return Splits(keep=keep, eval_mask=eval_mask, target_ids=targets, reference_ids=refs, threat_model=threat_model)


def validation_indices(members: np.ndarray, *, fraction: float, seed: int) -> np.ndarray:
    """The sorted indices of ``members`` (a model's half) held out for validation.

    ``round(fraction * len(members))`` of them, at least one and leaving at least one for
    training, drawn by a generator seeded with ``seed`` (the model's seed): a
    deterministic function of the model's half and its seed.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"train.early_stopping.validation_fraction={fraction!r} is invalid: expected in (0, 1)")
    members = np.asarray(members)
    if len(members) < 2:
        raise ValueError(f"a model with {len(members)} training example(s) cannot hold out a validation split")
    count = min(max(1, round(fraction * len(members))), len(members) - 1)
    rng = np.random.default_rng([int(seed), _VALIDATION_STREAM])
    return np.sort(members[rng.permutation(len(members))[:count]])


def carve_validation(splits: Splits, *, fraction: float, seeds: Sequence[int]) -> Splits:
    """``splits`` with a validation split carved from each model's half (model ``m`` seeded by ``seeds[m]``).

    Returns new splits whose ``keep`` is the effective membership (the half minus its
    validation records) and whose ``validation`` marks the held-out records; evaluation
    mask and references are unchanged. Carving is per model and independent of every
    other model, so the references' IN counts stay independent of a target's membership.
    """
    if splits.validation is not None:
        raise ValueError("these splits already have a validation carve-out")
    if len(seeds) != len(splits.keep):
        raise ValueError(f"carve_validation got {len(seeds)} seeds for {len(splits.keep)} models")
    validation = np.zeros_like(splits.keep)
    for m, (row, seed) in enumerate(zip(splits.keep, seeds)):
        validation[m, validation_indices(np.flatnonzero(row), fraction=fraction, seed=seed)] = True
    return replace(splits, keep=splits.keep & ~validation, validation=validation)
