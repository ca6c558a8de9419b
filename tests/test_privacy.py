"""Empirical epsilon lower bound: known-epsilon randomized response, no-information scores, the formula."""
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from mia_torch.metrics import EpsilonLowerBound, empirical_epsilon, privacy


def randomized_response(epsilon: float, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A member answers 1 with probability e^eps / (1 + e^eps), a non-member with 1 / (1 + e^eps): exactly eps-DP."""
    rng = np.random.default_rng(seed)
    member = rng.random(n) < 0.5
    p = math.exp(epsilon) / (1 + math.exp(epsilon))
    answer = np.where(member, rng.random(n) < p, rng.random(n) < 1 - p)
    return answer.astype(np.float64), member


@pytest.mark.parametrize("epsilon", [0.5, 1.0, 2.0])
def test_randomized_response_bound_is_below_and_approaches_the_true_epsilon(epsilon):
    # one fixed draw per n (the rate at which the bound may exceed epsilon is the next test's)
    bounds = [empirical_epsilon(*randomized_response(epsilon, n, seed=0), delta=0.0).epsilon
              for n in (1_000, 10_000, 200_000)]
    assert all(b <= epsilon for b in bounds), bounds
    assert bounds[0] < bounds[1] < bounds[2], bounds
    assert bounds[2] > 0.93 * epsilon, bounds


def test_bound_exceeds_the_true_epsilon_at_most_at_the_stated_rate():
    trials = 300
    over = sum(empirical_epsilon(*randomized_response(1.0, 400, seed=s), delta=0.0).epsilon > 1.0
               for s in range(trials))
    assert over <= 0.05 * trials + 3 * math.sqrt(0.05 * 0.95 * trials), over


def test_no_information_scores_give_no_privacy_loss():
    rng = np.random.default_rng(2)
    corrected, plain = [], []
    for _ in range(20):
        scores, member = rng.normal(size=3000), rng.random(3000) < 0.5
        corrected.append(empirical_epsilon(scores, member, delta=1e-5).epsilon)
        plain.append(empirical_epsilon(scores, member, delta=1e-5, correction="none").epsilon)
    assert max(corrected) <= 0.05, corrected
    assert all(c <= p for c, p in zip(corrected, plain))  # the correction only makes it more careful
    assert max(plain) < 0.5, plain


def test_formula_and_intervals_at_a_known_operating_point():
    # 100 members, 80 answer 1; 100 non-members, 20 answer 1: one interior threshold.
    member = np.r_[np.ones(100, bool), np.zeros(100, bool)]
    scores = np.r_[np.ones(80), np.zeros(20), np.ones(20), np.zeros(80)]
    result = empirical_epsilon(scores, member, delta=0.01, confidence=0.9, correction="none")
    assert isinstance(result, EpsilonLowerBound) and result.num_thresholds == 1
    tpr_ci = binomtest(80, 100).proportion_ci(confidence_level=0.9, method="exact")
    fpr_ci = binomtest(20, 100).proportion_ci(confidence_level=0.9, method="exact")
    expected = max(math.log((tpr_ci.low - 0.01) / fpr_ci.high), math.log((1 - 0.01 - fpr_ci.high) / (1 - tpr_ci.low)))
    assert result.epsilon == pytest.approx(expected, rel=1e-9)
    assert (result.threshold, result.tpr, result.fpr) == (1.0, 0.8, 0.2)
    assert result.tpr_interval == pytest.approx((tpr_ci.low, tpr_ci.high), rel=1e-9)
    assert result.fpr_interval == pytest.approx((fpr_ci.low, fpr_ci.high), rel=1e-9)
    assert expected < math.log(0.8 / 0.2)  # the intervals make it conservative
    # a larger delta can only lower the bound
    assert empirical_epsilon(scores, member, delta=0.1, correction="none").epsilon < result.epsilon


def test_bonferroni_counts_the_thresholds_tried():
    rng = np.random.default_rng(3)
    member = rng.random(500) < 0.5
    scores = rng.normal(size=500) + 1.5 * member
    corrected = empirical_epsilon(scores, member, delta=0.0)
    plain = empirical_epsilon(scores, member, delta=0.0, correction="none")
    assert corrected.num_thresholds == plain.num_thresholds == 499  # distinct scores, endpoints excluded
    assert 0 < corrected.epsilon < plain.epsilon
    lo, hi = corrected.tpr_interval
    assert lo <= corrected.tpr <= hi


@pytest.mark.parametrize("block", [1, 5, 64])
def test_only_points_that_can_be_the_largest_are_evaluated_and_the_answer_is_every_points(monkeypatch, block):
    """The bound, its threshold and intervals equal an evaluation of every ROC point (ties: the first point),
    with exact intervals computed for part of the points only."""
    rng = np.random.default_rng(block)
    member = rng.random(3000) < 0.4
    scores = np.round(rng.normal(size=3000) + 1.2 * member, 1)  # tied scores: ROC points with several examples
    for delta in (0.0, 1e-3, 0.2):
        every = empirical_epsilon(scores, member, delta=delta)  # one block of 2^14 holds all 99 points
        evaluated = []
        bounds = privacy._bounds
        monkeypatch.setattr(privacy, "BOUND_BLOCK", block)
        monkeypatch.setattr(privacy, "_bounds", lambda tp, *a, **k: evaluated.append(tp.size) or bounds(tp, *a, **k))
        assert empirical_epsilon(scores, member, delta=delta) == every
        assert sum(evaluated) < every.num_thresholds
        monkeypatch.undo()


@pytest.mark.parametrize(
    "kwargs, match",
    [({"delta": 1.0}, "delta"), ({"delta": -0.1}, "delta"), ({"delta": 0.0, "confidence": 1.0}, "confidence"),
     ({"delta": 0.0, "correction": "holm"}, "correction")],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        empirical_epsilon([0.1, 0.9], [False, True], **kwargs)
