"""Regularization keys: train.augment (cutout, mixup) and train.early_stopping, in both trainers and the pipeline."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from torch import nn

from helpers import TINY, digits_tensors, make_config, run_experiment
from mia_torch.data.augment import random_crop_flip
from mia_torch.data.augment import (
    AugmentConfig,
    augment_batch,
    cutout,
    draw_augment,
    mix,
    mixup_cross_entropy,
    mixup_lambdas,
)
from mia_torch.data.splits import make_splits
from mia_torch.models import MLP, SmallCNN
from mia_torch.training import TrainConfig, evaluate, train_model
from mia_torch.training.config import EarlyStoppingConfig
from mia_torch.training.early_stopping import EarlyStopping
from mia_torch.training.ensemble import train_models


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits, normalised, as ``[N, 1, 8, 8]``; a fixed shuffle."""
    return digits_tensors(shuffle_seed=0)


def bn_cnn() -> nn.Module:
    return SmallCNN(input_shape=(1, 8, 8), num_classes=10, width=8, hidden=32, norm="batch")


def max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[n].double() - sb[n].double()).abs().max().item() for n in sa)


# ------------------------------------------------------------------ augmentation


def test_cutout_zeroes_a_square_clipped_at_the_border():
    x = torch.ones(3, 2, 6, 7)
    centers = torch.tensor([[3, 3], [0, 0], [5, 6]])
    got = cutout(x, size=3, centers=centers)
    for b, (cy, cx) in enumerate(centers.tolist()):
        for i in range(6):
            for j in range(7):
                inside = cy - 1 <= i <= cy + 1 and cx - 1 <= j <= cx + 1
                assert bool((got[b, :, i, j] == 0).all()) == inside, (b, i, j)
    assert int((got[0] == 0).sum()) == 2 * 9 and int((got[1] == 0).sum()) == 2 * 4


def test_mixup_loss_is_cross_entropy_on_the_mixed_soft_labels():
    gen = torch.Generator().manual_seed(0)
    logits, y = torch.randn(8, 5, generator=gen), torch.randint(0, 5, (8,), generator=gen)
    partners, lam = torch.randperm(8, generator=gen), torch.tensor(0.3)
    soft = lam * F.one_hot(y, 5) + (1 - lam) * F.one_hot(y[partners], 5)
    torch.testing.assert_close(mixup_cross_entropy(logits, y, partners, lam),
                               F.cross_entropy(logits, soft.float(), reduction="none"))
    x = torch.randn(8, 1, 4, 4, generator=gen)
    torch.testing.assert_close(mix(x, partners, lam), 0.3 * x + 0.7 * x[partners])
    per_example = torch.linspace(0, 1, 8)  # the stacked trainer passes one coefficient per example
    torch.testing.assert_close(mix(x, partners, per_example)[7], x[7])
    torch.testing.assert_close(mix(x, partners, per_example)[0], x[partners[0]])


def test_mixup_coefficients_are_seeded_beta_draws():
    lams = mixup_lambdas(0.4, 4000, seed=7, device=torch.device("cpu"))
    assert torch.equal(lams, mixup_lambdas(0.4, 4000, seed=7, device=torch.device("cpu")))
    assert not torch.equal(lams, mixup_lambdas(0.4, 4000, seed=8, device=torch.device("cpu")))
    assert stats.kstest(lams.numpy(), stats.beta(0.4, 0.4).cdf).pvalue > 0.01


def test_crop_and_flip_draw_as_before_cutout_and_mixup_existed():
    x = torch.randn(6, 2, 8, 8)
    cfg = AugmentConfig(crop_padding=2, flip=True)
    draws = draw_augment(6, cfg, image_size=(8, 8), generator=torch.Generator().manual_seed(3), device=x.device)
    want = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(augment_batch(x, draws, cfg), want)
    assert draws.centers is None and draws.partners is None


def test_augment_keys_are_validated_by_name_and_the_older_spelling_still_works():
    with pytest.raises(ValueError, match="train.augment.cutout"):
        TrainConfig.from_mapping({"augment": {"cutout": -1}})
    with pytest.raises(ValueError, match="train.augment.mixup_alpha"):
        TrainConfig.from_mapping({"augment": {"mixup_alpha": -0.5}})
    with pytest.raises(ValueError, match="train.augment.cutot"):
        TrainConfig.from_mapping({"augment": {"cutot": 2}})
    old = TrainConfig(crop_padding=2, flip=True)
    assert old.augment == AugmentConfig(crop_padding=2, flip=True)
    assert old.to_dict() == TrainConfig(augment=AugmentConfig(crop_padding=2, flip=True)).to_dict()
    with pytest.raises(ValueError, match="disagree"):
        TrainConfig.from_mapping({"crop_padding": 2, "augment": {"crop_padding": 4}})


