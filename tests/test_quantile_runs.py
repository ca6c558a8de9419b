"""The quantile attack, the blind baseline and precision at priors in real runs (tiny configs).

A study with one model (no reference), an audit of a checkpoint trained outside the framework
with no reference model trained, and audits whose claimed members do and do not differ in
distribution from the other records (the blind baseline's warning fires, or stays silent).
"""
import json
import logging
import math

import numpy as np
import pytest
import torch

from helpers import TINY, make_config, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.metrics import roc_curve
from mia_torch.models.mlp import MLP
from mia_torch.report.types import RunResults

ONE_MODEL = [o for o in TINY if not o.startswith("num_models")] + ["num_models=1"]
QUICK = "attack.quantile.epochs=20"  # with attack=[quantile, ...]: a short regression fit
OUTSIDE_HIDDEN = [64]  # the outside model's layers, which its audit names (model.hidden_sizes)


def test_a_study_without_reference_models(tmp_path):
    results = run_experiment(tmp_path, [*ONE_MODEL, "attack=[quantile,loss,blind]", QUICK,
                                        "attack.quantile.public=nonmembers"])
    assert results.trained_models == [0] and len(results.models) == 1
    keep = np.load(tmp_path / "run" / "keep.npy")
    scores = load_scores(tmp_path / "run" / "scores.npz")["quantile"][0]
    public = np.isnan(scores)
    assert public.any() and not (public & keep[0]).any()  # the regression's records: non-members, never scored
    quantile = results.attacks["quantile"]
    fitted = quantile.per_target[0].fitted_params
    assert fitted["num_public"] == public.sum() == fitted["public_sources"]["non-members of the target"]
    assert quantile.pooled.num_nonmembers == (~keep[0]).sum() - public.sum()
    assert quantile.pooled.num_members == keep[0].sum()
    # precision at priors: the formula at the ROC point of each FPR target, from the saved scores
    fpr, tpr, thresholds = roc_curve(scores[~public], keep[0][~public])
    for point in quantile.precision:
        at = np.flatnonzero(thresholds == point.threshold)[0]
        flagged = point.prior * tpr[at] + (1 - point.prior) * fpr[at]
        if flagged:
            assert point.ppv == pytest.approx(point.prior * tpr[at] / flagged, rel=1e-12)
        else:
            assert math.isnan(point.ppv)  # nothing flagged: no precision (written as null)
    assert {(p.prior, p.fpr_target) for p in quantile.precision} == {
        (p, f) for p in (0.5, 0.1, 0.01) for f in (0.01, 0.001)}
    blind = results.blind_baseline  # random halves: the records alone cannot tell members apart
    assert blind.auc_ci[0] <= 0.5 <= blind.auc_ci[1] and not blind.warning and not blind.shift
    assert "blind" not in results.attacks
    saved = RunResults.from_dict(json.loads((tmp_path / "run" / "results.json").read_text()))  # read back, typed
    assert saved.blind_baseline == blind and saved.attacks["quantile"].precision[0] == quantile.precision[0]
    summary = (tmp_path / "run" / "report.html").read_text()
    assert 'id="blind-verdict"' in summary and 'id="precision-table"' in summary


def _outside_checkpoint(tmp_path, members: np.ndarray) -> None:
    """A model trained with a plain torch loop on ``members`` of the synthetic population (not by the framework)."""
    from mia_torch.pipeline import prepare

    ctx = prepare(make_config(tmp_path, [*ONE_MODEL, "attack=[loss]"]), tmp_path / "prepare")
    x, y = ctx.data.x, ctx.data.y
    torch.manual_seed(0)
    model = MLP(input_shape=tuple(x.shape[1:]), num_classes=ctx.data.num_classes, hidden_sizes=OUTSIDE_HIDDEN)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    order = np.random.default_rng(0)
    for _ in range(30):
        for batch in torch.from_numpy(order.permutation(members)).split(32):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
    torch.save(model.state_dict(), tmp_path / "model.pt")


