"""Training several models at once: same models as one-by-one training, per-model data, BatchNorm."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from torch import nn

import mia_torch.training.ensemble as ensemble
from helpers import digits_tensors
from mia_torch.data.augment import crop_flip, random_crop_flip
from mia_torch.models import MLP, SmallCNN
from mia_torch.signals.collect import collect_logits
from mia_torch.signals.collect_many import collect_logits_many
from mia_torch.training import TrainConfig, train_model
from mia_torch.training.ensemble import train_models
from mia_torch.training.stacking import StackedNet, stack_models


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's 8x8 digits, normalised, as ``[N, 1, 8, 8]``; a fixed shuffle."""
    return digits_tensors(shuffle_seed=0)


def mlp() -> nn.Module:
    return MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(64,))


def bn_cnn() -> nn.Module:
    return SmallCNN(input_shape=(1, 8, 8), num_classes=10, width=8, hidden=32, norm="batch")


def make_models(factory, k: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [factory() for _ in range(k)]


def max_diff(a: nn.Module, b: nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max((sa[n].double() - sb[n].double()).abs().max().item() for n in sa)


def train_both(factory, x, y, members, cfg, seeds, **kw):
    """The same models trained by the vmap ensemble and one by one by ``train_model``."""
    init = make_models(factory, len(members))
    together, apart = copy.deepcopy(init), copy.deepcopy(init)
    res_v = train_models(together, x, y, members, cfg, seeds=seeds, strategy="vmap", **kw)
    res_l = [train_model(m, x, y, idx, cfg, seed=s, **kw) for m, idx, s in zip(apart, members, seeds)]
    return init, together, apart, res_v, res_l


MEMBERS = [torch.arange(0, 400), torch.arange(400, 800), torch.arange(800, 1199)]  # 400, 400, 399 examples


@pytest.mark.parametrize("factory", [mlp, bn_cnn], ids=["mlp", "bn_cnn"])
def test_vmap_ensemble_reaches_the_accuracy_of_one_by_one(digits, factory):
    x, y = digits
    cfg = TrainConfig(epochs=10, batch_size=64, lr=0.1, crop_padding=1)
    _, together, _, res_v, res_l = train_both(
        factory, x, y, MEMBERS, cfg, [1, 2, 3], x_test=x[1300:], y_test=y[1300:]
    )
    for rv, rl in zip(res_v, res_l):
        assert set(rv.metrics) == set(rl.metrics)
        assert len(rv.metrics["epoch_train_acc"]) == 10
        assert rv.metrics["test_acc"] > 0.75, rv.metrics
        assert abs(rv.metrics["test_acc"] - rl.metrics["test_acc"]) < 0.05
        assert abs(rv.metrics["train_acc"] - rl.metrics["train_acc"]) < 0.05
    assert not any(m.training for m in together)


def test_vmap_ensemble_trains_the_same_models_as_one_by_one(digits):
    """Same batches, augmentations and updates: the models agree up to rounding (which grows with training)."""
    x, y = digits
    cfg = TrainConfig(epochs=1, batch_size=64, lr=0.1, crop_padding=1, flip=True)
    init, together, apart, res_v, res_l = train_both(bn_cnn, x, y, MEMBERS, cfg, [1, 2, 3])
    for rv, rl in zip(res_v, res_l):
        assert rv.metrics["epoch_train_loss"] == pytest.approx(rl.metrics["epoch_train_loss"], rel=1e-4)
        assert rv.metrics["epoch_train_acc"] == pytest.approx(rl.metrics["epoch_train_acc"], abs=0.01)
    for mv, ml, m0 in zip(together, apart, init):
        assert max_diff(mv, m0) > 1e-2  # trained in place
        assert max_diff(mv, ml) < 3e-3
        for (name, bv), bl, b0 in zip(mv.named_buffers(), ml.buffers(), m0.buffers()):
            if bv.is_floating_point():  # BatchNorm running stats: learned, and as one-by-one training
                assert (bv - b0).abs().max() > 1e-2, name
                torch.testing.assert_close(bv, bl, atol=3e-3, rtol=3e-3, msg=name)
            else:
                assert torch.equal(bv, bl), name  # num_batches_tracked


def test_batchnorm_running_stats_are_each_models_own(digits):
    """After one full-batch step, every model's BatchNorm buffers equal its own train-mode forward's."""
    x, y = digits
    members = [torch.arange(0, 100), torch.arange(100, 200)]
    cfg = TrainConfig(epochs=1, batch_size=100, lr=0.05)
    init = make_models(bn_cnn, 2)
    models = copy.deepcopy(init)
    train_models(models, x, y, members, cfg, seeds=[0, 1], strategy="vmap")
    for model, first, idx, seed in zip(models, copy.deepcopy(init), members, [0, 1]):
        train_model(first, x, y, idx, cfg, seed=seed)
        assert max_diff(model, first) < 1e-5  # one step: the same update up to rounding
    for model, ref, idx in zip(models, copy.deepcopy(init), members):
        ref.train()(x[idx])  # the update BatchNorm makes in the (only) training step's forward
        for (name, got), want in zip(model.named_buffers(), ref.buffers()):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4, msg=name)
        assert model.features[1].running_mean.abs().max() > 1e-3
        # eval-mode logits use those running stats (not batch statistics)
        ref.load_state_dict(model.state_dict())
        bn = ref.features[1]
        with torch.no_grad():
            pre = ref.features[0](x[:5])
            expected = (pre - bn.running_mean.view(1, -1, 1, 1)) / torch.sqrt(bn.running_var.view(1, -1, 1, 1) + bn.eps)
            expected = expected * bn.weight.view(1, -1, 1, 1) + bn.bias.view(1, -1, 1, 1)
            torch.testing.assert_close(model.eval().features[1](pre), expected, atol=1e-5, rtol=1e-5)


def test_each_model_learns_only_its_members(digits):
    """Random labels can only be memorised: each model fits its own members, not the other's."""
    x, _ = digits
    y = torch.randint(0, 10, (len(x),), generator=torch.Generator().manual_seed(1))
    members = [torch.arange(0, 120), torch.arange(120, 239)]  # unequal counts: padded batches
    cfg = TrainConfig(epochs=40, batch_size=32, optimizer="adam", lr=0.01, weight_decay=0.0, schedule="constant")
    models = make_models(lambda: MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(256,)), 2)
    results = train_models(models, x, y, members, cfg, seeds=[0, 1], strategy="vmap")

    def acc(model, idx):
        with torch.no_grad():
            return (model.eval()(x[idx]).argmax(1) == y[idx]).float().mean().item()

    for k, (model, result) in enumerate(zip(models, results)):
        own, other = members[k], members[1 - k]
        assert acc(model, own) > 0.95
        assert result.metrics["train_acc"] == pytest.approx(acc(model, own), abs=1e-6)
        assert acc(model, other) < 0.35


