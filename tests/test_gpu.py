"""CUDA paths: bf16 training and querying agree with the CPU run (skipped without CUDA)."""

import numpy as np
import pytest
import torch

from helpers import TINY, run_experiment

pytestmark = pytest.mark.gpu


def test_cuda_run_matches_cpu_run_within_tolerance(tmp_path):
    overrides = [*TINY, "model=small_cnn", "model.width=8", "train.epochs=8", "attack=[loss,lira_online]"]
    cpu = run_experiment(tmp_path, [*overrides, "device=cpu"], name="cpu")
    gpu = run_experiment(tmp_path, [*overrides, "device=cuda"], name="gpu")
    assert gpu.versions["cuda"] is not None
    np.testing.assert_array_equal(np.load(tmp_path / "cpu" / "keep.npy"), np.load(tmp_path / "gpu" / "keep.npy"))
    for name in ("loss", "lira_online"):
        assert abs(cpu.attacks[name].pooled.auc - gpu.attacks[name].pooled.auc) < 0.05
    assert abs(cpu.targets[0].test_acc - gpu.targets[0].test_acc) < 0.05


def test_cuda_signals_stay_on_device_and_are_finite(tmp_path):
    from mia_torch.models import SmallCNN
    from mia_torch.signals.collect import collect_logits

    model = SmallCNN(input_shape=(1, 28, 28), num_classes=10).cuda()
    x = torch.randn(300, 1, 28, 28, device="cuda")
    logits = collect_logits(model, x, ["identity", "flip", "shift_1_0"], batch_size=128, dtype=torch.float16)
    assert logits.device.type == "cuda" and logits.dtype == torch.float16
    assert logits.shape == (300, 3, 10) and torch.isfinite(logits).all()


def _cifar_models():
    from mia_torch.models import FastCifarCNN, ResNet18

    return {
        "cifar_cnn": lambda: FastCifarCNN(input_shape=(3, 32, 32), num_classes=10, widths=(16, 32, 32)),
        "resnet18": lambda: ResNet18(input_shape=(3, 32, 32), num_classes=10, width=16),
    }


@pytest.mark.parametrize("name", ["cifar_cnn", "resnet18"])
def test_cuda_vmap_trains_the_gpu_architectures_without_falling_back(name, caplog):
    """The architectures of the benchmarks and the CIFAR-10 study train as one vmap ensemble on
    CUDA (bf16 convs, float32 BatchNorm, fused optimizer), not one by one, and as well as the loop."""
    import copy
    import logging

    import torch.nn.functional as F

    from mia_torch.training import TrainConfig
    from mia_torch.training.ensemble import train_models

    g = torch.Generator().manual_seed(0)
    prototypes = F.interpolate(torch.randn((10, 3, 4, 4), generator=g), size=(32, 32), mode="bilinear")
    y = torch.arange(1200) % 10
    x = (prototypes[y] + 0.3 * torch.randn((1200, 3, 32, 32), generator=g)).cuda()
    y = y.cuda()
    members = [torch.arange(0, 500, device="cuda"), torch.arange(500, 1000, device="cuda")]
    cfg = TrainConfig(epochs=4, batch_size=100, lr=0.1, crop_padding=2)  # on CPU: test accuracy 0.91-1.0
    torch.manual_seed(0)
    init = [_cifar_models()[name]() for _ in range(2)]
    together, apart = copy.deepcopy(init), copy.deepcopy(init)
    with caplog.at_level(logging.WARNING, logger="mia_torch"):
        res_v = train_models(together, x, y, members, cfg, seeds=[0, 1], x_test=x[1000:], y_test=y[1000:],
                             strategy="vmap")
    assert "one at a time" not in caplog.text
    res_l = train_models(apart, x, y, members, cfg, seeds=[0, 1], x_test=x[1000:], y_test=y[1000:], strategy="loop")
    for rv, rl in zip(res_v, res_l):
        assert rv.metrics["test_acc"] > 0.7, rv.metrics
        assert abs(rv.metrics["test_acc"] - rl.metrics["test_acc"]) < 0.1
    for model in together:
        for buf_name, buf in model.named_buffers():
            assert torch.isfinite(buf.float()).all(), buf_name


def test_cuda_mixed_precision_runs_convs_in_bf16_and_batchnorm_in_float32():
    """On CUDA, both the vmap ensemble (explicit casts) and train_model (autocast) run convolutions in
    bf16; the ensemble runs BatchNorm (cuDNN's or native) in float32; train_model's conv weights are channels_last."""
    from test_cuda_paths import OpDtypes

    import mia_torch.training.stacking as stacking
    from mia_torch.training import TrainConfig, train_model

    models = [_cifar_models()["resnet18"]().cuda() for _ in range(2)]
    net = stacking.StackedNet(models[0], stacking.compute_dtype(torch.device("cuda")))
    net.template.train()
    params, buffers = stacking.stack_models(models)
    with OpDtypes() as ops:
        torch.func.vmap(net, randomness="different")(net.cast(params), buffers, torch.randn(2, 8, 3, 32, 32).cuda())
    convs = [d for n, d in ops.calls if "convolution" in n]
    norms = [d for n, d in ops.calls if "batch_norm" in n]
    assert convs and norms
    assert all(set(d) == {torch.bfloat16} for d in convs), convs
    assert all(set(d) == {torch.float32} for d in norms), norms

    class ConvLayouts(OpDtypes):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == "convolution":
                self.calls.append(("convolution", [args[0].dtype, args[1].dtype,
                                                   args[1].is_contiguous(memory_format=torch.channels_last)]))
            return func(*args, **(kwargs or {}))

    x, y = torch.randn(64, 3, 32, 32).cuda(), (torch.arange(64) % 10).cuda()
    with ConvLayouts() as seen:
        train_model(models[0], x, y, torch.arange(64).cuda(), TrainConfig(epochs=1, batch_size=32), seed=0)
    assert seen.calls and all(d == [torch.bfloat16, torch.bfloat16, True] for _, d in seen.calls), seen.calls[:3]
