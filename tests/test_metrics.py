"""Metrics: ROC/AUC/TPR@FPR against scikit-learn, membership metrics, bootstrap, aggregate."""
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from mia_torch.metrics import (
    aggregate,
    auc_score,
    average_ranks,
    bootstrap_intervals,
    membership_metrics,
    roc_curve,
    tpr_at_fpr,
    tpr_key,
)


def _random_case(seed, n=2000, ties=False):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.4
    if ties:
        scores = rng.integers(0, 6, size=n).astype(np.float64) + labels * rng.integers(0, 2, size=n)
    else:
        scores = rng.normal(size=n) + 0.7 * labels
    return scores, labels


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn_exactly(seed, ties):
    scores, labels = _random_case(seed, ties=ties)
    fpr, tpr, thr = roc_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_array_equal(fpr, sk_fpr)
    np.testing.assert_array_equal(tpr, sk_tpr)
    np.testing.assert_array_equal(thr, sk_thr)
    if ties:
        assert len(thr) <= 1 + len(np.unique(scores))  # one threshold per distinct value
    auc = auc_score(fpr, tpr)
    assert auc == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-12)
    for target in (0.0, 0.001, 0.01, 0.1, 0.5, 1.0):
        expected = sk_tpr[sk_fpr <= target].max()
        assert tpr_at_fpr(fpr, tpr, target) == expected


def test_roc_curve_float32_and_int_labels():
    scores, labels = _random_case(5)
    a = roc_curve(scores.astype(np.float32), labels.astype(int))
    b = skm.roc_curve(labels, scores.astype(np.float32), drop_intermediate=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_tpr_at_fpr_hand_made():
    # 10 non-members, 4 members; descending order of scores:
    # 9.0 M, 8.0 N, 7.0 M, 6.0 M, 5.0 N, ..., 0.5 M (lowest)
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.5, 2.0, 1.5, 1.0, 0.8, 0.6, 0.5])
    labels = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], dtype=bool)
    fpr, tpr, thr = roc_curve(scores, labels)
    # below FPR 0.1 only the top member is caught without any false positive
    assert tpr_at_fpr(fpr, tpr, 0.0) == 0.25
    assert tpr_at_fpr(fpr, tpr, 0.05) == 0.25
    # at FPR exactly 0.1 (one false positive) the next two members are reached: 3/4
    assert tpr_at_fpr(fpr, tpr, 0.1) == 0.75
    assert tpr_at_fpr(fpr, tpr, 0.15) == 0.75
    # the last member needs all ten false positives
    assert tpr_at_fpr(fpr, tpr, 0.95) == 0.75
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0
    m = membership_metrics(scores, labels, fpr_targets=(0.1, 0.05))
    assert m["tpr@0.1fpr"] == 0.75 and m["tpr@0.05fpr"] == 0.25
    assert m["advantage"] == pytest.approx(0.65)  # 0.75 - 0.1
    assert m["num_members"] == 4 and m["num_nonmembers"] == 10


def test_membership_metrics_separable_and_reversed():
    labels = np.r_[np.ones(50, bool), np.zeros(70, bool)]
    scores = np.r_[np.linspace(2, 3, 50), np.linspace(0, 1, 70)]
    m = membership_metrics(scores, labels)
    assert set(m) >= {
        "auc", "advantage", "balanced_accuracy", "balanced_accuracy_threshold",
        "tpr@0.01fpr", "tpr@0.001fpr", "num_members", "num_nonmembers",
    }
    assert m["auc"] == 1.0 and m["advantage"] == 1.0
    assert m["balanced_accuracy"] == 1.0 and m["balanced_accuracy_threshold"] == "best"
    assert m["tpr@0.001fpr"] == 1.0
    assert all(isinstance(m[k], float) for k in ("auc", "advantage", "tpr@0.01fpr"))
    r = membership_metrics(-scores, labels)
    assert r["auc"] == 0.0 and r["advantage"] == 0.0 and r["tpr@0.01fpr"] == 0.0
    assert r["balanced_accuracy"] == 0.5


def test_balanced_accuracy_calibrated_threshold():
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    labels = np.array([0, 0, 1, 0, 1, 0, 1, 1], dtype=bool)
    m = membership_metrics(scores, labels, threshold=0.5)
    # predict member for score >= 0.5: TPR = 3/4, TNR = 3/4
    assert m["balanced_accuracy"] == pytest.approx(0.75)
    assert m["balanced_accuracy_threshold"] == "calibrated"
    assert m["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels, scores >= 0.5)
    )
    best = membership_metrics(scores, labels)
    assert best["balanced_accuracy"] == pytest.approx(0.5 + best["advantage"] / 2)


@pytest.mark.parametrize(
    "scores,labels,match",
    [
        (np.array([0.1, 0.2, 0.3]), np.array([True, True, True]), "both"),
        (np.array([0.1, 0.2, 0.3]), np.array([False, False, False]), "both"),
        (np.array([0.1, 0.2]), np.array([True, False, True]), "length"),
        (np.array([0.1, np.nan, 0.3]), np.array([True, False, True]), "non-finite"),
        (np.array([0.1, np.inf, 0.3]), np.array([True, False, True]), "non-finite"),
        (np.array([0.1, 0.2, 0.3]), np.array([0, 2, 1]), "0/1"),
        (np.ones((2, 2)), np.array([True, False]), "1-D"),
    ],
)
def test_invalid_input_raises(scores, labels, match):
    with pytest.raises(ValueError, match=match):
        membership_metrics(scores, labels)
    with pytest.raises(ValueError):
        roc_curve(scores, labels)
    with pytest.raises(ValueError):
        bootstrap_intervals(scores, labels, fpr_targets=(0.01,), num_resamples=5)


