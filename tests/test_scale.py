"""Signals that stream, fits derived from one pool of sums, and the attack stage split over jobs.

The streaming attack stage (features reduced from the logits once, every target's fit
taken out of sums over all models) is compared with the dense in-memory implementation:
every target refitted from scratch on its references' logits ``[R, N, Q, C]``, through the
logits interface every attack also has.
"""
from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from helpers import TINY, attack_stage_on, make_config
from mia_torch.attacks import (
    RMIA,
    Attack,
    FeatureAttack,
    GapAttack,
    LabelOnlyAttack,
    LiRA,
    PopulationAttack,
    ReferenceFeatures,
    ReferenceSignals,
    ShokriAttack,
    ThresholdAttack,
)
from mia_torch.attacks.log_sums import LogSums
from mia_torch.data.splits import make_splits
from mia_torch.pipeline import prepare
from mia_torch.stages.attack_runs import half_of

TOL = 1e-9


def study_logits(keep: np.ndarray, labels: np.ndarray, *, queries: int = 2, classes: int = 5, seed: int = 0
                 ) -> torch.Tensor:
    """Logits ``[M, N, Q, C]`` whose true-class logit is higher where the model trained on the example, with
    per-example difficulty (so per-example calibration helps) and confident models (margins up to ~40)."""
    g = torch.Generator().manual_seed(seed)
    m, n = keep.shape
    base = 4.0 * torch.randn(n, generator=g)
    lift = base[None, :, None] + 2.0 * torch.from_numpy(keep).double()[..., None] + torch.randn(m, n, queries,
                                                                                                 generator=g)
    z = torch.randn(m, n, queries, classes, generator=g, dtype=torch.float64)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), classes).double()
    return (z + 4.0 * lift[..., None] * onehot[None, :, None, :]).float()


def logits_attack() -> Attack:
    """An attack written against the logits interface only (as in the README's Extending example)."""

    class Margin(Attack):
        def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            true = logits.gather(-1, labels[:, None, None].expand(-1, logits.shape[1], 1)).squeeze(-1)
            return true.double().mean(1)

    return Margin()


ATTACKS = {
    "loss": ThresholdAttack("loss"),
    "entropy": ThresholdAttack("entropy"),
    "population": PopulationAttack(),
    "population_ba": PopulationAttack(calibration="balanced_accuracy"),
    "lira_online": LiRA(online=True),
    "lira_offline_pe": LiRA(online=False, variance="per_example"),
    "rmia": RMIA(num_population=100),
    "rmia_online": RMIA(online=True, num_population=100),
    "label_only": LabelOnlyAttack(),
    "label_only_offline": LabelOnlyAttack(online=False),
}


@pytest.fixture(scope="module")
def study():
    splits = make_splits(8, 300, seed=3, target_ids=range(8))
    labels = np.random.default_rng(0).integers(0, 5, 300)
    logits = study_logits(splits.keep, labels)
    return splits, torch.from_numpy(labels), logits


def _assert_same_fit(fitted: Attack, refit: Attack, target_logits: torch.Tensor, labels: torch.Tensor) -> None:
    np.testing.assert_allclose(fitted.score(target_logits, labels).numpy(), refit.score(target_logits, labels).numpy(),
                               rtol=0, atol=TOL)
    ours, theirs = fitted.fitted_params(), refit.fitted_params()
    assert ours.keys() == theirs.keys()
    for key in ours:
        if ours[key] is None or theirs[key] is None:
            assert ours[key] is theirs[key], key
        else:
            assert ours[key] == pytest.approx(theirs[key], abs=TOL), key


@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_fit_taken_out_of_the_pool_equals_a_refit_from_scratch(study, name):
    """All models summed once, the target and its twin taken out: the same scores and knobs as a refit on the
    target's references (its leave-one-out threshold and RMIA's (a, T) choice included), given knobs too."""
    splits, labels, logits = study
    attack = ATTACKS[name]
    table = ReferenceFeatures.from_signals(ReferenceSignals(logits, torch.from_numpy(splits.keep), labels),
                                           attack.required_features())
    pool = attack.pool(table)
    for target in (2, 5):
        refs = list(splits.reference_ids[target])
        removed = [m for m in range(8) if m not in refs]
        refit = copy.deepcopy(attack).fit(ReferenceSignals(logits[refs], torch.from_numpy(splits.keep[refs]), labels))
        _assert_same_fit(pool.fit(removed), refit, logits[target], labels)
        knobs = copy.deepcopy(attack).fit(ReferenceSignals(logits[:4], torch.from_numpy(splits.keep[:4]), labels))
        given = copy.deepcopy(attack).fit_features(table.subset(torch.tensor(refs)), knobs=knobs.fitted_params())
        _assert_same_fit(pool.fit(removed, knobs=knobs.fitted_params()), given, logits[target], labels)


