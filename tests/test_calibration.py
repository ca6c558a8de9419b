"""Expected calibration error and the member/non-member confidence gap, against hand-made answers."""
import math

import numpy as np
import pytest
import torch

from mia_torch.metrics import ConfidenceGap, calibration_bins, confidence_gap, expected_calibration_error


def logits_from_probs(probs) -> np.ndarray:
    return np.log(np.asarray(probs, dtype=np.float64))


def test_ece_hand_computed():
    probs = [[0.93, 0.07], [0.82, 0.18], [0.64, 0.36], [0.27, 0.73]]
    labels = [0, 1, 0, 1]  # predictions 0, 0, 0, 1: correct, wrong, correct, correct
    z = logits_from_probs(probs)
    # 15 bins: the four confidences .93 .82 .64 .73 fall into four different bins
    assert expected_calibration_error(z, labels) == pytest.approx((0.07 + 0.82 + 0.36 + 0.27) / 4, abs=1e-12)
    # one bin: |accuracy - mean confidence| = |0.75 - 0.78|
    assert expected_calibration_error(z, labels, num_bins=1) == pytest.approx(0.03, abs=1e-12)
    bins = calibration_bins(z, labels, num_bins=10)
    assert bins.counts.sum() == 4 and bins.counts[[9, 8, 6, 7]].tolist() == [1, 1, 1, 1]
    assert bins.accuracy[8] == 0.0 and bins.confidence[8] == pytest.approx(0.82)
    assert np.isnan(bins.accuracy[0]) and bins.edges[[0, -1]].tolist() == [0.0, 1.0]


def test_ece_of_calibrated_and_overconfident_models():
    rng = np.random.default_rng(0)
    n = 40_000
    conf = rng.uniform(0.5, 1.0, n)
    # calibrated: the predicted class (0) is right with probability equal to its confidence
    z = np.stack([np.log(conf), np.log1p(-conf)], 1)
    labels = np.where(rng.random(n) < conf, 0, 1)
    assert expected_calibration_error(z, labels) < 0.01
    # over-confident: 99.9% sure, right 75% of the time
    z = np.tile(logits_from_probs([0.999, 0.001]), (n, 1))
    labels = np.where(rng.random(n) < 0.75, 0, 1)
    assert expected_calibration_error(torch.from_numpy(z).float(), torch.from_numpy(labels)) == pytest.approx(
        0.999 - 0.75, abs=0.01)


def test_confidence_gap_uses_the_true_class_probability():
    member_probs = [[0.999, 0.001]] * 3 + [[0.2, 0.8]]  # the last member: confidently wrong, p_y = 0.2
    nonmember_probs = [[0.75, 0.25]] * 2 + [[0.55, 0.45]] * 2
    z = logits_from_probs(member_probs + nonmember_probs)
    labels = [0] * 8
    member = np.array([True] * 4 + [False] * 4)
    gap = confidence_gap(z, labels, member)
    assert isinstance(gap, ConfidenceGap)
    assert gap.member_mean == pytest.approx((3 * 0.999 + 0.2) / 4, abs=1e-12)  # not the max probability 0.8
    assert gap.member_median == pytest.approx(0.999, abs=1e-12)
    assert gap.nonmember_mean == pytest.approx(0.65, abs=1e-12)
    assert gap.nonmember_median == pytest.approx(0.65, abs=1e-12)
    assert gap.gap == pytest.approx(gap.member_mean - 0.65, abs=1e-12)
    assert gap.median_gap == pytest.approx(0.999 - 0.65, abs=1e-12)
    assert (gap.num_members, gap.num_nonmembers) == (4, 4)


def test_confidence_gap_resolves_saturated_members():
    z = np.array([[60.0, 0.0], [30.0, 0.0], [2.0, 0.0], [1.0, 0.0]])
    gap = confidence_gap(z, [0, 0, 0, 0], [True, True, False, False])
    assert gap.nonmember_mean == pytest.approx((1 / (1 + math.exp(-2)) + 1 / (1 + math.exp(-1))) / 2)
    assert gap.member_mean == pytest.approx(1 - math.exp(-30) / 2, abs=1e-15)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: expected_calibration_error(np.zeros((3, 2)), [0, 1]), "labels"),
        (lambda: expected_calibration_error(np.zeros(3), [0, 1, 0]), "logits"),
        (lambda: expected_calibration_error(np.zeros((3, 2)), [0, 1, 0], num_bins=0), "num_bins"),
        (lambda: expected_calibration_error(np.full((2, 2), np.nan), [0, 1]), "non-finite"),
        (lambda: confidence_gap(np.zeros((3, 2)), [0, 1, 0], [True, True, True]), "members and non-members"),
        (lambda: confidence_gap(np.zeros((3, 2)), [0, 1, 0], [True, False]), "member"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
