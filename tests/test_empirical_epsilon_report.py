"""Empirical ε per attack beside the accountant's ε; the summary's setting and privacy lines; ε = ∞."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from helpers import TINY, run_experiment
from results_fixtures import make_results
from mia_torch.evaluation import evaluate_attacks, load_scores, pooled
from mia_torch.metrics import empirical_epsilon
from mia_torch.report.table import describe_setting, format_summary
from mia_torch.report.types import RunResults, TargetResult

pytest.importorskip("opacus")

#: Noisy labels the MLP memorises: a leaky, non-private target.
LEAKY = ["dataset=synthetic", "dataset.num_examples=400", "dataset.num_test=100", "dataset.label_noise=0.3",
         "model=mlp", "num_models=4", "target_ids=[0,2]", "attack=[loss,rmia]", "sanity_check=false", "bootstrap=0",
         "progress=false"]


def test_every_attack_gets_the_bound_of_its_pooled_roc_at_one_over_the_population(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = run_experiment(tmp_path, [*TINY, "attack=[loss,lira_online]", "target_ids=[0,2]"])
    run_dir = tmp_path / "run"
    scores, keep = load_scores(run_dir / "scores.npz"), np.load(run_dir / "keep.npy")
    eval_mask = np.load(run_dir / "eval_mask.npy")
    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    for name in ("loss", "lira_online"):
        attack = results.attacks[name]
        bound = attack.epsilon_bound
        assert bound.delta == 1 / 400 and bound.confidence == 0.95 and bound.correction == "bonferroni"
        all_scores, members = pooled(scores[name], keep, eval_mask)  # both targets' examples
        assert len(members) == 800
        expected = empirical_epsilon(all_scores, members, delta=1 / 400)
        assert attack.empirical_epsilon == pytest.approx(expected.epsilon) == pytest.approx(bound.epsilon)
        assert bound.num_thresholds == expected.num_thresholds
        assert events.Scalars(f"attack/{name}/empirical_epsilon")[0].value == pytest.approx(expected.epsilon, abs=1e-6)
    summary = format_summary(results)
    assert summary.splitlines()[0] == "defense: none; output: logits"
    assert "privacy at δ = 0.0025: no accountant's ε (not trained with DP-SGD); empirical ε" in summary
    assert "emp. ε" in summary.splitlines()[3]  # a column of the attack table


def test_the_lower_bound_never_exceeds_the_accountants_epsilon_on_dp_sgd_models(tmp_path):
    """The same data with and without DP-SGD at ε = 2: without it the bound exceeds 2 (so the check can fail)."""
    leaky = run_experiment(tmp_path, [*LEAKY, "train.epochs=40"], name="leaky")
    assert max(a.empirical_epsilon for a in leaky.attacks.values()) > 2.0
    private = run_experiment(tmp_path, [*LEAKY, "train.epochs=10", "train.batch_size=20", "defense=dpsgd",
                                        "defense.epsilon=2", "defense.delta=1e-3"], name="private")
    spent = [t.dp_epsilon for t in private.targets.values()]
    assert all(1.98 <= e <= 2.0 for e in spent)
    for name, attack in private.attacks.items():
        assert attack.epsilon_bound.delta == 1e-3  # defense.delta, as the accountant used
        assert 0.0 <= attack.empirical_epsilon <= min(spent), name
    summary = format_summary(private)
    assert summary.splitlines()[0] == ("defense: dpsgd (epsilon 2, delta 0.001, max_grad_norm 1.0, applied to all "
                                       "models); output: logits")
    assert "privacy at δ = 0.001: accountant's ε 2.00 (DP-SGD, largest over targets); empirical ε ≥" in summary
    assert "EXCEEDS" not in summary


def test_a_bound_above_the_accountants_epsilon_is_flagged():
    results, _, _, _ = make_results(targets=(0, 1))
    scores, keep = {"lira": {}}, np.zeros((4, 400), dtype=bool)
    rng = np.random.default_rng(0)
    for t in (0, 1):
        keep[t, rng.permutation(400)[:200]] = True
        scores["lira"][t] = rng.normal(size=400) + 3.0 * keep[t]
    results.attacks = evaluate_attacks(scores, keep=keep, eval_mask=np.ones(400, dtype=bool), fpr_targets=[0.01],
                                       bootstrap=0, seed=0, delta=1e-3)
    assert results.attacks["lira"].empirical_epsilon > 1.0  # separated by 3 standard deviations
    for target in results.targets.values():
        target.dp_epsilon, target.dp_delta, target.dp_noise_multiplier = 0.5, 1e-3, 2.0
    assert "THE EMPIRICAL LOWER BOUND EXCEEDS THE ACCOUNTANT'S ε" in format_summary(results)


def test_infinite_epsilon_prints_as_infinity_and_survives_results_json():
    target = TargetResult.from_dict({"train_acc": 0.9, "test_acc": 0.8, "dp_epsilon": None, "dp_epsilon_target": None,
                                     "dp_delta": 1e-3, "dp_noise_multiplier": 0.0})
    assert target.dp_epsilon == math.inf and target.dp_epsilon_target == math.inf
    assert TargetResult.from_dict({"dp_epsilon": None}).dp_epsilon is None  # no DP-SGD: stays unknown
    results, _, _, _ = make_results(targets=(0,))
    results.targets = {0: target}
    results.config["defense"] = {"name": "dpsgd", "epsilon": math.inf, "delta": None, "max_grad_norm": 0.5,
                                 "apply_to": "all"}
    text = format_summary(results)
    assert "DP epsilon ∞" in text and "nan" not in text.splitlines()[1]
    assert text.splitlines()[0].startswith("defense: dpsgd (epsilon ∞, delta 0.001, max_grad_norm 0.5")
    again = RunResults.from_dict(json.loads(json.dumps(results.to_dict())))  # inf is written as null
    assert again.targets[0].dp_epsilon == math.inf
    assert "epsilon ∞" in describe_setting(again.config)


def test_the_setting_line_names_defense_and_output():
    assert describe_setting({}) == "defense: none; output: logits"
    assert describe_setting({"defense": {"name": "none"}, "output": {"name": "topk", "k": 1}}) == \
        "defense: none; output: topk (k 1)"
    config = {"defense": {"name": "dpsgd", "epsilon": 8.0, "delta": None, "max_grad_norm": 1.0, "apply_to": "target"},
              "output": {"name": "label"}}
    assert describe_setting(config, delta=0.0025) == ("defense: dpsgd (epsilon 8, delta 0.0025, max_grad_norm 1.0, "
                                                      "applied to the targets only); output: label")


def test_defense_and_output_are_tensorboard_hparams(tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    run_experiment(tmp_path, [*TINY, "attack=[loss]", "sanity_check=false", "output=topk", "output.k=2"])
    hparams = {}
    for events in (tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    if data.HasField("session_start_info"):
                        hp = data.session_start_info.hparams
                        hparams.update({k: getattr(hp[k], hp[k].WhichOneof("kind")) for k in hp})
    assert hparams["defense.name"] == "none"
    assert hparams["output.name"] == "topk" and hparams["output.k"] == 2