def test_split_layout_sees_every_member_once_per_epoch():
    for counts, num_batches in [([10, 10], 3), ([10, 9, 11], 3), ([128, 127], 1), ([7], 7)]:
        pos, valid, sizes, width = ensemble._split_layout(counts, num_batches)
        assert pos.shape == valid.shape == (len(counts), num_batches, width)
        for k, n in enumerate(counts):
            seen = pos[k][valid[k]]
            assert sorted(seen.tolist()) == list(range(n))
            assert (pos[k] < n).all()  # padded slots repeat the model's own examples
            want = [len(c) for c in torch.tensor_split(torch.arange(n), num_batches)]
            assert sizes[k].tolist() == want
            for j in range(num_batches):  # padding repeats the same chunk
                chunk = set(pos[k, j, : sizes[k, j]].tolist())
                assert set(pos[k, j].tolist()) <= chunk


@pytest.mark.parametrize(("padding", "flip"), [(1, True), (2, False), (0, True), (9, True)])
def test_batched_augmentation_matches_random_crop_flip(padding, flip):
    x = torch.randn(6, 2, 8, 8)
    cfg = TrainConfig(crop_padding=padding, flip=flip)
    want = random_crop_flip(x, padding=padding, flip=flip, generator=torch.Generator().manual_seed(3))
    src = torch.arange(6).view(1, 6)
    draws = ensemble._stacked_draws([torch.Generator().manual_seed(3)], [6], cfg.augment, src,
                                    image_size=(8, 8), device=x.device)
    got = crop_flip(x, padding=padding, offsets=draws.offsets, flips=draws.flips)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_single_model_matches_train_model(digits):
    x, y = digits
    idx = torch.arange(300)
    cfg = TrainConfig(epochs=3, batch_size=64, lr=0.05, crop_padding=1, flip=True, label_smoothing=0.1)
    init = make_models(bn_cnn, 1)[0]
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    (ra,) = train_models([a], x, y, [idx], cfg, seeds=[5], x_test=x[1500:], y_test=y[1500:], strategy="vmap")
    rb = train_model(b, x, y, idx, cfg, seed=5, x_test=x[1500:], y_test=y[1500:])
    for key, value in rb.metrics.items():
        assert ra.metrics[key] == pytest.approx(value, rel=2e-3, abs=2e-3), key
    assert max_diff(a, b) < 5e-3


