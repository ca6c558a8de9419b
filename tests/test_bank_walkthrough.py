"""The bank-transactions walkthrough end to end (slow): the bank's table, encoder and models from
scripts/bank_audit.py, audited by experiment=bank_audit from the MLP's weights and from predict_proba."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from helpers import REPO, run_experiment
from mia_torch.evaluation import load_scores

pytestmark = pytest.mark.slow

SMALL = ["num_models=8", "bootstrap=100", "progress=false"]
#: experiment=bank_audit's recipe, spelled out for the feature-matrix route (its dataset keys are the CSV's)
RECIPE = ["model=mlp", "model.hidden_sizes=[128]", "train=adam", "train.lr=3e-3", "train.epochs=150",
          "train.batch_size=64", "attack=[lira_offline,rmia,loss,population]"]


def _bank_script():
    spec = importlib.util.spec_from_file_location("bank_audit", REPO / "scripts" / "bank_audit.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    figures = _bank_script().write_bank(root / "bank", num_records=1600, num_holdout=400)
    return root, figures


def _audit(root, name, overrides, *, setup=("experiment=bank_audit",)):
    return run_experiment(root, [*setup, f"data_dir={root}", *SMALL, *overrides], name=name)


def test_the_overfit_mlp_leaks_from_its_weights_and_the_feature_route_agrees(bank):
    root, figures = bank
    assert figures["mlp_train_acc"] > figures["mlp_test_acc"] + 0.05  # the bank's model overfits
    known = [f"audit.checkpoint={root / 'bank' / 'fraud_mlp.pt'}", f"audit.members={root / 'bank' / 'members.npy'}"]
    results = _audit(root, "mlp", known)
    offline = {name: a.pooled for name, a in results.attacks.items()}
    best = max(offline, key=lambda name: offline[name].auc)
    assert offline[best].ci["auc"][0] > 0.5, offline[best]
    assert all(a.sanity.chance_in_ci for a in results.attacks.values())
    assert results.targets[0].proxy_references is False
    matrix = ["dataset=npz_features", f"dataset.path={root / 'bank' / 'features.npz'}"]
    features = _audit(root, "features", [*known, *matrix], setup=RECIPE)
    same, other = load_scores(root / "mlp" / "scores.npz"), load_scores(root / "features" / "scores.npz")
    for name in offline:  # identical features and recipe: identical references and scores
        np.testing.assert_array_equal(same[name][0], other[name][0], err_msg=name)
    assert features.attacks[best].pooled.auc == offline[best].auc


def test_scikit_learn_models_are_audited_from_predict_proba_with_the_proxy_caveat(bank, capsys):
    root, _ = bank
    for model in ("hgb", "forest"):
        results = _audit(root, model, [f"audit.outputs={root / 'bank' / f'{model}_proba.npy'}",
                                       "audit.output_kind=probabilities",
                                       f"audit.members={root / 'bank' / 'members.npy'}"])
        assert results.targets[0].proxy_references is True and results.audit.proxy_references
        assert max(a.pooled.auc for a in results.attacks.values()) > 0.5
        assert "a proxy for the audited model's own architecture" in capsys.readouterr().out
    assert results.audit.saturated_rows > 0  # fully grown trees that all agree: probabilities of exactly 1
