"""The right-to-be-forgotten check end to end."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from helpers import TINY, make_config, refuse_dense_logits, run_experiment
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.audit.evidence import record_evidence
from mia_torch.pipeline import prepare
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.signals.manifest import load_run_signals

# A target that memorises: 30% random labels can only be learned by heart.
LEAKY = [*TINY, "dataset.num_examples=800", "train.epochs=30", "dataset.label_noise=0.3",
         "attack=[loss,lira_offline]", "sanity_check=false", "bootstrap=200"]


@pytest.fixture(scope="module")
def retrained(tmp_path_factory):
    """A forget check by retraining, which reads the models' features only (building dense logits fails)."""
    root = tmp_path_factory.mktemp("forget")
    with pytest.MonkeyPatch.context() as monkeypatch:
        refuse_dense_logits(monkeypatch)
        return root, run_experiment(root, [*LEAKY, "forget.method=retrain", "forget.count=100"])


def test_retraining_without_the_records_makes_them_look_never_seen(retrained):
    root, results = retrained
    entry = results.forget
    assert entry.forgotten == 100 and entry.never_seen == 400 and entry.retained == 300
    keep = np.load(root / "run" / "keep.npy")
    assert keep[0, entry.forgotten_ids].all()  # only members of the target can be forgotten
    attacks = entry.attacks.values()
    assert max(a.before.auc_ci[0] for a in attacks) > 0.55  # memorised: clearly flagged before removal
    for attack in attacks:
        low, high = attack.after.auc_ci
        assert low <= 0.5 <= high and attack.after.verdict == "indistinguishable from never-seen"
    assert entry.after_model["trained"]
    assert entry.utility.before.forgotten_acc > 0.9 > entry.utility.after.forgotten_acc
    assert RunResults.from_dict(read_json(root / "run" / "results.json")).forget == entry  # written as it was made
    rows = list(csv.DictReader((root / "run" / "forget.csv").open()))
    assert [int(r["id"]) for r in rows] == entry.forgotten_ids
    assert {"loss_before", "loss_after", "p_gaussian_before", "p_gaussian_after"} <= set(rows[0])
    before = np.array([float(r["p_gaussian_before"]) for r in rows])
    after = np.array([float(r["p_gaussian_after"]) for r in rows])
    assert np.median(before) < np.median(after)


def test_the_evidence_before_removal_is_the_one_from_the_references_logits(retrained, tmp_path):
    root, results = retrained
    refs = list(prepare(make_config(root, LEAKY), tmp_path / "again").splits.reference_ids[0])
    run_dir = root / "run"
    logits = torch.from_numpy(load_run_signals(run_dir, models=[0, *refs])).float()
    labels = torch.from_numpy(np.load(run_dir / "labels.npy"))
    keep = torch.from_numpy(np.load(run_dir / "keep.npy")[refs])
    ids = results.forget.forgotten_ids
    expected = record_evidence(logits[0], labels, ReferenceSignals(logits[1:], keep, labels), online=False).subset(ids)
    rows = list(csv.DictReader((run_dir / "forget.csv").open()))
    for key in ("p_gaussian", "p_rank"):
        np.testing.assert_allclose([float(r[f"{key}_before"]) for r in rows], getattr(expected, key), rtol=1e-12,
                                   atol=1e-12, err_msg=key)


def test_the_retrained_model_is_a_stored_artifact(retrained, tmp_path):
    root, _ = retrained
    again = run_experiment(root, [*LEAKY, "forget.method=retrain", "forget.count=100"], name="again")
    assert again.trained_models == [] and not again.forget.after_model["trained"]
    assert again.forget.attacks == retrained[1].forget.attacks


def test_finetune_and_user_checkpoint_are_reported(retrained, tmp_path):
    root, results = retrained
    tuned = run_experiment(root, [*LEAKY, "forget.method=finetune", "forget.count=100", "forget.epochs=2"],
                           name="finetune")
    assert tuned.forget.method == "finetune" and set(tuned.forget.attacks) == {"loss", "lira_offline"}
    # method=checkpoint: the user's "after" model; here the target itself, so nothing was forgotten
    checkpoint = results.targets[0].checkpoint
    same = run_experiment(root, [*LEAKY, "forget.method=checkpoint", "forget.count=100",
                                 f"forget.checkpoint={checkpoint}"], name="same")
    loss = same.forget.attacks["loss"]
    assert loss.after.auc == pytest.approx(loss.before.auc)
    assert same.forget.verdict == "still distinguishable from never-seen"


@pytest.mark.parametrize("override, key", [
    ("forget.ids=[1,2,3]", "forget.ids"),  # not all members of target 0
    ("forget.count=500", "forget.count"),
    ("forget.method=erase", "forget.method"),
    ("forget.method=checkpoint", "forget.checkpoint"),
])
def test_bad_forget_input_is_refused_before_training(tmp_path, override, key):
    overrides = [*TINY, "attack=[loss]", "forget.method=retrain", override]
    if override == "forget.ids=[1,2,3]":
        from mia_torch.data.splits import make_splits

        keep = make_splits(4, 400, seed=0).keep  # TINY's population
        outside = np.flatnonzero(~keep[0])[:3].tolist()
        overrides[-1] = f"forget.ids={outside}"
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_experiment(tmp_path, overrides)
    assert not (tmp_path / "store" / "models").exists()


@pytest.mark.slow
def test_forget_check_on_the_bundled_digits():
    """The measurement in docs/forget.md: an overfit digits target, 100 records removed by retraining."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        results = run_experiment(Path(tmp), ["experiment=forget", "progress=false"])
    attacks = results.forget.attacks
    best = max(attacks, key=lambda a: attacks[a].before.auc)
    assert attacks[best].before.auc_ci[0] > 0.52
    assert all(e.after.auc_ci[0] <= 0.5 <= e.after.auc_ci[1] for e in attacks.values())
    torch.manual_seed(0)