def test_seeds_determine_the_models(digits):
    x, y = digits
    members = [torch.arange(0, 200), torch.arange(200, 400)]
    cfg = TrainConfig(epochs=2, batch_size=50, crop_padding=1, flip=True)
    init = make_models(bn_cnn, 2)
    runs = []
    for seeds in ([0, 1], [0, 1], [2, 3]):
        models = copy.deepcopy(init)
        results = train_models(models, x, y, members, cfg, seeds=seeds, strategy="vmap")
        runs.append((models, results))
    for m1, m2 in zip(runs[0][0], runs[1][0]):
        assert max_diff(m1, m2) == 0.0  # same seeds: bitwise the same on CPU
    assert [r.metrics for r in runs[0][1]] == [r.metrics for r in runs[1][1]]
    for m1, m3 in zip(runs[0][0], runs[2][0]):
        assert max_diff(m1, m3) > 1e-3  # other seeds: other data order and augmentation


def test_auto_strategy_and_loop_equal_train_model(digits):
    x, y = digits
    members = [torch.arange(0, 100), torch.arange(100, 200)]
    cfg = TrainConfig(epochs=1, batch_size=50)
    init = make_models(mlp, 2)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    ra = train_models(a, x, y, members, cfg, seeds=[0, 1])  # auto: loop on CPU
    rb = [train_model(m, x, y, i, cfg, seed=s) for m, i, s in zip(b, members, [0, 1])]
    assert [r.metrics for r in ra] == [r.metrics for r in rb]
    assert all(max_diff(ma, mb) == 0.0 for ma, mb in zip(a, b))


