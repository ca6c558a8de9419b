"""Audit mode end to end: a study's own target, audited from its checkpoint, gets the study's scores."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from helpers import TINY, OutMargin, count_dense_logits, make_config, refuse_dense_logits, run_experiment
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.audit.evidence import record_evidence
from mia_torch.evaluation import load_scores
from mia_torch.pipeline import prepare
from mia_torch.signals.manifest import load_run_signals
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults

ATTACKS = "attack=[loss,lira_offline,lira_online,rmia]"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    results = run_experiment(root, [*TINY, ATTACKS, "sanity_check=false"])
    return root, results


def test_auditing_a_studys_target_reproduces_its_scores(study, tmp_path):
    root, results = study
    keep = np.load(root / "run" / "keep.npy")
    np.save(tmp_path / "members.npy", np.flatnonzero(keep[0]))
    checkpoint = results.targets[0].checkpoint
    audit = run_experiment(root, [*TINY, ATTACKS, "sanity_check=false", f"audit.checkpoint={checkpoint}",
                                  f"audit.members={tmp_path / 'members.npy'}", "audit.online=true"], name="audit")
    assert audit.trained_models == []  # the references are the study's, from the store
    study_scores, audit_scores = load_scores(root / "run" / "scores.npz"), load_scores(root / "audit" / "scores.npz")
    for name in ("loss", "lira_offline", "lira_online", "rmia"):
        np.testing.assert_array_equal(audit_scores[name][0], study_scores[name][0], err_msg=name)
        assert audit.attacks[name].pooled.auc == results.attacks[name].pooled.auc
    assert audit.audit.candidates == 400 and audit.targets[0].train_acc == pytest.approx(results.targets[0].train_acc)


def test_one_record_query_answers_per_record_offline(study, tmp_path, capsys):
    root, results = study
    checkpoint = results.targets[0].checkpoint
    member = int(np.flatnonzero(np.load(root / "run" / "keep.npy")[0])[0])
    audit = run_experiment(root, [*TINY, ATTACKS, f"audit.checkpoint={checkpoint}", f"audit.candidates=[{member}]"],
                           name="one")
    out = capsys.readouterr().out
    assert set(audit.audit.skipped_attacks) == {"lira_online"}  # online needs audit.online=true
    assert audit.attacks == {}  # no ground truth: the answer is per record
    assert f"record {member} (class" in out and "not proof of absence" in out
    rows = (root / "one" / "records.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0].startswith("id,source_id,class,loss_score,lira_offline_score,rmia_score,phi")
    record = audit.audit.records[0]
    assert record.id == member and 0 < record.p_gaussian <= 1 and record.verdict in ("member", "no evidence")
    # references have 2 of 4 models: the rank p-value cannot go below 1/2 for a record one reference did not train on
    assert 1 / 3 <= record.p_rank <= 1


def test_a_pickled_checkpoint_is_refused_before_training(tmp_path):
    import pathlib

    class Payload:
        def __reduce__(self):
            return (pathlib.Path.touch, (tmp_path / "pwned",))

    torch.save({"w": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="audit.checkpoint.*pickled"):
        run_experiment(tmp_path, [*TINY, "attack=[loss]", f"audit.checkpoint={tmp_path / 'evil.pt'}"])
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "store" / "models").exists()


def test_exported_program_is_audited(study, tmp_path):
    root, results = study
    from mia_torch.audit.checkpoint import read_state_dict
    from mia_torch.models import MLP

    state = read_state_dict(results.targets[0].checkpoint)
    net = MLP(input_shape=(1, 8, 8), num_classes=10)
    net.load_state_dict(state)
    example = torch.zeros(3, 1, 8, 8)
    program = torch.export.export(net.eval(), (example,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "model.pt2")
    audit = run_experiment(root, [*TINY, "attack=[lira_offline]", "sanity_check=false",
                                  f"audit.checkpoint={tmp_path / 'model.pt2'}"], name="export")
    study_scores, audit_scores = load_scores(root / "run" / "scores.npz"), load_scores(root / "export" / "scores.npz")
    np.testing.assert_allclose(audit_scores["lira_offline"][0], study_scores["lira_offline"][0], rtol=1e-5, atol=1e-6)
    saved = RunResults.from_dict(read_json(root / "export" / "results.json"))
    assert saved.audit.checkpoint.endswith("model.pt2") and saved.audit == audit.audit


@pytest.mark.parametrize("overrides, key", [
    (["audit.checkpoint=/nonexistent/model.pt"], "audit.checkpoint"),
    (["audit.checkpoint={ckpt}", "audit.candidates=[400]"], "audit.candidates"),
    (["audit.checkpoint={ckpt}", "audit.members=[1.5]"], "audit.members"),
    (["audit.checkpoint={ckpt}", "target_ids=[0,1]"], "target_ids"),
    (["audit.checkpoint={ckpt}", "forget.method=retrain"], "audit.checkpoint and forget.method"),
    (["audit.checkpoint={ckpt}", "audit.fpr=2"], "audit.fpr"),
    (["audit.checkpoint={ckpt}", "attack=[lira_online]"], "audit.online=true"),
    (["audit.checkpoint={ckpt}", "audit.preprocess={mean:[0.5],std:[0]}"], "audit.preprocess.std"),
    (["audit.members=[1,2]"], "audit.checkpoint"),
    (["audit.checkpoint={ckpt}", "audit.candidates=[0,1,2]", "audit.members=[0]"], "audit.candidates"),
])
def test_bad_audit_input_is_refused_before_training(study, tmp_path, overrides, key):
    checkpoint = study[1].targets[0].checkpoint
    overrides = [o.replace("{ckpt}", checkpoint) for o in overrides]
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_experiment(tmp_path, [*TINY, "attack=[loss]", *overrides])
    assert not (tmp_path / "store" / "models").exists()


def test_a_checkpoint_of_another_architecture_lists_the_keys(study, tmp_path):
    checkpoint = study[1].targets[0].checkpoint
    with pytest.raises(ValueError, match=r"does not fit the configured architecture.*missing from the checkpoint"):
        run_experiment(tmp_path, [*TINY, "attack=[loss]", "model=small_cnn", f"audit.checkpoint={checkpoint}"])


def test_members_covering_every_candidate_say_why_there_is_no_report(study, capsys):
    """No known non-member among the candidates: no ROC, and the run says so (printed and in results.json)."""
    root, results = study
    checkpoint = results.targets[0].checkpoint
    audit = run_experiment(root, [*TINY, ATTACKS, f"audit.checkpoint={checkpoint}", "audit.candidates=[0,1,2]",
                                  "audit.members=[0,1,2,3]"], name="all_members")
    out = capsys.readouterr().out
    assert audit.attacks == {}
    reason = audit.audit.no_report
    assert "audit.members lists every one of the 3 candidate records" in reason and "no known non-member" in reason
    assert out.count(reason) == 2  # when planned, before any work, and with the answer


def _references(run_dir, refs):
    """The served outputs of the audited model and of its references ``refs`` (as the run recorded them), labels,
    and the references' keep rows."""
    served = torch.from_numpy(np.load(run_dir / "target_signals.npy"))
    logits = torch.from_numpy(load_run_signals(run_dir, models=refs)).float()
    keep = torch.from_numpy(np.load(run_dir / "keep.npy")[refs])
    return served, ReferenceSignals(logits, keep, torch.from_numpy(np.load(run_dir / "labels.npy")))