def test_invalid_fpr_target_raises():
    scores, labels = _random_case(0, n=100)
    with pytest.raises(ValueError):
        membership_metrics(scores, labels, fpr_targets=(0.0,))
    with pytest.raises(ValueError):
        membership_metrics(scores, labels, fpr_targets=(1.5,))


def test_average_ranks_matches_scipy():
    from scipy.stats import rankdata

    x = np.random.default_rng(0).integers(0, 10, size=300).astype(float)
    np.testing.assert_array_equal(average_ranks(x), rankdata(x, method="average"))


def _gaussian_case(n_per_class, d, seed):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(d, 1.0, n_per_class), rng.normal(0.0, 1.0, n_per_class)]
    labels = np.r_[np.ones(n_per_class, bool), np.zeros(n_per_class, bool)]
    return scores, labels


def test_bootstrap_contains_estimate_and_is_deterministic():
    scores, labels = _gaussian_case(2000, 1.0, seed=1)
    targets = (0.1, 0.01)
    m = membership_metrics(scores, labels, fpr_targets=targets)
    ci = bootstrap_intervals(scores, labels, fpr_targets=targets, num_resamples=200, seed=3)
    assert set(ci) == {"auc", "advantage", "tpr@0.1fpr", "tpr@0.01fpr"}
    for key, (low, high) in ci.items():
        assert isinstance(low, float) and isinstance(high, float)
        assert low < m[key] < high, key
    again = bootstrap_intervals(scores, labels, fpr_targets=targets, num_resamples=200, seed=3)
    assert again == ci
    other = bootstrap_intervals(scores, labels, fpr_targets=targets, num_resamples=200, seed=4)
    assert other != ci


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("draw_chunk", [7, 1 << 22])
def test_bootstrap_resample_equals_direct_metrics(monkeypatch, ties, draw_chunk):
    """The count-based resampling computes exactly the metrics of the resampled data (drawn in one go or in
    chunks), at FPR targets from below 1/N to 1."""
    import mia_torch.metrics.bootstrap as bootstrap

    monkeypatch.setattr(bootstrap, "DRAW_CHUNK", draw_chunk)
    targets = (1.0, 0.3, 0.05, 1 / 240, 1e-6)
    scores, labels = _random_case(7, n=400, ties=ties)
    samples = bootstrap.bootstrap_samples(scores, labels, fpr_targets=targets, num_resamples=6, seed=11)
    rng = np.random.default_rng(11)
    mem = np.flatnonzero(labels)
    non = np.flatnonzero(~labels)

    def draws(n):
        return np.concatenate([rng.integers(0, n, min(draw_chunk, n - s)) for s in range(0, n, draw_chunk)])

    for b in range(6):
        idx = np.r_[mem[draws(mem.size)], non[draws(non.size)]]
        direct = membership_metrics(scores[idx], labels[idx], fpr_targets=targets)
        for key in ("auc", "advantage", *(tpr_key(t) for t in targets)):
            assert samples[key][b] == pytest.approx(direct[key], abs=1e-12), key


def test_bootstrap_narrows_with_n():
    small = bootstrap_intervals(*_gaussian_case(250, 1.0, 0), fpr_targets=(0.1,), seed=0)
    large = bootstrap_intervals(*_gaussian_case(10000, 1.0, 0), fpr_targets=(0.1,), seed=0)
    for key in ("auc", "tpr@0.1fpr"):
        w_small = small[key][1] - small[key][0]
        w_large = large[key][1] - large[key][0]
        assert w_large < 0.5 * w_small, key


def test_bootstrap_covers_true_auc():
    d = 1.0
    true_auc = 0.5 * (1.0 + math.erf(d / math.sqrt(2) / math.sqrt(2)))  # Phi(d / sqrt 2)
    scores, labels = _gaussian_case(20000, d, seed=2)
    low, high = bootstrap_intervals(scores, labels, fpr_targets=(), seed=0)["auc"]
    assert low < true_auc < high
    assert high - low < 0.02


def test_aggregate_mean_std():
    per_target = [
        {"auc": 0.6, "tpr@0.01fpr": 0.02, "balanced_accuracy_threshold": "best", "num_members": 10},
        {"auc": 0.8, "tpr@0.01fpr": 0.04, "balanced_accuracy_threshold": "best", "num_members": 10},
    ]
    agg = aggregate(per_target)
    assert "balanced_accuracy_threshold" not in agg
    assert agg["auc"]["mean"] == pytest.approx(0.7)
    assert agg["auc"]["std"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    assert agg["tpr@0.01fpr"]["mean"] == pytest.approx(0.03)
    assert agg["num_members"] == {"mean": 10.0, "std": 0.0}
    assert aggregate(per_target[:1])["auc"] == {"mean": 0.6, "std": 0.0}
    with pytest.raises(ValueError):
        aggregate([])


def test_clopper_pearson_matches_scipy_exact_interval_and_covers():
    from scipy.stats import binomtest

    from mia_torch.metrics import clopper_pearson

    for k, n in [(0, 10), (3, 10), (10, 10), (1, 750), (37, 1000)]:
        low, high = clopper_pearson(k, n, confidence=0.95)
        ref = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
        assert float(low) == pytest.approx(ref.low, abs=1e-12)
        assert float(high) == pytest.approx(ref.high, abs=1e-12)
    # coverage: for p = 0.05, n = 200, at least 95% of draws have an interval containing p
    rng = np.random.default_rng(0)
    draws = rng.binomial(200, 0.05, size=4000)
    low, high = clopper_pearson(draws, 200)
    assert np.mean((low <= 0.05) & (0.05 <= high)) >= 0.95
    with pytest.raises(ValueError):
        clopper_pearson(5, 3)
