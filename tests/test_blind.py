"""The blind baseline: chance on random membership, high when members and non-members differ; the warning rule."""
import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from helpers import digits_tensors
from mia_torch.attacks.blind import BlindBaseline, record_features
from mia_torch.metrics.blind import blind_verdict, held_out_auc


@pytest.mark.parametrize("model", ["hgb", "logistic"])
def test_random_membership_is_chance_within_its_interval(model):
    x, y = digits_tensors(shuffle_seed=0)
    members = np.random.default_rng(1).permutation(len(y)) < len(y) // 2  # a study's random half
    scores, folds = BlindBaseline(model=model).held_out_scores(x, y, members)
    result = held_out_auc(scores, members, folds)
    assert result.interval[0] <= 0.5 <= result.interval[1], result
    assert not blind_verdict(result.auc, result.interval, {"loss": 0.5}).warning


def test_members_and_nonmembers_from_different_sources_are_separated():
    """Members drawn class-balanced from the digits; non-members the same kind of images, brighter and skewed to
    three classes (another site, another scanner): the blind baseline separates them without any model."""
    x, y = digits_tensors(shuffle_seed=2)
    rng = np.random.default_rng(3)
    members = np.zeros(len(y), bool)
    for c in range(10):
        members[rng.permutation(np.flatnonzero(y.numpy() == c))[:60]] = True
    others = np.flatnonzero(~members & np.isin(y.numpy(), [1, 4, 7]))[:400]
    keep = np.r_[np.flatnonzero(members), others]
    shifted = x.clone()
    shifted[others] = shifted[others] * 0.9 + 0.3
    scores, folds = BlindBaseline().held_out_scores(shifted[keep], y[keep], members[keep])
    result = held_out_auc(scores, members[keep], folds)
    assert result.interval[0] > 0.8, result
    verdict = blind_verdict(result.auc, result.interval, {"loss": 0.62, "lira_offline": result.auc + 0.01})
    assert verdict.shift and verdict.warning and set(verdict.not_beating) == {"loss", "lira_offline"}


def test_held_out_auc_is_the_mean_of_the_folds_with_the_mean_of_their_intervals():
    rng = np.random.default_rng(4)
    members = rng.random(600) < 0.5
    scores = rng.normal(size=600) + 0.8 * members
    folds = np.arange(600) % 3
    result = held_out_auc(scores, members, folds, confidence=0.9)
    per_fold = [roc_auc_score(members[folds == k], scores[folds == k]) for k in range(3)]
    assert result.fold_aucs == pytest.approx(per_fold, abs=1e-12)
    assert result.auc == pytest.approx(np.mean(per_fold), abs=1e-12)
    narrower = held_out_auc(scores[folds == 0], members[folds == 0], np.zeros(200), confidence=1 - 0.1 / 3)
    assert narrower.interval[0] <= per_fold[0] <= narrower.interval[1]
    assert result.interval[0] < result.auc < result.interval[1]


def test_warning_rule_needs_a_significant_blind_baseline_and_an_attack_that_does_not_clear_it():
    weak = {"loss": 0.51, "lira": 0.505}
    assert not blind_verdict(0.5, (0.47, 0.53), weak).warning  # weak attacks beside a chance-level blind baseline
    assert not blind_verdict(0.515, (0.499, 0.53), weak).shift  # 0.5 inside the interval: no shift claimed
    shifted = blind_verdict(0.8, (0.77, 0.83), {"loss": 0.81, "lira": 0.823, "strong": 0.9})
    assert shifted.warning and shifted.not_beating == ("loss",)  # lira clears 0.8 by more than 0.02
    cleared = blind_verdict(0.6, (0.57, 0.63), {"strong": 0.9})
    assert cleared.shift and not cleared.warning
    with pytest.raises(ValueError, match="margin"):
        blind_verdict(0.5, (0.4, 0.6), {}, margin=-1)


def test_features_of_images_and_tables_and_too_few_records():
    images = torch.randn(6, 3, 32, 32)
    features = record_features(images, torch.arange(6), image_size=8)
    assert features.shape == (6, 3 * 8 * 8 + 4 * 3 + 1) and (features[:, -1] == np.arange(6)).all()
    assert record_features(torch.randn(5, 7), torch.zeros(5, dtype=torch.long)).shape == (5, 8)
    with pytest.raises(ValueError, match="attack.blind.folds"):
        BlindBaseline(folds=5).held_out_scores(torch.randn(20, 3), torch.zeros(20, dtype=torch.long),
                                               np.r_[np.ones(4, bool), np.zeros(16, bool)])
    with pytest.raises(ValueError, match="attack.blind.model"):
        BlindBaseline(model="forest")