def _records(run_dir) -> dict[str, np.ndarray]:
    import csv

    rows = list(csv.DictReader((run_dir / "records.csv").open()))
    return {key: np.array([float(r[key]) for r in rows]) for key in rows[0] if key not in ("verdict@fpr=0.01",)}


def test_an_audit_reads_its_references_features_not_their_logits(study, tmp_path, monkeypatch):
    """With feature attacks only, no model's dense logits are built, and every score and p-value is the one
    fitted on the references' logits."""
    root, results = study
    np.save(tmp_path / "members.npy", np.flatnonzero(np.load(root / "run" / "keep.npy")[0]))
    overrides = [*TINY, "attack=[loss,lira_offline,lira_online,rmia,shokri,label_only]", "sanity_check=false",
                 f"audit.checkpoint={results.targets[0].checkpoint}", f"audit.members={tmp_path / 'members.npy'}",
                 "audit.online=true"]
    refuse_dense_logits(monkeypatch)
    audit = run_experiment(root, overrides, name="features")
    monkeypatch.undo()
    run_dir = root / "features"
    served, reference = _references(run_dir, audit.audit.references)
    labels = reference.labels
    records, scores = _records(run_dir), load_scores(run_dir / "scores.npz")
    for name, attack in prepare(make_config(root, overrides), tmp_path / "again").attacks.items():
        if name != "blind":
            expected = copy.deepcopy(attack).fit(reference).score(served, labels).double().numpy()
            np.testing.assert_allclose(scores[name][0], expected, rtol=1e-12, atol=1e-12, err_msg=name)
    evidence = record_evidence(served, labels, reference, online=True)
    for key in ("phi", "p_gaussian", "p_rank", "log_lr"):
        np.testing.assert_allclose(records[key], getattr(evidence, key), rtol=1e-12, atol=1e-12, err_msg=key)


def test_an_attack_that_reads_logits_gets_its_references_logits_once(study, tmp_path, monkeypatch):
    root, results = study
    calls = count_dense_logits(monkeypatch)
    audit = run_experiment(root, [*TINY, "attack=[lira_offline]", "+attack.mine._target_=helpers.OutMargin",
                                  f"audit.checkpoint={results.targets[0].checkpoint}", "audit.candidates=[0,1,2]"],
                           name="logits")
    refs = audit.audit.references
    assert calls == [refs]  # once, the references' only
    monkeypatch.undo()
    served, reference = _references(root / "logits", refs)
    expected = OutMargin().fit(reference).score(served, reference.labels).numpy()
    np.testing.assert_allclose(_records(root / "logits")["mine_score"], expected[:3], rtol=1e-12, atol=1e-12)