def _audited(tmp_path) -> list[str]:
    """An audit of the outside checkpoint: its architecture and file, no reference model."""
    return [*ONE_MODEL, f"model.hidden_sizes={OUTSIDE_HIDDEN}", f"audit.checkpoint={tmp_path}/model.pt"]


def _ids(tmp_path, name: str, ids: np.ndarray) -> str:
    np.save(tmp_path / f"{name}.npy", ids)
    return str(tmp_path / f"{name}.npy")


def test_an_outside_checkpoint_is_audited_without_reference_models(tmp_path, caplog):
    n = 400
    rng = np.random.default_rng(1)
    members = np.sort(rng.permutation(n)[: n // 2])
    public = np.sort(rng.permutation(np.setdiff1d(np.arange(n), members))[:100])
    _outside_checkpoint(tmp_path, members)
    with caplog.at_level(logging.INFO):
        results = run_experiment(tmp_path, [*_audited(tmp_path), "attack=[quantile]", QUICK,
                                            f"audit.members={_ids(tmp_path, 'members', members)}",
                                            f"audit.public={_ids(tmp_path, 'public', public)}"], name="audit")
    assert results.trained_models == [] and results.reused_models == []
    assert [m["model"] for m in results.models] == [0]  # the audited model only
    assert "no reference model trained" in caplog.text
    assert results.audit.candidates == n - len(public) and results.audit.public == len(public)
    assert results.audit.expected_false_flags["0.1"] == pytest.approx(0.9 * (n - len(public)) * 0.01)
    header = (tmp_path / "audit" / "records.csv").read_text().splitlines()[0].split(",")
    assert "quantile_score" in header and "calibration_records" in header
    assert results.attacks["quantile"].pooled.num_nonmembers == n - len(members) - len(public)
    assert results.blind_baseline is not None and not results.blind_baseline.warning


def test_members_unlike_the_other_records_make_the_blind_baseline_warn(tmp_path, capsys):
    """The claimed members are the records whose first pixel is brightest: a classifier of the records alone
    separates them, and neither attack beats it, so the warning fires."""
    from mia_torch.pipeline import prepare

    ctx = prepare(make_config(tmp_path, [*ONE_MODEL, "attack=[loss]"]), tmp_path / "prepare")
    first_pixel = ctx.data.x.reshape(len(ctx.data.y), -1)[:, 0].cpu().numpy()
    bright = first_pixel > np.median(first_pixel)
    members, public = np.flatnonzero(bright), np.flatnonzero(~bright)[::2]
    _outside_checkpoint(tmp_path, members)
    results = run_experiment(tmp_path, [*_audited(tmp_path), "attack=[quantile,loss]", QUICK,
                                        f"audit.members={_ids(tmp_path, 'members', members)}",
                                        f"audit.public={_ids(tmp_path, 'public', public)}"], name="shifted")
    blind = results.blind_baseline
    assert blind.auc_ci[0] > 0.8 and blind.shift and blind.warning
    assert set(blind.not_beating) == {"quantile", "loss"}
    assert "WARNING: the members and non-members differ in distribution" in capsys.readouterr().out
    saved = json.loads((tmp_path / "shifted" / "results.json").read_text())
    assert saved["blind_baseline"]["warning"] is True


@pytest.mark.parametrize("overrides, message", [
    (["attack=[quantile]"], "audit.public"),
    (["attack=[quantile]", "audit.public=[1,2,3]", "audit.candidates=[3,4]"], "share 1 record"),
    (["attack=[loss]"], "attack=quantile"),
])
def test_audits_without_references_refuse_what_they_cannot_do(tmp_path, overrides, message):
    members = np.arange(0, 400, 2)
    _outside_checkpoint(tmp_path, members)
    with pytest.raises(ValueError, match=message):
        run_experiment(tmp_path, [*_audited(tmp_path), *overrides], name="refused")
    assert not (tmp_path / "refused" / "keep.npy").exists()  # refused before anything was written