def test_vmap_trains_the_same_models_as_the_loop_with_cutout_and_mixup(digits):
    x, y = digits
    members = [torch.arange(0, 400), torch.arange(400, 800), torch.arange(800, 1199)]
    aug = AugmentConfig(crop_padding=1, flip=True, cutout=3, mixup_alpha=0.4)
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, augment=aug)
    torch.manual_seed(0)
    init = [bn_cnn() for _ in members]
    together, apart, plain = (copy.deepcopy(init) for _ in range(3))
    res_v = train_models(together, x, y, members, cfg, seeds=[1, 2, 3], strategy="vmap")
    res_l = [train_model(m, x, y, i, cfg, seed=s) for m, i, s in zip(apart, members, [1, 2, 3])]
    no_aug = TrainConfig(epochs=1, batch_size=64, lr=0.1)
    for m, i, s in zip(plain, members, [1, 2, 3]):
        train_model(m, x, y, i, no_aug, seed=s)
    for rv, rl in zip(res_v, res_l):
        assert rv.metrics["epoch_train_loss"] == pytest.approx(rl.metrics["epoch_train_loss"], rel=1e-4)
    for mv, ml, mp in zip(together, apart, plain):
        assert max_diff(mv, ml) < 3e-3  # same batches, cutouts, partners and coefficients
        assert max_diff(ml, mp) > 1e-2  # and the augmentation did change training


def test_training_with_cutout_and_mixup_still_learns(digits):
    x, y = digits
    cfg = TrainConfig(epochs=15, batch_size=64, optimizer="adam", lr=3e-3, weight_decay=0.0,
                      augment=AugmentConfig(cutout=2, mixup_alpha=0.2))
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(128,))
    result = train_model(model, x, y, torch.arange(1000), cfg, seed=0, x_test=x[1300:], y_test=y[1300:])
    assert result.metrics["test_acc"] > 0.85, result.metrics["test_acc"]


# ------------------------------------------------------------------ early stopping


def test_early_stopping_stops_after_patience_and_restores_the_best_epoch():
    model = nn.Linear(1, 1, bias=False)
    stopper = EarlyStopping(EarlyStoppingConfig(patience=2, metric="loss"))
    decisions = []
    for epoch, loss in enumerate([1.0, 0.8, 0.9, 0.8, 0.95], start=1):
        nn.init.constant_(model.weight, float(epoch))
        decisions.append(stopper.update(model, loss=loss, acc=0.0))
        if decisions[-1]:
            break
    assert decisions == [False, False, False, True]  # best at epoch 2; 0.8 again is no improvement
    stopper.restore(model)
    assert model.weight.item() == 2.0
    assert stopper.metrics() | {"epoch_val_loss": None} == {
        "best_epoch": 2, "stopped_epoch": 4, "val_loss": 0.8, "val_acc": 0.0,
        "epoch_val_loss": None, "epoch_val_acc": [0.0] * 4}
    by_acc = EarlyStopping(EarlyStoppingConfig(patience=1, metric="acc"))
    assert [by_acc.update(model, loss=0.0, acc=a) for a in (0.5, 0.7, 0.6)] == [False, False, True]
    assert by_acc.best_epoch == 2


def _memorising(digits):
    """Random labels: held-out loss can only get worse once the model starts memorising."""
    x, _ = digits
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    cfg = TrainConfig(epochs=40, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0, schedule="constant",
                      early_stopping=EarlyStoppingConfig(patience=3))
    return x, y, cfg


def test_train_model_stops_early_and_keeps_the_best_epochs_weights(digits):
    x, y, cfg = _memorising(digits)
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(128,))
    val = torch.arange(300, 400)
    m = train_model(model, x, y, torch.arange(300), cfg, seed=0, val_idx=val).metrics
    assert m["stopped_epoch"] < cfg.epochs
    assert m["stopped_epoch"] == m["best_epoch"] + 3
    assert len(m["epoch_train_loss"]) == len(m["epoch_val_loss"]) == m["stopped_epoch"]
    assert m["val_loss"] == min(m["epoch_val_loss"]) == m["epoch_val_loss"][m["best_epoch"] - 1]
    assert evaluate(model, x[val], y[val])[0] == pytest.approx(m["val_loss"], rel=1e-6)  # restored
    with pytest.raises(ValueError, match="train.early_stopping"):
        train_model(model, x, y, torch.arange(300), cfg, seed=0)


