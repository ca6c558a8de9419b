"""The typed evaluation: metrics against scikit-learn and scipy, small-sample honesty, slices,
p-values, and results.json read back into the same type."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
from scipy.stats import binomtest, norm
from sklearn.metrics import roc_auc_score, roc_curve

from mia_torch.evaluation import MIN_SLICE_SIZE, empirical_p_values, evaluate_attacks, measure
from mia_torch.report.json_file import read_json, write_json
from mia_torch.report.types import AttackEvaluation, RunResults, TargetResult, reported, reported_values
from results_fixtures import make_results, synthetic_scores


def _sklearn_tpr_at(scores, members, fpr_target):
    fpr, tpr, _ = roc_curve(members, scores, drop_intermediate=False)
    return tpr[fpr <= fpr_target].max()


def test_pooled_and_per_target_metrics_match_scikit_learn():
    results, scores, keep, _ = make_results(targets=(0, 2))
    for name, attack in results.attacks.items():
        all_scores = np.concatenate([scores[name][t] for t in (0, 2)])
        members = np.concatenate([keep[t] for t in (0, 2)])
        assert attack.pooled.auc == pytest.approx(roc_auc_score(members, all_scores), abs=1e-12)
        for f in (0.01, 0.001):
            assert attack.pooled.tpr[f] == pytest.approx(_sklearn_tpr_at(all_scores, members, f))
        assert [row.target for row in attack.per_target] == [0, 2]
        for row in attack.per_target:
            assert row.auc == pytest.approx(roc_auc_score(keep[row.target], scores[name][row.target]))
        aucs = [row.auc for row in attack.per_target]
        assert attack.mean["auc"].mean == pytest.approx(np.mean(aucs))
        assert attack.mean["auc"].std == pytest.approx(np.std(aucs, ddof=1))
        assert attack.pooled.num_nonmembers == sum(r.num_nonmembers for r in attack.per_target)
        np.testing.assert_allclose(attack.pooled.curve.fpr[-1], 1.0)  # the curve is kept for the figures


def test_known_optimal_auc_and_a_no_information_attack():
    """Gaussian scores shifted by d for members have AUC Phi(d / sqrt 2); no shift means AUC 0.5."""
    scores, keep = synthetic_scores(20000, [0], {"strong": 1.5, "none": 0.0}, num_models=2)
    attacks = evaluate_attacks(scores, keep=keep, eval_mask=np.ones(20000, bool), fpr_targets=[0.01], bootstrap=50,
                               seed=0)
    strong, none = attacks["strong"].pooled, attacks["none"].pooled
    assert strong.auc == pytest.approx(norm.cdf(1.5 / math.sqrt(2)), abs=0.01)
    low, high = strong.ci["auc"]
    assert low < strong.auc < high and high - low < 0.03
    low, high = none.ci["auc"]
    assert low <= 0.5 <= high


def test_clopper_pearson_interval_of_each_tpr_equals_scipys_exact_binomial_interval():
    results, _, _, _ = make_results(num_examples=600, targets=(0,))
    pooled = results.attacks["lira"].pooled
    for f, tpr in pooled.tpr.items():
        k = round(tpr * pooled.num_members)
        expected = binomtest(k, pooled.num_members).proportion_ci(confidence_level=0.95, method="exact")
        assert pooled.tpr_exact_ci[f] == pytest.approx((expected.low, expected.high), abs=1e-9)
        assert pooled.tpr_exact_ci[f][0] <= tpr <= pooled.tpr_exact_ci[f][1]
    assert set(pooled.ci) == {"auc", "advantage", "tpr@0.01fpr", "tpr@0.001fpr"}  # bootstrap beside it


@pytest.mark.parametrize("nonmembers, unreliable", [(750, ["tpr@0.01fpr", "tpr@0.001fpr"]),
                                                    (2000, ["tpr@0.001fpr"]), (10000, [])])
def test_resolvable_fpr_and_unreliable_tprs(nonmembers, unreliable):
    rng = np.random.default_rng(0)
    members = np.r_[np.ones(500, bool), np.zeros(nonmembers, bool)]
    metrics = measure(rng.normal(size=members.size) + members, members, fpr_targets=[0.01, 0.001], bootstrap=0,
                      seed=0)
    saved = metrics.to_dict()
    assert saved["resolvable_fpr"] == pytest.approx(1 / nonmembers)
    assert saved["reliable_fpr"] == pytest.approx(10 / nonmembers)
    assert saved["unreliable"] == unreliable
    assert saved["unresolvable"] == (["tpr@0.001fpr"] if nonmembers < 1000 else [])
    assert [metrics.is_reliable(f) for f in (0.01, 0.001)] == ["tpr@0.01fpr" not in unreliable,
                                                             "tpr@0.001fpr" not in unreliable]


def test_slices_find_the_leaky_class_and_skip_tiny_ones():
    """Only class 2's members are shifted; class 3 has 6 members: skipped, no crash."""
    rng = np.random.default_rng(1)
    n = 2000
    labels = np.arange(n) % 3
    keep = np.zeros((2, n), bool)
    keep[0, rng.permutation(n)[: n // 2]] = True
    labels[np.flatnonzero(keep[0])[:6]] = 3
    labels[np.flatnonzero(~keep[0])[:40]] = 3
    scores = {"a": {0: rng.normal(size=n) + 2.0 * (keep[0] & (labels == 2))}}
    predictions = {0: np.where(rng.random(n) < 0.1, (labels + 1) % 4, labels)}
    attacks = evaluate_attacks(scores, keep=keep, eval_mask=np.ones(n, bool), fpr_targets=[0.01], bootstrap=0, seed=0,
                               labels=labels, predictions=predictions)
    a = attacks["a"]
    assert [s.name for s in a.slices] == ["class=0", "class=1", "class=2", "class=3", "correct", "misclassified"]
    leaky = a.slice("class=2")
    mask = labels == 2
    assert leaky.metrics.auc == pytest.approx(roc_auc_score(keep[0][mask], scores["a"][0][mask]))
    assert leaky.metrics.auc > 0.85 and abs(a.slice("class=0").metrics.auc - 0.5) < 0.08
    assert a.most_exposed_class().name == "class=2"
    tiny = a.slice("class=3")
    assert tiny.metrics is None and (tiny.num_members, tiny.num_nonmembers) == (6, 40)
    assert f"at least {MIN_SLICE_SIZE}" in tiny.skipped
    wrong = predictions[0] != labels
    assert a.slice("misclassified").num_members + a.slice("misclassified").num_nonmembers == wrong.sum()
    assert a.slice("correct").metrics.auc == pytest.approx(roc_auc_score(keep[0][~wrong], scores["a"][0][~wrong]))


def test_empirical_p_values_against_a_brute_force_count():
    rng = np.random.default_rng(2)
    nonmembers = np.round(rng.normal(size=300), 1)  # ties
    scores = np.r_[np.round(rng.normal(size=50), 1), 99.0, -99.0, nonmembers[:5]]
    brute = [(1 + np.sum(nonmembers >= s)) / (1 + nonmembers.size) for s in scores]
    np.testing.assert_allclose(empirical_p_values(scores, nonmembers), brute)
    assert empirical_p_values([99.0], nonmembers)[0] == pytest.approx(1 / 301)  # never 0
    assert empirical_p_values([-99.0], nonmembers)[0] == 1.0


def test_results_json_reads_back_into_the_same_type(tmp_path):
    results, _, _, _ = make_results()
    results.extra["future_section"] = {"kept": True}
    write_json(tmp_path / "results.json", results.to_dict())
    saved = read_json(tmp_path / "results.json")
    pooled = saved["attacks"]["lira"]["pooled"]
    assert {"auc", "tpr@0.01fpr", "tpr@0.001fpr", "resolvable_fpr", "unreliable", "ci", "clopper_pearson_ci"} <= set(
        pooled)
    assert saved["attacks"]["lira"]["per_target"][1]["target"] == 1
    assert saved["targets"]["0"]["train_acc"] == 0.95
    back = RunResults.from_dict(saved)
    assert back.to_dict() == saved
    assert back.attacks["lira"].pooled == results.attacks["lira"].pooled  # the curve is not compared
    assert back.attacks["lira"].pooled.curve is None
    assert back.targets[0] == results.targets[0] and back.extra == {"future_section": {"kept": True}}
    assert back.attacks["loss"].slices == results.attacks["loss"].slices


def test_a_malformed_results_json_names_the_key():
    results, _, _, _ = make_results()
    saved = json.loads(json.dumps(results.to_dict()))
    del saved["attacks"]["loss"]["pooled"]["auc"]
    with pytest.raises(ValueError, match=r"attacks\.loss\.pooled: missing key 'auc'"):
        RunResults.from_dict(saved)
    saved = json.loads(json.dumps(results.to_dict()))
    saved["targets"]["0"]["train_acc"] = "high"
    with pytest.raises(ValueError, match=r"targets\.0\.train_acc"):
        RunResults.from_dict(saved)


@dataclass
class _TargetWithBrier(TargetResult):
    brier: float | None = reported("Brier", fmt=".3f")


@dataclass
class _AttackWithEpsilon(AttackEvaluation):
    epsilon_lower_bound: float | None = reported("eps lower bound", fmt=".2f")


def test_a_reported_field_reaches_json_summary_tensorboard_and_sweep_without_other_code(tmp_path):
    """What another quantity (a Brier score per target, an ε per attack) needs: a field, nothing else."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mia_torch.report.sweep import summary_table
    from mia_torch.report.sweep_jobs import SweepJob
    from mia_torch.report.table import format_summary
    from mia_torch.report.tensorboard import write_report

    results, _, _, _ = make_results(targets=(0,))
    results.targets = {0: _TargetWithBrier(**vars(results.targets[0]), brier=0.042)}
    results.attacks = {n: _AttackWithEpsilon(**vars(a), epsilon_lower_bound=1.25 if n == "lira" else None)
                       for n, a in results.attacks.items()}
    assert results.to_dict()["targets"]["0"]["brier"] == 0.042
    assert results.to_dict()["attacks"]["lira"]["epsilon_lower_bound"] == 1.25
    assert reported_values(results.targets[0])["brier"] == ("Brier", ".3f", 0.042)
    text = format_summary(results)
    assert "target 0: train acc 0.950, test acc 0.800, Brier 0.042" in text
    header, _, *rows = text.splitlines()[2:]
    assert header.rstrip().endswith("eps lower bound")
    assert next(r for r in rows if r.startswith("lira")).rstrip().endswith("1.25")
    assert next(r for r in rows if r.startswith("loss")).rstrip().endswith("-")
    write_report(tmp_path, results, pooled_scores={}, images={}, hparams={})
    events = EventAccumulator(str(tmp_path), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("target/0/brier")[0].value == pytest.approx(0.042)
    assert events.Scalars("attack/lira/epsilon_lower_bound")[0].value == pytest.approx(1.25)
    columns, rows, _ = summary_table([SweepJob(name="0", path=tmp_path, results=results)])
    assert "target_brier" in columns and "lira/epsilon_lower_bound" in columns
    assert rows[0]["target_brier"] == 0.042 and rows[0]["lira/epsilon_lower_bound"] == 1.25
