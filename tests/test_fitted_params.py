"""Attack knobs are chosen on the reference models only, and reported by ``fitted_params``."""
import itertools
import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from helpers import TINY, attack_stage_on, make_config, run_experiment
from mia_torch.attacks import RMIA, Attack, ReferenceSignals
from mia_torch.attacks.rmia import _count_auc
from mia_torch.pipeline import prepare
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from test_attacks import CONFIG_DIR, make_signals


def test_rmia_calibration_picks_the_best_leave_one_out_auc_of_explicit_refits():
    # Independent check of the (a, T) search: refit on R - 1 references for every grid point,
    # score the held-out reference, average sklearn's AUC over the folds.
    ref, _, _, _ = make_signals(4, 300, 2, d=1.5, s=1.0, m0=2.0, seed=21)
    fitted = RMIA(online=False).fit(ref)
    mean_auc = {}
    for a, t in itertools.product([i / 10 for i in range(11)], (1.0, 2.0, 4.0, 8.0)):
        aucs = []
        for held in range(ref.num_models):
            others = [r for r in range(ref.num_models) if r != held]
            sub = ReferenceSignals(ref.logits[others], ref.keep[others], ref.labels)
            attack = RMIA(online=False, a=a, temperature=t, calibrate_threshold=False).fit(sub)
            aucs.append(roc_auc_score(ref.keep[held].numpy(), attack.score(ref.logits[held], ref.labels).numpy()))
        mean_auc[(a, t)] = float(np.mean(aucs))
    best = max(mean_auc.values())
    params = fitted.fitted_params()
    assert params["calibration_auc"] == pytest.approx(best, abs=0.005)
    assert mean_auc[(params["a"], params["temperature"])] == pytest.approx(best, abs=0.005)
    # the grid matters here: the worst choice is clearly worse than the chosen one
    assert min(mean_auc.values()) < best - 0.02


def test_histogram_auc_of_population_counts_matches_sklearn():
    g = torch.Generator().manual_seed(24)
    counts = torch.randint(0, 7, (5, 400), generator=g)
    member = torch.rand(5, 400, generator=g) < 0.4
    ours = _count_auc(counts, member, 7)
    for row in range(5):
        assert ours[row].item() == pytest.approx(roc_auc_score(member[row].numpy(), counts[row].numpy()), abs=1e-12)
    assert _count_auc(counts[:1], torch.ones(1, 400, dtype=torch.bool), 7).item() == 0.5


def test_rmia_knobs_fixed_by_config_are_kept_and_one_reference_uses_the_documented_defaults():
    ref, _, _, _ = make_signals(4, 200, 2, d=1.0, s=1.0, seed=22)
    assert RMIA(online=False, a=0.7, temperature=3.0).fit(ref).fitted_params()["calibration_auc"] is None
    fixed = RMIA(online=False, a=0.7, temperature=3.0).fit(ref)
    assert (fixed.a_, fixed.temperature_) == (0.7, 3.0)
    online = RMIA(online=True).fit(ref).fitted_params()
    assert online["a"] is None and online["temperature"] in (1.0, 2.0, 4.0, 8.0)
    one = ReferenceSignals(ref.logits[:1], ref.keep[:1], ref.labels)
    single = RMIA(online=False).fit(one).fitted_params()
    assert (single["a"], single["temperature"], single["threshold"]) == (0.33, 2.0, None)


def test_every_attack_reports_json_ready_fitted_params():
    ref, tl, y, _ = make_signals(4, 200, 2, d=1.0, s=1.0, seed=23)
    for f in sorted((CONFIG_DIR / "attack").glob("*.yaml")):
        cfg = OmegaConf.load(f)
        if "epochs" in cfg:
            cfg.epochs = 20
        attack: Attack = instantiate(cfg).fit(ref)
        params = attack.fitted_params()
        assert "threshold" in params, f
        assert json.loads(json.dumps(params, allow_nan=False)) == params, f
        if attack.threshold is not None:
            assert params["threshold"] == attack.threshold


def synthetic_logits(keep: np.ndarray, labels: np.ndarray, num_classes: int, queries: int, seed: int) -> np.ndarray:
    """Logits ``[M, N, Q, C]`` whose true-class logit is higher where the model trained on the example."""
    g = torch.Generator().manual_seed(seed)
    m, n = keep.shape
    base = 2.0 * torch.randn(n, generator=g)  # per-example difficulty shared by every model
    z = torch.randn(m, n, queries, num_classes, generator=g)
    lift = base[None, :, None] + 1.5 * torch.from_numpy(keep).float()[..., None] + 0.5 * torch.randn(m, n, queries, generator=g)
    onehot = torch.nn.functional.one_hot(torch.from_numpy(labels).long(), num_classes).float()
    return (z + lift[..., None] * onehot[None, :, None, :]).numpy()


def test_fitted_knobs_and_scores_do_not_depend_on_the_targets_membership(tmp_path):
    cfg = make_config(tmp_path, [*TINY, "num_models=6", "sanity_check=false",
                                 "attack=[rmia,rmia_online,loss,population,lira_online]"])
    ctx = prepare(cfg, tmp_path / "run")
    target = ctx.splits.target_ids[0]
    labels = ctx.data.y.cpu().numpy()
    logits = synthetic_logits(ctx.splits.keep, labels, ctx.data.num_classes, 2, seed=0)
    first = attack_stage_on(ctx, logits)
    ctx.splits.keep[target] = ~ctx.splits.keep[target]  # the target's membership, flipped
    flipped = attack_stage_on(ctx, logits)
    for name in first.scores:
        assert first.fitted_params[name][target] == flipped.fitted_params[name][target], name
        assert np.array_equal(first.scores[name][target], flipped.scores[name][target]), name
        assert first.scores[name][target].dtype == np.float64, name
    rmia = first.fitted_params["rmia"][target]
    assert rmia["temperature"] in (1.0, 2.0, 4.0, 8.0) and 0.0 <= rmia["a"] <= 1.0
    # ...while the references' membership does enter the choice (the test can fail)
    refs = list(ctx.splits.reference_ids[target])
    rng = np.random.default_rng(0)
    for r in refs:
        ctx.splits.keep[r] = rng.permutation(ctx.splits.keep[r])
    shuffled = attack_stage_on(ctx, logits).fitted_params["rmia"][target]
    assert not math.isclose(shuffled["calibration_auc"], rmia["calibration_auc"])


def test_results_json_records_fitted_params(tmp_path):
    run_experiment(tmp_path, [*TINY, "attack=[loss,rmia]"])
    saved = RunResults.from_dict(read_json(tmp_path / "run" / "results.json"))
    rmia = saved.attacks["rmia"].per_target[0]
    assert rmia.target == 0
    fitted = rmia.fitted_params
    assert fitted["temperature"] in (1.0, 2.0, 4.0, 8.0) and fitted["a"] in [i / 10 for i in range(11)]
    assert fitted["threshold"] == rmia.threshold
    assert set(saved.attacks["loss"].per_target[0].fitted_params) == {"threshold"}