def test_vmap_and_loop_stop_at_the_same_epochs(digits):
    x, y, cfg = _memorising(digits)
    members = [torch.arange(0, 300), torch.arange(400, 700)]
    vals = [torch.arange(300, 400), torch.arange(700, 800)]
    torch.manual_seed(0)
    init = [MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(128,)) for _ in members]
    together, apart = copy.deepcopy(init), copy.deepcopy(init)
    res_v = train_models(together, x, y, members, cfg, seeds=[0, 1], val_idx=vals, strategy="vmap")
    res_l = train_models(apart, x, y, members, cfg, seeds=[0, 1], val_idx=vals, strategy="loop")
    for rv, rl, mv, ml in zip(res_v, res_l, together, apart):
        for key in ("best_epoch", "stopped_epoch"):
            assert rv.metrics[key] == rl.metrics[key], key
        assert len(rv.metrics["epoch_train_loss"]) == rv.metrics["stopped_epoch"]
        assert rv.metrics["val_loss"] == pytest.approx(rl.metrics["val_loss"], rel=1e-3)
        assert max_diff(mv, ml) < 1e-3
    stops = [r.metrics["stopped_epoch"] for r in res_v]
    assert stops[0] != stops[1] and max(stops) < cfg.epochs  # one model stopped while the other still trained


# ------------------------------------------------------------------ in the pipeline


def test_early_stopping_run_uses_each_models_effective_membership(tmp_path, monkeypatch):
    import mia_torch.stages.train as train_stage
    from mia_torch.attacks import ThresholdAttack

    seen = {"train": [], "refs": []}
    real_train, real_fit = train_stage.train_models, ThresholdAttack.fit_features

    def spy_train(models, x, y, member_idx, cfg, **kw):
        seen["train"] += list(zip(member_idx, kw["val_idx"]))
        return real_train(models, x, y, member_idx, cfg, **kw)

    def spy_fit(self, ref=None, **kw):
        seen["refs"].append(ref.keep_of().cpu().numpy())
        return real_fit(self, ref, **kw)

    monkeypatch.setattr(train_stage, "train_models", spy_train)
    monkeypatch.setattr(ThresholdAttack, "fit_features", spy_fit)
    results = run_experiment(tmp_path, [*TINY, "train.epochs=30", "dataset.label_noise=0.3", "attack=[loss]",
                                        "train.early_stopping.patience=2",
                                        "train.early_stopping.validation_fraction=0.2", "sanity_check=false"])
    keep, validation = np.load(tmp_path / "run" / "keep.npy"), np.load(tmp_path / "run" / "validation.npy")
    dealt = make_splits(4, 400, seed=0).keep
    np.testing.assert_array_equal(keep | validation, dealt)
    assert not (keep & validation).any() and (validation.sum(1) == 40).all()
    for m, (members, val) in enumerate(seen["train"]):  # each model trained on its keep row only
        np.testing.assert_array_equal(members.numpy(), np.flatnonzero(keep[m]))
        np.testing.assert_array_equal(val.numpy(), np.flatnonzero(validation[m]))
    np.testing.assert_array_equal(seen["refs"][0], keep[[2, 3]])  # references' keep rows: effective
    row = results.attacks["loss"].per_target[0]
    assert row.num_members == keep[0].sum() == 160  # the target's held-out records count as non-members
    assert all(m["stopped_epoch"] < 30 and m["best_epoch"] >= 1 for m in results.models)
    assert results.targets[0].stopped_epoch == results.models[0]["stopped_epoch"]


def test_regularization_keys_enter_the_store_key(tmp_path):
    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import model_key

    def key(*overrides: str) -> str:
        return model_key(prepare(make_config(tmp_path, [*TINY, *overrides]), tmp_path / "run"), 0)

    keys = [key(), key("model.dropout=0.2"), key("train.augment.cutout=2"), key("train.augment.mixup_alpha=0.2"),
            key("train.early_stopping.patience=3"), key("train.early_stopping.patience=3", "train.early_stopping.metric=acc")]
    assert len(set(keys)) == len(keys)
    assert key("train.crop_padding=1") == key("train.augment.crop_padding=1")  # the older spelling: same model
