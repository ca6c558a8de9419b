"""What can be checked on CPU of the CUDA code paths: explicit bf16 mixed precision under
vmap, per-model BatchNorm statistics of the architectures the GPU runs use, fused
optimizer steps over stacked parameters, memory layouts."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import mia_torch.training.ensemble as ensemble
import mia_torch.training.stacking as stacking
from mia_torch.models import MLP, FastCifarCNN, ResNet18, SmallCNN
from mia_torch.training import TrainConfig, train_model
from mia_torch.training.ensemble import train_models
from mia_torch.training.trainer import make_optimizer, use_channels_last


def fast_cnn() -> nn.Module:
    return FastCifarCNN(input_shape=(3, 16, 16), num_classes=10, widths=(8, 16, 16))


def resnet() -> nn.Module:
    return ResNet18(input_shape=(3, 16, 16), num_classes=10, width=4)


def make_models(factory, k: int, seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [factory() for _ in range(k)]


@pytest.fixture(scope="module")
def images():
    """Learnable 16x16 RGB images: a smooth prototype per class plus noise."""
    g = torch.Generator().manual_seed(0)
    prototypes = F.interpolate(torch.randn((10, 3, 4, 4), generator=g), size=(16, 16), mode="bilinear")
    y = torch.arange(400) % 10
    x = prototypes[y] + 0.5 * torch.randn((400, 3, 16, 16), generator=g)
    return x, y


class OpDtypes(TorchDispatchMode):
    """Records the dtype of every tensor argument of convolution and batch-norm ops."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, list[torch.dtype]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if "convolution" in name or "batch_norm" in name:
            self.calls.append((name, [a.dtype for a in args if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("factory", [fast_cnn, resnet], ids=["cifar_cnn", "resnet18"])
def test_vmap_mixed_precision_runs_convs_in_bf16_and_batchnorm_in_float32(factory):
    """The dtypes CUDA's vmap path computes in (forced to bf16 here): convolutions forward and
    backward on bf16 input and weights, BatchNorm on float32 input, parameters and running stats."""
    models = make_models(factory, 2)
    net = stacking.StackedNet(models[0], torch.bfloat16)
    net.template.train()
    params, buffers = stacking.stack_models(models)
    x = torch.randn(2, 6, 3, 16, 16)
    with OpDtypes() as ops:
        out = torch.func.vmap(net, randomness="different")(net.cast(params), buffers, x)
        out.float().sum().backward()
    assert out.dtype == torch.bfloat16
    convs = [dtypes for name, dtypes in ops.calls if "convolution" in name]
    norms = [dtypes for name, dtypes in ops.calls if "batch_norm" in name]
    assert convs and norms
    assert all(set(d) == {torch.bfloat16} for d in convs), convs
    assert all(set(d) == {torch.float32} for d in norms), norms
    # master weights and their gradients stay float32
    for name, p in params.items():
        assert p.dtype == torch.float32, name
        assert p.grad is None if not p.requires_grad else p.grad.dtype == torch.float32, name


@pytest.mark.parametrize("factory", [fast_cnn, resnet], ids=["cifar_cnn", "resnet18"])
def test_vmap_bf16_step_updates_each_models_batchnorm_statistics(images, factory, monkeypatch):
    """One full-batch bf16 vmap step leaves every model with the running statistics of its own
    batch (what a float32 train-mode forward of that model computes, up to bf16 rounding),
    BatchNorm's step counter advanced once, and frozen parameters (airbench's BatchNorm scales)
    untouched."""
    monkeypatch.setattr(ensemble, "compute_dtype", lambda device: torch.bfloat16)
    x, y = images
    members = [torch.arange(0, 48), torch.arange(48, 96)]
    cfg = TrainConfig(epochs=1, batch_size=48, lr=0.05)
    init = make_models(factory, 2)
    models = copy.deepcopy(init)
    train_models(models, x, y, members, cfg, seeds=[0, 1], strategy="vmap")
    for model, ref, idx in zip(models, copy.deepcopy(init), members):
        with torch.no_grad():
            ref.train()(x[idx])  # float32: the update BatchNorm makes in this step's forward
        got, want = dict(model.named_buffers()), dict(ref.named_buffers())
        for name, value in want.items():
            if name.endswith("num_batches_tracked"):
                assert got[name].item() == 1, name
            else:
                assert (value - dict(init[0].named_buffers())[name]).abs().max() > 1e-3, name  # stats moved
                torch.testing.assert_close(got[name], value, rtol=0.05, atol=0.02, msg=name)
        for (name, p), p0 in zip(model.named_parameters(), dict(ref.named_parameters()).values()):
            if not p.requires_grad:
                assert torch.equal(p, p0), name


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_one_fused_optimizer_over_stacked_parameters_equals_one_optimizer_per_model(optimizer, device):
    """The vmap strategy's single (fused on CUDA) optimizer over stacked parameters takes the
    same steps as separate unfused optimizers per model: SGD with Nesterov momentum and weight
    decay, and Adam, are elementwise. On CPU this runs CPU's fused kernels."""
    cfg = TrainConfig(optimizer=optimizer, lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-3)
    g = torch.Generator().manual_seed(0)
    shapes = [(4, 3, 3, 3), (4,), (10, 4)]
    per_model = [[nn.Parameter(torch.randn(s, generator=g).to(device)) for s in shapes] for _ in range(3)]
    stacked = [nn.Parameter(torch.stack([ps[i].detach() for ps in per_model])) for i in range(len(shapes))]
    fused = make_optimizer(nn.ParameterList(stacked), cfg, torch.device("cuda"))  # fused=True, as on CUDA
    assert fused.defaults["fused"] is True
    singles = [make_optimizer(nn.ParameterList(ps), cfg, torch.device("cpu")) for ps in per_model]  # unfused
    for _ in range(5):
        grads = [[torch.randn(s, generator=g).to(device) for s in shapes] for _ in per_model]
        for i, p in enumerate(stacked):
            p.grad = torch.stack([gr[i] for gr in grads])
        for ps, gr in zip(per_model, grads):
            for p, gp in zip(ps, gr):
                p.grad = gp.clone()
        fused.step()
        for opt in singles:
            opt.step()
    for i, p in enumerate(stacked):
        torch.testing.assert_close(p.detach(), torch.stack([ps[i].detach() for ps in per_model]), rtol=1e-5, atol=1e-6)


def test_cpu_training_never_asks_for_fused_optimizers(images, monkeypatch):
    requested = []
    for cls in (torch.optim.SGD, torch.optim.Adam):
        original = cls.__init__

        def spy(self, *args, _original=original, **kwargs):
            requested.append(kwargs.get("fused"))
            _original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", spy)
    x, y = images
    members = [torch.arange(0, 40), torch.arange(40, 80)]
    for optimizer in ("sgd", "adam"):
        cfg = TrainConfig(epochs=1, batch_size=40, optimizer=optimizer)
        train_model(make_models(fast_cnn, 1)[0], x, y, members[0], cfg, seed=0)
        train_models(make_models(fast_cnn, 2), x, y, members, cfg, seeds=[0, 1], strategy="vmap")
    assert len(requested) == 4 and not any(requested)


@pytest.mark.parametrize("factory", [fast_cnn, resnet], ids=["cifar_cnn", "resnet18"])
def test_vmapped_query_of_channels_last_views_equals_contiguous_views(images, factory):
    """collect_logits_many hands CUDA's vmapped models channels_last views; the layout must not change the logits."""
    models = make_models(factory, 3)
    for m in models:
        m.train()(images[0][:64])  # non-trivial running statistics
    net = stacking.StackedNet(models[0], None)
    net.template.eval()
    params, buffers = stacking.stack_models(models)
    views = torch.cat([images[0][:20], images[0][:20].flip(-1)])
    batched = torch.func.vmap(net, in_dims=(0, 0, None))
    with torch.no_grad():
        want = batched(params, buffers, views)
        got = batched(params, buffers, views.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_channels_last_is_skipped_on_cpu_only_for_narrow_strided_1x1_convs():
    """oneDNN's NHWC weight gradient of a strided 1x1 conv with few input channels corrupts the
    heap on CPU (uxlfoundation/oneDNN#6035): such models train in NCHW there."""
    image = torch.zeros(2, 3, 16, 16)
    assert not use_channels_last(resnet(), image)  # shortcut 1x1 stride-2 convs from 4 and 8 channels
    assert use_channels_last(ResNet18(input_shape=(3, 16, 16), num_classes=10, width=16), image)
    assert use_channels_last(fast_cnn(), image)
    assert use_channels_last(SmallCNN(input_shape=(1, 8, 8), num_classes=10), torch.zeros(2, 1, 8, 8))
    assert use_channels_last(resnet(), image.to("meta"))  # the guard is for CPU kernels only
    assert not use_channels_last(MLP(input_shape=(1, 8, 8), num_classes=10), torch.zeros(2, 1, 8, 8))
    assert not use_channels_last(fast_cnn(), torch.zeros(2, 768))


def test_train_model_keeps_narrow_resnets_in_nchw_on_cpu(images):
    """The guard above is what train_model applies: NCHW weights for the narrow ResNet, NHWC for a wider one."""
    x, y = images
    cfg = TrainConfig(epochs=1, batch_size=32)
    for width, channels_last in ((4, False), (16, True)):
        torch.manual_seed(0)
        model = ResNet18(input_shape=(3, 16, 16), num_classes=10, width=width)
        result = train_model(model, x, y, torch.arange(32), cfg, seed=0)
        assert torch.isfinite(torch.tensor(result.metrics["train_loss"]))
        weight = model.stem[0].weight
        assert weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        assert weight.is_contiguous() != channels_last
