"""Precision at membership priors: the formula on the ROC's points, and intervals exact at the threshold."""
import numpy as np
import pytest
from scipy.stats import beta, norm
from sklearn.metrics import roc_curve as sk_roc_curve

from mia_torch.metrics import tpr_at_fpr
from mia_torch.metrics.precision import (
    check_priors,
    expected_false_flags,
    positive_predictive_value,
    precision_at_priors,
)


def _scores(seed: int, n_pos: int = 400, n_neg: int = 600, shift: float = 1.0):
    rng = np.random.default_rng(seed)
    scores = np.r_[rng.normal(shift, 1.0, n_pos), rng.normal(0.0, 1.0, n_neg)]
    return np.round(scores, 2), np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]  # rounding makes ties


def test_ppv_is_the_formula_at_the_roc_point_of_each_fpr_target():
    scores, members = _scores(0)
    fpr, tpr, thresholds = sk_roc_curve(members, scores, drop_intermediate=False)
    points = precision_at_priors(scores, members, fpr_targets=[0.1, 0.01], priors=[0.5, 0.1, 0.01])
    assert [(p.fpr_target, p.prior) for p in points] == [(f, q) for f in (0.1, 0.01) for q in (0.5, 0.1, 0.01)]
    for p in points:
        at = np.flatnonzero(thresholds == p.threshold)
        assert len(at) == 1, "the operating point is one of the ROC's thresholds"
        assert (fpr[at[0]], tpr[at[0]]) == (p.fpr, p.tpr)
        assert p.fpr <= p.fpr_target
        assert p.tpr == tpr_at_fpr(fpr, tpr, p.fpr_target)  # the TPR reported at that FPR target
        # of the points reaching that TPR within the FPR target, the one with the fewest false positives
        assert p.fpr == fpr[(fpr <= p.fpr_target) & (tpr == p.tpr)].min()
        # independent form: expected true and false flags among a population with prior pi
        true_flags, false_flags = p.prior * p.tpr, (1 - p.prior) * p.fpr
        assert p.ppv == pytest.approx(true_flags / (true_flags + false_flags), rel=1e-12)
        assert p.ppv_ci[0] <= p.ppv <= p.ppv_ci[1]


def test_ppv_ci_is_built_from_clopper_pearson_bounds_at_root_confidence():
    scores, members = _scores(1)
    n_pos, n_neg = int(members.sum()), int((~members).sum())
    (point,) = precision_at_priors(scores, members, fpr_targets=[0.05], priors=[0.1], confidence=0.95)
    tp, fp = round(point.tpr * n_pos), round(point.fpr * n_neg)
    a = 1 - np.sqrt(0.95)
    tpr_lo, tpr_hi = beta.ppf(a / 2, tp, n_pos - tp + 1), beta.ppf(1 - a / 2, tp + 1, n_pos - tp)
    fpr_lo, fpr_hi = beta.ppf(a / 2, fp, n_neg - fp + 1), beta.ppf(1 - a / 2, fp + 1, n_neg - fp)
    low = 0.1 * tpr_lo / (0.1 * tpr_lo + 0.9 * fpr_hi)
    high = 0.1 * tpr_hi / (0.1 * tpr_hi + 0.9 * fpr_lo)
    assert point.ppv_ci == pytest.approx((low, high), rel=1e-9)


def test_ppv_ci_covers_the_true_precision_at_its_threshold():
    """Gaussian scores with known rates: at the chosen threshold the true PPV is known in closed form."""
    prior, misses = 0.1, 0
    for seed in range(150):
        scores, members = _scores(100 + seed, n_pos=150, n_neg=250, shift=1.5)
        (p,) = precision_at_priors(scores, members, fpr_targets=[0.1], priors=[prior])
        # flagged when score >= threshold; scores were rounded to 0.01, so the true rate is at threshold - 0.005
        edge = p.threshold - 0.005
        true_tpr, true_fpr = norm.sf(edge - 1.5), norm.sf(edge)
        truth = prior * true_tpr / (prior * true_tpr + (1 - prior) * true_fpr)
        misses += not p.ppv_ci[0] <= truth <= p.ppv_ci[1]
    assert misses / 150 <= 0.05 + 0.03  # level 95% (conservative), with room for the simulation's own noise


def test_nothing_flagged_has_no_precision_and_an_uninformative_interval():
    scores = np.r_[np.zeros(5), np.ones(5)]  # the non-members score highest: at FPR 0 nothing is flagged
    members = np.r_[np.ones(5, bool), np.zeros(5, bool)]
    (p,) = precision_at_priors(scores, members, fpr_targets=[0.01], priors=[0.5])
    assert p.tpr == 0 and p.fpr == 0 and np.isnan(p.ppv)
    assert p.ppv_ci == (0.0, 1.0)


def test_closed_forms_and_bad_priors():
    assert positive_predictive_value(0.05, 0.01, 0.01) == pytest.approx(0.0005 / (0.0005 + 0.0099))
    assert expected_false_flags(1000, prior=0.1, fpr=0.01) == pytest.approx(9.0)
    for bad in ([], [0.0], [1.0], [0.5, "x"], 0.5, [True]):
        with pytest.raises(ValueError, match="priors"):
            check_priors(bad)
