"""DP-SGD through Opacus: noise calibration, the private trainer, and defense=dpsgd in a run."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import open_dict
from torch import nn

from helpers import TINY, digits_tensors, make_config, run_experiment
from mia_torch.models import MLP, SmallCNN
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.training import TrainConfig
from mia_torch.training.config import EarlyStoppingConfig
from mia_torch.settings import trusted
from mia_torch.settings.load import load_settings
from mia_torch.training.defense import Defense, NoDefense
from mia_torch.training.dp import DPSGD, make_private_compatible, noise_multiplier, train_private

pytest.importorskip("opacus")


@pytest.fixture(scope="module")
def digits():
    return digits_tensors()


def dpsgd(**values) -> DPSGD:
    return DPSGD(**values)


def test_more_noise_spends_less_epsilon_and_the_calibrated_noise_hits_the_target():
    from opacus.accountants import RDPAccountant

    def spent(sigma: float) -> float:
        accountant = RDPAccountant()
        accountant.history = [(sigma, 0.1, 300)]
        return accountant.get_epsilon(delta=1e-5)

    eps = [spent(s) for s in (0.6, 0.8, 1.0, 2.0, 4.0)]
    assert all(a > b for a, b in zip(eps, eps[1:])), eps
    sigmas = [noise_multiplier(e, delta=1e-5, sample_rate=0.1, steps=300) for e in (0.5, 1.0, 2.0, 8.0)]
    assert all(a > b for a, b in zip(sigmas, sigmas[1:])), sigmas
    for target, sigma in zip((0.5, 1.0, 2.0, 8.0), sigmas):
        assert target - 0.02 <= spent(sigma) <= target  # on the safe side, within Opacus' tolerance
    assert noise_multiplier(math.inf, delta=1e-5, sample_rate=0.1, steps=300) == 0.0
    with pytest.raises(ValueError, match="defense.epsilon"):
        noise_multiplier(1e-9, delta=1e-12, sample_rate=1.0, steps=10_000)


def _train(digits, defense: DPSGD, cfg: TrainConfig, *, seed: int = 0, model=None, **kw):
    x, y = digits
    torch.manual_seed(0)
    model = make_private_compatible(model or MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32,)))
    result = train_private(model, x, y, torch.arange(300), cfg, defense, seed=seed, delta=1e-3,
                           x_test=x[1500:], y_test=y[1500:], **kw)
    return model, result.metrics


def test_private_training_records_the_epsilon_it_spent(digits):
    cfg = TrainConfig(epochs=6, batch_size=30, lr=0.5, momentum=0.0, weight_decay=0.0)
    metrics = {eps: _train(digits, dpsgd(epsilon=eps), cfg)[1] for eps in (1.0, 2.0)}
    for eps, m in metrics.items():
        assert eps - 0.02 <= m["dp_epsilon"] <= eps
        assert m["dp_steps"] == 6 * 10 and m["dp_sample_rate"] == pytest.approx(0.1) and m["dp_delta"] == 1e-3
    assert metrics[1.0]["dp_noise_multiplier"] > metrics[2.0]["dp_noise_multiplier"] > 0
    model, again = _train(digits, dpsgd(epsilon=2.0), cfg)
    assert again == metrics[2.0]  # seeded sampling and noise: the same model twice on CPU
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())  # Opacus' hooks are gone


def _moved(model: nn.Module, start: nn.Module) -> torch.Tensor:
    return torch.cat([(a - b).flatten() for a, b in zip(model.parameters(), start.parameters())])


def test_clipping_bounds_every_update_without_noise_at_infinite_epsilon(digits):
    cfg = TrainConfig(epochs=2, batch_size=50, lr=0.5, momentum=0.0, weight_decay=0.0, schedule="constant")
    torch.manual_seed(0)
    start = MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32,))
    clip = 1e-3
    defense = dpsgd(epsilon=math.inf, max_grad_norm=clip, poisson_sampling=False)
    model, m = _train(digits, defense, cfg, model=copy.deepcopy(start))
    assert m["dp_noise_multiplier"] == 0.0 and math.isinf(m["dp_epsilon"])
    # 50 examples per step, each gradient clipped to norm `clip`: a step moves the weights by at most lr * clip
    assert 0 < _moved(model, start).norm().item() <= m["dp_steps"] * cfg.lr * clip * (1 + 1e-5)


def test_the_noise_has_the_calibrated_scale(digits):
    """One full-batch step with and without noise: the difference is lr * N(0, (sigma * C)^2) / batch."""
    cfg = TrainConfig(epochs=1, batch_size=300, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="constant")
    torch.manual_seed(0)
    start = MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(32,))
    clean, _ = _train(digits, dpsgd(epsilon=math.inf, max_grad_norm=0.5), cfg, model=copy.deepcopy(start))
    noisy, m = _train(digits, dpsgd(epsilon=1.0, max_grad_norm=0.5), cfg, model=copy.deepcopy(start))
    assert m["dp_steps"] == 1 and m["dp_sample_rate"] == 1.0
    noise = _moved(noisy, clean)
    scale = cfg.lr * m["dp_noise_multiplier"] * 0.5 / 300
    assert noise.std().item() == pytest.approx(scale, rel=0.08)
    assert abs(noise.mean().item()) < 4 * scale / math.sqrt(len(noise))


def test_early_stopped_private_training_spends_only_the_steps_it_took(digits):
    x, _ = digits
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))  # nothing to learn
    cfg = TrainConfig(epochs=30, batch_size=30, lr=0.5, early_stopping=EarlyStoppingConfig(patience=1))
    _, m = _train((x, y), dpsgd(epsilon=2.0, max_grad_norm=10.0), cfg, val_idx=torch.arange(300, 400))
    assert m["stopped_epoch"] < 30
    assert m["dp_steps"] == 10 * m["stopped_epoch"]
    assert m["dp_epsilon"] < m["dp_epsilon_target"] == 2.0


def test_batchnorm_is_replaced_and_an_unsupported_module_is_named(monkeypatch):
    from opacus.validators import ModuleValidator
    from opacus.validators.errors import UnsupportableModuleError

    model = make_private_compatible(SmallCNN(input_shape=(1, 8, 8), num_classes=10, width=8))
    kinds = {type(m) for m in model.modules()}
    assert nn.GroupNorm in kinds and not any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)

    monkeypatch.setitem(ModuleValidator.VALIDATORS, Mixer, lambda m: [UnsupportableModuleError("mixes examples")])
    with pytest.raises(ValueError, match=r"`head` \(Mixer\).*mixes examples"):
        make_private_compatible(_with_head(Mixer(8, 2)))


class Mixer(nn.Linear):
    """Stands for a layer Opacus rejects and cannot fix."""


def _with_head(head: nn.Module) -> nn.Module:
    model = nn.Sequential()
    model.add_module("body", nn.Linear(4, 8))
    model.add_module("head", head)
    return model


# ------------------------------------------------------------------ defense=dpsgd in a run


@pytest.mark.parametrize("model", [["model=mlp"], ["model=small_cnn", "model.width=4", "model.hidden=16"]],
                         ids=["mlp", "small_cnn"])
def test_tiny_dp_run_end_to_end(tmp_path, model):
    overrides = [*TINY, *model, "train.batch_size=20", "defense=dpsgd", "defense.epsilon=2", "attack=[loss]",
                 "sanity_check=false"]
    results = run_experiment(tmp_path, overrides)
    for m in results.models:
        assert 1.98 <= m["dp_epsilon"] <= 2.0 and m["dp_delta"] == 1 / 400
    saved = RunResults.from_dict(read_json(tmp_path / "run" / "results.json"))
    assert 1.98 <= saved.targets[0].dp_epsilon <= 2.0
    assert saved.targets[0].dp_noise_multiplier > 0
    # the models are rebuilt DP-compatible to load their weights: querying them again reuses them
    again = run_experiment(tmp_path, [*overrides, "queries=[identity]"], name="again")
    assert again.trained_models == []
    assert again.targets[0].test_acc == results.targets[0].test_acc


def test_apply_to_target_trains_references_without_dp_and_reuses_them(tmp_path):
    common = [*TINY, "train.batch_size=20", "attack=[loss]", "sanity_check=false"]
    plain = run_experiment(tmp_path, common, name="plain")
    weaker = run_experiment(tmp_path, [*common, "defense=dpsgd", "defense.epsilon=2", "defense.apply_to=target"],
                            name="weaker")
    assert "dp_epsilon" in weaker.models[0]
    assert not any("dp_epsilon" in m for m in weaker.models[1:])
    assert weaker.trained_models == [0]  # references are the no-defense run's models
    assert weaker.models[1:] == plain.models[1:]


def test_store_key_includes_every_defense_setting(tmp_path):
    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import model_key

    def keys(*overrides: str) -> tuple[str, str]:
        ctx = prepare(make_config(tmp_path, [*TINY, *overrides]), tmp_path / "run")
        return model_key(ctx, 0), model_key(ctx, 1)

    none = keys()
    settings = [(), ("defense.epsilon=1",), ("defense.epsilon=inf",), ("defense.delta=1e-4",),
                ("defense.max_grad_norm=2",), ("defense.poisson_sampling=false",), ("defense.accountant=prv",)]
    dp = [keys("defense=dpsgd", *s) for s in settings]
    target_keys = [none[0], *(k[0] for k in dp)]
    assert len(set(target_keys)) == len(target_keys)
    weaker = keys("defense=dpsgd", "defense.apply_to=target")
    assert weaker == (dp[0][0], none[1])  # the target as with apply_to=all, references as without DP


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["defense.epsilon=-1"], "defense.epsilon"),
        (["defense.epsilon=0"], "defense.epsilon"),
        (["defense.max_grad_norm=0"], "defense.max_grad_norm"),
        (["defense.delta=2"], "defense.delta"),
        (["defense.apply_to=shadows"], "defense.apply_to"),
        (["defense.accountant=moments"], "defense.accountant"),
        (["train.augment.mixup_alpha=0.2"], "train.augment.mixup_alpha"),
    ],
)
def test_bad_defense_values_are_refused_before_training(tmp_path, overrides, key):
    with pytest.raises(ValueError, match=key):
        run_experiment(tmp_path, [*TINY, "defense=dpsgd", *overrides])
    assert not (tmp_path / "store" / "models").exists()


def _defense(**values) -> Defense:
    return trusted.build(values, kind="defense", key="defense")


def test_defense_keys_of_another_defense_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="defense cannot be built: .*unexpected keyword argument 'epsilon'"):
        _defense(_target_="mia_torch.training.defense.NoDefense", name="none", epsilon=1.0)
    with pytest.raises(ValueError, match="defense cannot be built: .*unexpected keyword argument 'noise'"):
        _defense(_target_="mia_torch.training.dp.DPSGD", noise=1.0)
    with pytest.raises(ValueError, match=r"defense\._target_=collections\.OrderedDict builds .* not a Defense"):
        _defense(_target_="collections.OrderedDict")
    with pytest.raises(ValueError, match="defense has no _target_"):
        _defense(name="dpsgd")
    assert _defense(_target_="mia_torch.training.dp.DPSGD", epsilon=2) == DPSGD(epsilon=2)
    # runs saved before the group existed: no defense; before it named its _target_: the shipped option's
    config = make_config(tmp_path, TINY)
    with open_dict(config):
        del config["defense"]
    assert load_settings(config).defense == NoDefense()
    config = make_config(tmp_path, [*TINY, "defense=dpsgd", "defense.epsilon=2"])
    with open_dict(config):
        del config["defense"]["_target_"]
    assert load_settings(config).defense == DPSGD(epsilon=2)


@pytest.mark.slow
def test_dp_sgd_at_epsilon_1_cuts_the_leakage_of_the_digits_recipe(tmp_path):
    """The shipped recipe (configs/train/dp_digits.yaml) with and without DP-SGD, four targets pooled."""
    common = ["dataset=digits", "model=mlp", "model.hidden_sizes=[64]", "train=dp_digits", "target_ids=[0,2,4,6]",
              "attack=[loss,lira_online,lira_offline,rmia]", "sanity_check=false", "progress=false"]
    plain = run_experiment(tmp_path, common, name="none")
    private = run_experiment(tmp_path, [*common, "defense=dpsgd", "defense.epsilon=1", "defense.max_grad_norm=0.5"],
                             name="dp")

    def best(results):
        name = max(results.attacks, key=lambda a: results.attacks[a].pooled.auc)
        pooled = results.attacks[name].pooled
        return pooled.auc, pooled.ci["auc"]

    auc_plain, ci_plain = best(plain)
    auc_dp, ci_dp = best(private)
    assert ci_plain[0] > 0.55  # without DP the recipe memorises and leaks
    assert ci_dp[1] < ci_plain[0]  # DP-SGD at epsilon = 1: clearly less
    assert auc_dp < 0.54
    assert all(t.test_acc > 0.8 for t in private.targets.values())  # and still a useful model
