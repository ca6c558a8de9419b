"""Label-only attacks (gap, label_only) on synthetic label outputs with a known structure.

Every example n has a probability p_out[n] that a model which did not train on it
predicts its label correctly on one query, and p_in[n] >= p_out[n] for one that did; the
Q queries are independent draws. Most examples are easy (every model gets them right),
some are hard. The count K of correct queries is then Binomial(Q, p), and the
Bayes-optimal membership score with p_in and p_out known is the binomial likelihood
ratio, whose exact AUC is computed by weighting every (example, count) pair with its
probability under IN and OUT (scikit-learn's weighted ROC AUC).
"""
import math
import warnings

import numpy as np
import pytest
import torch
from scipy.stats import betabinom, binom
from sklearn.metrics import roc_auc_score, roc_curve

from mia_torch.attacks import GapAttack, LabelOnlyAttack, ReferenceSignals
from mia_torch.signals.output import ServedOutput, serve

C = 10


def label_logits(correct: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., N, Q, C]`` predicting the true label where ``correct``, the next class otherwise.

    Only the predicted label matters to these attacks (checked below against ``output=label``).
    """
    predicted = torch.where(correct, labels[:, None], (labels[:, None] + 1) % C)
    return torch.nn.functional.one_hot(predicted, C).float()


def make_problem(r, n, q, *, seed=0, hard=0.3, zero_info=False):
    g = torch.Generator().manual_seed(seed)
    is_hard = torch.rand(n, generator=g) < hard
    p_out = torch.where(is_hard, 0.1 + 0.8 * torch.rand(n, generator=g), torch.full((n,), 0.99))
    p_in = 1.0 - 0.2 * (1.0 - p_out)  # training on an example makes its label more robust
    labels = torch.randint(0, C, (n,), generator=g)
    keep = torch.rand(r, n, generator=g) < 0.5
    p_ref = torch.where(keep, p_in, p_out)
    ref = ReferenceSignals(label_logits(torch.rand(r, n, q, generator=g) < p_ref[..., None], labels), keep, labels)
    member = torch.rand(n, generator=g) < 0.5
    p_target = p_out if zero_info else torch.where(member, p_in, p_out)
    target = label_logits(torch.rand(n, q, generator=g) < p_target[:, None], labels)
    return ref, target, labels, member, p_in, p_out


def optimal_auc(p_in: torch.Tensor, p_out: torch.Tensor, q: int) -> float:
    """Exact AUC of the binomial likelihood ratio (p_in, p_out known) over every (example, count) pair."""
    k = np.arange(q + 1)
    pin, pout = p_in.double().numpy()[:, None], p_out.double().numpy()[:, None]
    w_in, w_out = binom.pmf(k, q, pin), binom.pmf(k, q, pout)
    llr = binom.logpmf(k, q, pin) - binom.logpmf(k, q, pout)
    scores = np.concatenate([llr.ravel(), llr.ravel()])
    labels = np.concatenate([np.ones(llr.size), np.zeros(llr.size)])
    return float(roc_auc_score(labels, scores, sample_weight=np.concatenate([w_in.ravel(), w_out.ravel()])))


def auc(scores: torch.Tensor, member: torch.Tensor) -> float:
    return float(roc_auc_score(member.numpy(), scores.double().numpy()))


def tpr_at(scores: torch.Tensor, member: torch.Tensor, fpr_target: float) -> float:
    fpr, tpr, _ = roc_curve(member.numpy(), scores.double().numpy(), drop_intermediate=False)
    return float(tpr[fpr <= fpr_target].max())


def test_label_only_approaches_the_bayes_auc_and_beats_gap_at_low_fpr():
    q, n = 8, 4000
    ref, target, labels, member, p_in, p_out = make_problem(32, n, q, seed=1)
    best = optimal_auc(p_in, p_out, q)
    online = LabelOnlyAttack().fit(ref).score(target, labels)
    offline = LabelOnlyAttack(online=False).fit(ref).score(target, labels)
    gap = GapAttack().fit(ref).score(target, labels)
    assert set(gap.unique().tolist()) == {0.0, 1.0}
    se = math.sqrt(1 / (3 * n))  # about one standard error of an AUC on n examples
    assert best - 4 * se < auc(online, member) < best + 3 * se
    assert auc(offline, member) > auc(gap, member) + 0.02
    # Gap cannot rank within "correct": at 1% FPR it finds nothing; robustness counts do.
    assert tpr_at(gap, member, 0.01) < 0.01
    assert tpr_at(online, member, 0.01) > 0.05
    assert tpr_at(offline, member, 0.01) > 0.05


def test_more_queries_help_the_label_only_attack():
    n = 3000
    aucs = []
    for q in (1, 4, 8):
        ref, target, labels, member, _, _ = make_problem(16, n, q, seed=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aucs.append(auc(LabelOnlyAttack().fit(ref).score(target, labels), member))
    assert aucs[0] + 0.01 < aucs[1] < aucs[2]


def test_no_information_target_scores_chance():
    n = 4000
    ref, target, labels, member, _, _ = make_problem(16, n, 8, seed=3, zero_info=True)
    tol = 4 * math.sqrt(1 / (3 * n))
    for attack in (GapAttack(), LabelOnlyAttack(), LabelOnlyAttack(online=False)):
        assert abs(auc(attack.fit(ref).score(target, labels), member) - 0.5) < tol, attack


@pytest.mark.parametrize("online", [True, False])
def test_leave_one_out_scores_match_explicit_refits(online):
    ref, _, labels, _, _, _ = make_problem(5, 200, 4, seed=4)
    attack = LabelOnlyAttack(online=online, prior_strength=0.5).fit(ref)
    fast = attack.reference_scores(ref)
    for r in range(ref.num_models):
        others = [i for i in range(ref.num_models) if i != r]
        sub = ReferenceSignals(ref.logits[others], ref.keep[others], labels)
        explicit = LabelOnlyAttack(online=online, prior_strength=0.5, calibrate_threshold=False).fit(sub)
        torch.testing.assert_close(fast[r], explicit.score(ref.logits[r], labels))
    assert attack.threshold is not None and math.isfinite(attack.threshold)


def test_count_model_matches_scipy_beta_binomial():
    from mia_torch.attacks.label_only import _BetaBinomial

    g = torch.Generator().manual_seed(10)
    q, n = 8, 500
    r = torch.randint(0, 12, (n,), generator=g).double()
    t = (torch.rand(n, generator=g, dtype=torch.float64) * q * r).round()
    fit = _BetaBinomial(r, t, torch.rand(n, generator=g, dtype=torch.float64) * 10 * r, num_queries=q, alpha=1.0)
    k = torch.randint(0, q + 1, (n,), generator=g).double()
    a, b, kk = fit.a.numpy(), fit.b.numpy(), k.numpy()
    assert (a > 0).all() and (b > 0).all()
    np.testing.assert_allclose(fit.log_pmf(k).numpy(), betabinom.logpmf(kk, q, a, b), rtol=1e-9, atol=1e-9)
    mid_p = betabinom.sf(kk, q, a, b) + 0.5 * betabinom.pmf(kk, q, a, b)
    np.testing.assert_allclose(fit.log_mid_p(k).numpy(), np.log(mid_p), rtol=1e-7, atol=1e-7)


def test_single_query_warns_and_names_the_recommended_queries():
    ref, target, labels, _, _, _ = make_problem(4, 100, 1, seed=5)
    with pytest.warns(UserWarning, match=r"queries=\[identity,flip,shift_1_0"):
        LabelOnlyAttack().fit(ref)


def test_online_without_in_references_falls_back_to_offline():
    ref, target, labels, _, _, _ = make_problem(4, 300, 4, seed=6)
    no_in = ReferenceSignals(ref.logits, torch.zeros_like(ref.keep), labels)
    with pytest.warns(UserWarning, match="offline"):
        online = LabelOnlyAttack().fit(no_in)
    offline = LabelOnlyAttack(online=False).fit(no_in)
    assert torch.equal(online.score(target, labels), offline.score(target, labels))


def test_degenerate_references_stay_finite():
    ref, target, labels, _, _, _ = make_problem(1, 200, 4, seed=7)
    for attack in (LabelOnlyAttack(), LabelOnlyAttack(online=False)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = attack.fit(ref).score(target, labels)
        assert torch.isfinite(scores).all() and attack.threshold is None


def test_label_attacks_give_the_same_scores_on_labels_and_on_full_logits():
    g = torch.Generator().manual_seed(8)
    n, q = 300, 4
    labels = torch.randint(0, C, (n,), generator=g)
    raw_ref = torch.randn(6, n, q, C, generator=g) * 3
    raw_target = torch.randn(n, q, C, generator=g) * 3
    keep = torch.rand(6, n, generator=g) < 0.5
    label = ServedOutput("label")
    for attack in (GapAttack(), LabelOnlyAttack(), LabelOnlyAttack(online=False)):
        on_logits = attack.fit(ReferenceSignals(raw_ref, keep, labels)).score(raw_target, labels)
        ref_labels = ReferenceSignals(serve(raw_ref, label), keep, labels)
        on_labels = attack.fit(ref_labels).score(serve(raw_target, label), labels)
        assert torch.equal(on_logits, on_labels), attack


@pytest.mark.parametrize(
    "factory, arg",
    [
        (lambda: GapAttack(query=-1), "query"),
        (lambda: LabelOnlyAttack(prior_strength=0.0), "prior_strength"),
        (lambda: LabelOnlyAttack(online="yes"), "online"),
    ],
)
def test_invalid_arguments_name_the_argument(factory, arg):
    with pytest.raises(ValueError, match=arg):
        factory()


def test_gap_query_out_of_range_is_reported():
    _, target, labels, _, _, _ = make_problem(2, 50, 2, seed=9)
    with pytest.raises(ValueError, match="query=2"):
        GapAttack(query=2).score(target, labels)


def test_label_attacks_declare_they_need_no_scores():
    assert not GapAttack.needs_scores and not LabelOnlyAttack.needs_scores
    assert LabelOnlyAttack.requires_references and not GapAttack.requires_references
