"""The one-run DP audit end to end: canaries in the keep matrix, typed results, gradient canaries, refusals."""
from __future__ import annotations

import copy
import json
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers import TINY, make_config, refuse_dense_logits, run_experiment
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.dp_audit.run import plan_dp_audit
from mia_torch.dp_audit.study import audit_points, write_dp_audit_study
from mia_torch.evaluation import load_scores
from mia_torch.pipeline import prepare
from mia_torch.report.sweep import collect_jobs
from mia_torch.report.types import RunResults
from mia_torch.settings.load import load_settings
from mia_torch.stages.signals import signals_stage
from mia_torch.training.canary_gradients import canary_step_hook

#: experiment=dp_audit on the tiny synthetic data: 60 mislabeled canaries, no DP, only the target trained.
AUDIT = ["experiment=dp_audit", "setting=none", *TINY, "bootstrap=0", "dp_audit.count=60", "train.epochs=30",
         "model.hidden_sizes=[128]", "num_threads=1"]


def test_a_one_run_audit_adds_canaries_to_the_target_only_and_reports_typed_bounds(tmp_path):
    out = run_experiment(tmp_path, AUDIT)
    run = tmp_path / "run"
    results = RunResults.from_dict(json.loads((run / "results.json").read_text()))
    audit = results.dp_audit
    assert audit is not None and audit.kind == "mislabeled" and audit.canaries == 60 and audit.score == "loss"
    assert out.trained_models == [0]  # the loss needs no reference models
    with np.load(run / "canaries.npz") as saved:
        columns, included, labels, source = (saved[k] for k in ("columns", "included", "labels", "source_ids"))
    keep, eval_mask = np.load(run / "keep.npy"), np.load(run / "eval_mask.npy")
    assert np.array_equal(keep[0, columns], included) and audit.included == included.sum()
    assert not keep[1:, columns].any() and not eval_mask[columns].any()
    assert np.array_equal(columns, source)
    pooled = results.attacks["loss"].pooled  # the study's own evaluation leaves the canaries out
    assert pooled.num_members + pooled.num_nonmembers == len(eval_mask) - 60
    assert audit.delta == 1e-5 and results.targets[0].dp_epsilon is None
    assert 0 <= audit.one_run.epsilon <= audit.one_run.ceiling and audit.one_run.guesses <= 60
    assert audit.gaussian.epsilon <= audit.gaussian.ceiling and audit.gaussian.mu is not None
    assert audit.one_run.epsilon > 0  # a memorising model gives its mislabeled canaries away
    assert (run / "dp_audit.png").stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    assert events.Scalars("dp_audit/one_run_epsilon")[0].value == pytest.approx(audit.one_run.epsilon, rel=1e-6)
    assert events.Scalars("dp_audit/gaussian_mu")[0].value == pytest.approx(audit.gaussian.mu, rel=1e-6)
    assert "report/dp_audit" in events.Tags()["images"]
    true_labels = prepare(make_config(tmp_path, AUDIT), tmp_path / "again").data.y.cpu().numpy()
    assert (labels != true_labels[source]).all()  # mislabeled: every canary trains with a wrong label
    _page_shows_the_bounds(run, audit)


    _study_reads_the_audits_back(tmp_path, out)


def _page_shows_the_bounds(run, audit):
    """report.html answers with the one-run bound first, each number exactly the one in results.json."""
    import html
    import re

    page = (run / "report.html").read_text()
    assert 'id="dp_audit"' in page and "A measured lower bound." in page  # no DP-SGD: nothing claimed
    shown = {key: float(value) for value, key in re.findall(r'<data value="([^"]+)" data-key="([^"]+)"', page)}
    assert shown["/dp_audit/one_run/epsilon"] == audit.one_run.epsilon
    assert shown["/dp_audit/gaussian/mu"] == audit.gaussian.mu
    assert shown["/dp_audit/one_run/correct"] == audit.one_run.correct
    assert html.escape(audit.canaries_file) in page


def _study_reads_the_audits_back(tmp_path, out):
    """A sweep of two seeds (the run above, its results.json written again as seed 1)."""
    for seed in (0, 1):
        (tmp_path / "sweep" / str(seed)).mkdir(parents=True)
        (tmp_path / "sweep" / str(seed) / "results.json").write_text(json.dumps({**out.to_dict(), "config": {
            **out.config, "seed": seed}}))
    points, missing = audit_points(collect_jobs(tmp_path / "sweep"))
    assert [(p.setting, p.kind, p.seed) for p in points] == [("no DP", "mislabeled", 0), ("no DP", "mislabeled", 1)]
    assert not missing and all(p.accountant is None and not p.exceeds for p in points)
    _, _, written = write_dp_audit_study(tmp_path / "sweep")
    assert [p.name for p in written] == ["dp_audit_study.csv", "dp_audit_study.md", "dp_audit_study.png"]
    assert "| no DP | mislabeled | 2 |" in written[1].read_text()