def test_log_sums_take_out_dominant_terms_without_cancellation():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(12, 50, generator=g, dtype=torch.float64) * 3.0
    x[0] += 60.0  # one term dwarfs the others: subtracting it from a plain sum would leave rounding noise
    x[5, :10] = 900.0  # and another, far beyond exp's range relative to the rest
    counted = torch.rand(12, 50, generator=g) < 0.7
    counted[0] = True
    sums = LogSums.of(x, counted, chunk=5)
    for removed in ([0], [0, 5], [5, 0, 3], []):
        models = torch.tensor([removed], dtype=torch.long).reshape(1, -1)
        got, count = sums.without(models, x[removed][None], counted[removed][None])
        rest = [m for m in range(12) if m not in removed]
        expected = torch.logsumexp(torch.where(counted[rest], x[rest], -math.inf), dim=0)
        finite = torch.isfinite(expected)
        assert torch.equal(finite, torch.isfinite(got[0]))
        torch.testing.assert_close(got[0][finite], expected[finite], rtol=1e-13, atol=0)
        assert torch.equal(count[0], counted[rest].sum(0).double())


def test_streaming_attack_stage_equals_the_dense_in_memory_reference(tmp_path):
    """Every attack's scores and knobs for several targets: the streaming stage (features, pooled fits) against
    each target refitted from scratch on its references' logits, as the attack stage did before it streamed."""
    cfg = make_config(tmp_path, [*TINY, "num_models=6", "target_ids=[0,1,3]", "sanity_check=false",
                                 "attack=[loss,modified_entropy,population,lira_online,lira_offline,rmia,rmia_online,"
                                 "label_only,gap,shokri]", "attack.shokri.epochs=5"])
    ctx = prepare(cfg, tmp_path / "run")
    ctx.attacks["margin"] = logits_attack()
    labels = ctx.data.y
    logits = study_logits(ctx.splits.keep, labels.numpy(), classes=ctx.data.num_classes)
    streamed = attack_stage_on(ctx, logits.numpy())
    for target in ctx.splits.target_ids:
        refs = list(ctx.splits.reference_ids[target])
        reference = ReferenceSignals(logits[refs], torch.from_numpy(ctx.splits.keep[refs]), labels)
        for name, attack in ctx.attacks.items():
            refit = copy.deepcopy(attack).fit(reference)
            np.testing.assert_allclose(streamed.scores[name][target], refit.score(logits[target], labels).numpy(),
                                       rtol=0, atol=TOL, err_msg=f"{name}/target {target}")
            ours = streamed.fitted_params[name][target]
            assert ours == pytest.approx(refit.fitted_params(), abs=TOL), (name, target)


def test_halves_choose_each_targets_knobs_on_the_other_half_and_never_on_the_target(tmp_path):
    cfg = make_config(tmp_path, [*TINY, "num_models=8", "target_ids=all", "sanity_check=false",
                                 "attack=[loss,lira_online,rmia]"])
    ctx = prepare(cfg, tmp_path / "run")
    assert ctx.settings.target_ids == tuple(range(8)) and ctx.settings.calibration == "halves"
    labels = ctx.data.y
    logits = study_logits(ctx.splits.keep, labels.numpy(), classes=ctx.data.num_classes)
    first = attack_stage_on(ctx, logits.numpy())
    target = 0
    other_half = [m for m in range(8) if half_of(m) != half_of(target)]
    assert other_half == [2, 3, 6, 7]
    refs = list(ctx.splits.reference_ids[target])
    for name, attack in ctx.attacks.items():
        on_half = copy.deepcopy(attack).fit(ReferenceSignals(logits[other_half],
                                                             torch.from_numpy(ctx.splits.keep[other_half]), labels))
        knobs = on_half.fitted_params()
        assert first.fitted_params[name][target] == pytest.approx(knobs, abs=TOL), name
        features = ReferenceFeatures.from_signals(
            ReferenceSignals(logits[refs], torch.from_numpy(ctx.splits.keep[refs]), labels), attack.required_features())
        refit = copy.deepcopy(attack).fit_features(features, knobs=knobs)
        np.testing.assert_allclose(first.scores[name][target], refit.score(logits[target], labels).numpy(),
                                   rtol=0, atol=TOL, err_msg=name)
    ctx.splits.keep[target] = ~ctx.splits.keep[target]  # the target's membership, flipped
    flipped = attack_stage_on(ctx, logits.numpy())
    for name in ctx.attacks:  # equal up to the rounding of taking the target out of the sums
        assert flipped.fitted_params[name][target] == first.fitted_params[name][target], name
        np.testing.assert_allclose(flipped.scores[name][target], first.scores[name][target], rtol=0, atol=TOL,
                                   err_msg=name)


def test_every_built_in_attack_reads_features_and_the_shokri_network_has_no_pool():
    feature_attacks = [ThresholdAttack(), PopulationAttack(), LiRA(), RMIA(), LabelOnlyAttack(), GapAttack(),
                       ShokriAttack()]
    assert all(isinstance(a, FeatureAttack) and a.required_features() for a in feature_attacks)
    table = ReferenceFeatures({}, torch.zeros(2, 3, dtype=torch.bool), torch.zeros(3, dtype=torch.long), 2)
    assert ShokriAttack().pool(table) is None
    assert not isinstance(logits_attack(), FeatureAttack)
