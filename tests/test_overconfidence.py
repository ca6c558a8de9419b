"""Over-confidence per target: ECE and the member vs non-member confidence, from the served output."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import TINY, run_experiment
from mia_torch.evaluation import overconfidence
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.signals.manifest import load_run_signals


def _logits_with_probabilities(p_first: list[float]) -> np.ndarray:
    """Two-class logits whose softmax gives probability ``p`` to class 0."""
    return np.array([[math.log(p / (1 - p)), 0.0] for p in p_first])


def test_known_confidences_and_calibration_errors():
    # members: true class 0 at probability 0.999, all predicted correctly
    # non-members: three predicted correctly at 0.75, one wrongly (class 1 at 0.75, so p_true = 0.25)
    logits = _logits_with_probabilities([0.999] * 4 + [0.75] * 3 + [0.25])
    labels = np.zeros(8, dtype=int)
    members = np.array([True] * 4 + [False] * 4)
    found = overconfidence(logits, labels, members)
    assert found["member_confidence"] == pytest.approx(0.999)
    assert found["nonmember_confidence"] == pytest.approx((3 * 0.75 + 0.25) / 4)
    assert found["confidence_gap"] == pytest.approx(0.999 - 0.625)
    assert found["ece_members"] == pytest.approx(0.001)  # accuracy 1, confidence 0.999
    assert found["ece"] == pytest.approx(0.0, abs=1e-12)  # non-members: confidence 0.75, accuracy 3/4

    overconfident = overconfidence(_logits_with_probabilities([0.999] * 4 + [0.9] * 2 + [0.1] * 2), labels, members)
    assert overconfident["ece"] == pytest.approx(0.9 - 0.5)  # confidence 0.9 everywhere, half of them right


def test_a_side_without_examples_is_left_out():
    logits = _logits_with_probabilities([0.9, 0.8])
    found = overconfidence(logits, np.zeros(2, dtype=int), np.array([True, True]))
    assert set(found) == {"ece_members"}


def _true_class_probability(run_dir, target: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """p_y of the target's served output on the identity query, and its membership, from the run's own files."""
    config = RunResults.from_dict(read_json(run_dir / "results.json")).config
    served = load_run_signals(run_dir, models=[target])[0, :, config["queries"].index("identity")]
    labels = np.load(run_dir / "labels.npy")
    keep = np.load(run_dir / "keep.npy")[target]
    p = torch.softmax(torch.from_numpy(served).double(), dim=-1).numpy()[np.arange(len(labels)), labels]
    return p, keep


def test_calibration_is_measured_on_the_served_output_and_reported(tmp_path):
    """output=temperature serves flatter probabilities from the same models: the confidences follow them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    common = [*TINY, "attack=[loss]", "sanity_check=false"]
    plain = run_experiment(tmp_path, common, name="logits")
    warm = run_experiment(tmp_path, [*common, "output=temperature", "output.t=4"], name="temperature")
    assert warm.trained_models == []  # the same models, served differently
    for result, name in ((plain, "logits"), (warm, "temperature")):
        p, members = _true_class_probability(tmp_path / name)
        target = result.targets[0]
        assert target.member_confidence == pytest.approx(p[members].mean(), rel=1e-6)
        assert target.nonmember_confidence == pytest.approx(p[~members].mean(), rel=1e-6)
        assert target.confidence_gap == pytest.approx(p[members].mean() - p[~members].mean(), rel=1e-6, abs=1e-9)
        assert 0 <= target.ece <= 1 and 0 <= target.ece_members <= 1
    assert warm.targets[0].member_confidence < plain.targets[0].member_confidence
    assert warm.targets[0].ece != plain.targets[0].ece

    saved = RunResults.from_dict(read_json(tmp_path / "logits" / "results.json")).targets[0]
    assert saved == plain.targets[0]  # every over-confidence field is written and read back
    events = EventAccumulator(str(tmp_path / "logits" / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("target/0/ece")[0].value == pytest.approx(saved.ece, rel=1e-5)
    assert events.Scalars("target/0/confidence_gap")[0].value == pytest.approx(saved.confidence_gap, rel=1e-5)


# An overfit model: a 2-layer MLP memorises 200 records of which 30% carry a wrong label
# (train accuracy 1.0, members at 99% confidence, non-members at 54-63%).
OVERFIT = ["dataset=synthetic", "dataset.num_examples=400", "dataset.num_test=100", "dataset.label_noise=0.3",
           "model=mlp", "num_models=3", "train.epochs=80", "attack=[loss]", "sanity_check=false", "bootstrap=0",
           "progress=false"]


@pytest.fixture(scope="module")
def smoothing_runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smoothing")
    return {ls: run_experiment(tmp, [*OVERFIT, f"train.label_smoothing={ls}"], name=f"ls{ls}").targets[0]
            for ls in (0.0, 0.1, 0.5)}


def test_label_smoothing_lowers_the_calibration_error_of_an_overfit_model(smoothing_runs):
    """Measured (seeds 0, 1, 2): ECE on non-members 0.27 / 0.18 / 0.23 without smoothing, 0.12 / 0.12 / 0.17 at 0.1."""
    plain, smoothed = smoothing_runs[0.0], smoothing_runs[0.1]
    assert plain.train_acc == 1.0 and plain.member_confidence > 0.95  # memorised, over-confident
    assert smoothed.ece < plain.ece - 0.05


def test_strong_label_smoothing_narrows_the_member_nonmember_confidence_gap(smoothing_runs):
    """Measured (seeds 0, 1, 2): gap 0.45 / 0.36 / 0.39 without smoothing, 0.22 / 0.19 / 0.20 at 0.5.

    Smoothing lowers the confidence on members and non-members alike; only strong
    smoothing, which caps the members' confidence near 1 - 0.5 * 9/10, narrows the gap
    (at 0.1 it widened it in all three seeds, while lowering the ECE).
    """
    plain, strong = smoothing_runs[0.0], smoothing_runs[0.5]
    assert strong.member_confidence < 0.6
    assert strong.confidence_gap < plain.confidence_gap - 0.1