def test_an_audit_with_references_reads_their_features_not_their_logits(tmp_path, monkeypatch):
    """Feature attacks fitted on reference models: no model's dense logits are built, and the scores are the ones
    fitted on the references' logits."""
    overrides = [*AUDIT, "dp_audit.score=lira_offline", "attack=[loss,lira_offline,rmia]"]
    refuse_dense_logits(monkeypatch)
    out = run_experiment(tmp_path, overrides)
    monkeypatch.undo()
    plan = plan_dp_audit(prepare(make_config(tmp_path, overrides), tmp_path / "again"))
    refs = list(plan.references)
    assert refs and out.trained_models == [0, *refs]
    ctx = plan.ctx
    logits = torch.from_numpy(signals_stage(ctx, refs).dense()).float()
    reference = ReferenceSignals(logits, torch.from_numpy(ctx.splits.keep[refs]), ctx.data.y)
    served = signals_stage(ctx, [0]).served(0)
    scores = load_scores(tmp_path / "run" / "scores.npz")
    for name, attack in ctx.attacks.items():
        expected = copy.deepcopy(attack).fit(reference).score(served, ctx.data.y).double().numpy()
        np.testing.assert_allclose(scores[name][0], expected, rtol=1e-12, atol=1e-12, err_msg=name)


def test_gradient_canaries_add_their_gradient_when_drawn_and_nowhere_else():
    params = [torch.nn.Parameter(torch.zeros(3, 2)), torch.nn.Parameter(torch.zeros(4))]
    coordinates = np.array([1, 5, 7])  # param 0 entries 1 and 5, param 1 entry 1
    for rate, expected in ((1.0, 0.5 / 4), (0.0, 0.0)):
        for p in params:
            p.grad = torch.zeros_like(p)
        hook = canary_step_hook(params, coordinates, max_grad_norm=0.5, sample_rate=rate, seed=0)
        hook(SimpleNamespace(expected_batch_size=4, loss_reduction="mean"))
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        assert torch.equal(flat[coordinates], torch.full((3,), expected))
        assert not flat[np.setdiff1d(np.arange(10), coordinates)].any()
    with pytest.raises(ValueError, match="trainable parameters"):
        canary_step_hook(params, np.array([10]), max_grad_norm=1.0, sample_rate=0.5, seed=0)


@pytest.mark.slow
def test_gradient_canaries_under_clipping_without_noise_are_found(tmp_path):
    out = run_experiment(tmp_path, [*AUDIT, "setting=dpsgd_eps_inf", "dp_audit.kind=gradient", "dp_audit.count=200",
                                    "train.epochs=10"])
    audit = RunResults.from_dict(out).dp_audit
    assert audit.score == "update" and math.isinf(RunResults.from_dict(out).targets[0].dp_epsilon)
    assert audit.one_run.epsilon > 1.0


@pytest.mark.parametrize("overrides, expected", [
    (["dp_audit.count=0"], "dp_audit.count=0"),
    (["dp_audit.delta=0"], "dp_audit.delta=0"),
    (["dp_audit.delta=1"], "dp_audit.delta=1"),
    (["dp_audit.confidence=1.5"], "dp_audit.confidence"),
    (["dp_audit.kind=canary"], "dp_audit.kind='canary'"),
    (["dp_audit.guesses=[0,0.5]"], "dp_audit.guesses"),
    (["dp_audit.kind=gradient"], "dp_audit.kind=gradient adds canary gradients inside DP-SGD"),
    (["dp_audit.kind=ood", "dataset=breast_cancer"], "dp_audit.kind=ood adds noise images"),
    (["dp_audit.score=lira_offline"], "dp_audit.score=lira_offline"),
    (["dp_audit.kind=gradient", "setting=dpsgd_eps_8", "dp_audit.score=loss"], "dp_audit.score='loss'"),
    (["target_ids=[0,2]"], "target_ids=[0, 2]"),
    (["setting=dpsgd_eps_8", "defense.delta=1e-6"], "dp_audit.delta=1e-05 differs from defense.delta"),
    (["forget.method=retrain"], "forget.method"),
])
def test_bad_keys_are_refused_naming_them(tmp_path, overrides, expected):
    other_data = any(o.startswith("dataset=") for o in overrides)
    base = [o for o in AUDIT if not (other_data and o.startswith("dataset."))]
    with pytest.raises(ValueError) as info:
        load_settings(make_config(tmp_path, [*base, *overrides]))
    assert expected in str(info.value), str(info.value)


@pytest.mark.parametrize("overrides, expected", [
    (["dp_audit.count=201"], "dp_audit.count=201 is too many canaries for the population"),
    (["dp_audit.score=lira_online", "attack=[loss,lira_online]"], "dp_audit.score=lira_online is an online attack"),
])
def test_data_dependent_refusals_come_before_any_training(tmp_path, overrides, expected):
    with pytest.raises(ValueError) as info:
        run_experiment(tmp_path, [*AUDIT, *overrides])
    assert expected in str(info.value), str(info.value)
    models = tmp_path / "store" / "models"
    assert not models.exists() or not any(models.iterdir())