class _HostSync(nn.Module):
    """A model whose forward reads a value on the host: vmap has no batching rule for it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) / max(1.0, float(x.abs().max()))


def test_falls_back_to_one_by_one_with_a_warning(digits, caplog):
    x, y = digits
    members = [torch.arange(0, 100), torch.arange(100, 200)]
    cfg = TrainConfig(epochs=1, batch_size=50)
    for factories in ([_HostSync, _HostSync], [mlp, bn_cnn]):  # no batching rule; two architectures
        torch.manual_seed(0)
        init = [f() for f in factories]
        a, b = copy.deepcopy(init), copy.deepcopy(init)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="mia_torch.training.ensemble"):
            ra = train_models(a, x, y, members, cfg, seeds=[0, 1], strategy="vmap")
        assert "one at a time" in caplog.text
        rb = [train_model(m, x, y, i, cfg, seed=s) for m, i, s in zip(b, members, [0, 1])]
        assert [r.metrics for r in ra] == [r.metrics for r in rb]


def test_very_uneven_member_counts_use_the_loop(digits, caplog):
    x, y = digits
    members = [torch.arange(0, 40), torch.arange(40, 240)]
    models = make_models(mlp, 2)
    with caplog.at_level(logging.WARNING, logger="mia_torch.training.ensemble"):
        cfg = TrainConfig(epochs=1, batch_size=20)
        results = train_models(models, x, y, members, cfg, seeds=[0, 1], strategy="vmap")
    assert "pad" in caplog.text and len(results) == 2


def test_bf16_mixed_precision_with_batchnorm(digits, monkeypatch):
    """The path CUDA takes (bf16 convs, float32 BatchNorm under vmap), here on CPU, vs float32 one by one."""
    x, y = digits
    members = [torch.arange(0, 300), torch.arange(300, 599)]
    cfg = TrainConfig(epochs=8, batch_size=64, lr=0.1, crop_padding=1)
    init = make_models(bn_cnn, 2)
    fp32 = copy.deepcopy(init)
    ref = [
        train_model(m, x, y, i, cfg, seed=s, x_test=x[1300:], y_test=y[1300:]) for m, i, s in zip(fp32, members, [0, 1])
    ]
    monkeypatch.setattr(ensemble, "compute_dtype", lambda device: torch.bfloat16)
    net = StackedNet(init[0], torch.bfloat16)
    params, buffers = stack_models(init)
    assert torch.func.vmap(net)(net.cast(params), buffers, x[:8].expand(2, 8, 1, 8, 8)).dtype == torch.bfloat16
    models = copy.deepcopy(init)
    results = train_models(models, x, y, members, cfg, seeds=[0, 1], x_test=x[1300:], y_test=y[1300:], strategy="vmap")
    for model, result, want in zip(models, results, ref):
        assert result.metrics["test_acc"] > want.metrics["test_acc"] - 0.1 > 0.6
        assert model.features[0].weight.dtype == model.features[1].running_mean.dtype == torch.float32
        assert model.features[1].running_mean.abs().max() > 1e-3
    logits = collect_logits_many(models, x[:50], ["identity", "flip"], strategy="vmap")
    want = torch.stack([collect_logits(m, x[:50], ["identity", "flip"]) for m in models])
    torch.testing.assert_close(logits, want, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("factory", [mlp, bn_cnn], ids=["mlp", "bn_cnn"])
def test_collect_logits_many_matches_collect_logits(digits, factory):
    x, _ = digits
    models = make_models(factory, 3)
    for m in models:  # non-trivial running stats
        m.train()(x[:64])
    queries = ["identity", "flip", "shift_1_0"]
    want = torch.stack([collect_logits(m, x[:100], queries, batch_size=32) for m in models])
    for strategy in ("vmap", "loop"):
        got = collect_logits_many(models, x[:100], queries, batch_size=32, strategy=strategy)
        assert got.shape == (3, 100, 3, 10)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    half = collect_logits_many(models, x[:10], queries, batch_size=4, dtype=torch.float16, strategy="vmap")
    assert half.dtype == torch.float16


def test_rejects_bad_arguments(digits):
    x, y = digits
    cfg = TrainConfig(epochs=1)
    models = make_models(mlp, 2)
    with pytest.raises(ValueError, match="2 models, 1 member"):
        train_models(models, x, y, [torch.arange(10)], cfg, seeds=[0, 1])
    with pytest.raises(ValueError, match="no training examples"):
        train_models(models, x, y, [torch.arange(10), torch.arange(0)], cfg, seeds=[0, 1])
    with pytest.raises(ValueError, match="strategy"):
        train_models(models, x, y, [torch.arange(10)] * 2, cfg, seeds=[0, 1], strategy="threads")
    with pytest.raises(ValueError, match="at least one model"):
        train_models([], x, y, [], cfg, seeds=[])


@pytest.mark.gpu
def test_cuda_vmap_bf16_batchnorm_matches_loop(digits):
    x, y = (t.cuda() for t in digits)
    members = [torch.arange(0, 600, device="cuda"), torch.arange(600, 1199, device="cuda")]
    cfg = TrainConfig(epochs=5, batch_size=64, crop_padding=1, flip=True)
    init = make_models(bn_cnn, 2)
    a, b = copy.deepcopy(init), copy.deepcopy(init)
    ra = train_models(a, x, y, members, cfg, seeds=[0, 1], x_test=x[1300:], y_test=y[1300:], strategy="vmap")
    rb = train_models(b, x, y, members, cfg, seeds=[0, 1], x_test=x[1300:], y_test=y[1300:], strategy="loop")
    for r1, r2 in zip(ra, rb):
        assert abs(r1.metrics["test_acc"] - r2.metrics["test_acc"]) < 0.05
    logits = collect_logits_many(a, x[:256], ["identity", "flip"], strategy="vmap")
    want = torch.stack([collect_logits(m, x[:256], ["identity", "flip"]) for m in a])
    torch.testing.assert_close(logits, want, atol=5e-2, rtol=5e-2)
