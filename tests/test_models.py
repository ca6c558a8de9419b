"""Model zoo: output shapes, norm variants, configs, and that a small CNN learns."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from fixtures_torchvision import write_mnist
from mia_torch.data import load_dataset
from mia_torch.data.builtin import Digits
from mia_torch.data.torchvision_sets import MNIST
from mia_torch.models import MLP, FastCifarCNN, ResNet18, SmallCNN, WideResNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"

CASES = [
    (SmallCNN, {"width": 8}, (1, 28, 28)),
    (SmallCNN, {"width": 8}, (1, 8, 8)),
    (FastCifarCNN, {"widths": (8, 16, 16)}, (3, 32, 32)),
    (FastCifarCNN, {"widths": (8, 16, 16)}, (1, 28, 28)),
    (FastCifarCNN, {"widths": (8, 16, 16)}, (1, 8, 8)),
    (ResNet18, {"width": 4}, (3, 32, 32)),
    (WideResNet, {"depth": 10, "widen_factor": 1}, (3, 32, 32)),
]


@pytest.mark.parametrize(("cls", "opts", "shape"), CASES, ids=lambda v: getattr(v, "__name__", str(v)))
@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_conv_models_give_logits_for_each_norm(cls, opts, shape, norm):
    torch.manual_seed(0)
    model = cls(input_shape=shape, num_classes=7, norm=norm, **opts)
    x = torch.randn(3, *shape)
    out = model(x)
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    kinds = {type(m) for m in model.modules()}
    has_bn = any(issubclass(k, nn.modules.batchnorm._BatchNorm) for k in kinds)
    assert has_bn == (norm == "batch")
    assert (nn.GroupNorm in kinds) == (norm == "group")
    if norm != "batch":
        # no batch statistics: each example's output is independent of the rest of the batch
        model.train()
        torch.testing.assert_close(model(x)[:1], model(x[:1]))


def test_full_size_defaults_forward_on_a_tiny_batch():
    torch.manual_seed(0)
    cases = [
        (SmallCNN, (1, 28, 28)),
        (FastCifarCNN, (3, 32, 32)),
        (ResNet18, (3, 32, 32)),
        (WideResNet, (3, 32, 32)),
        (MLP, (1, 28, 28)),
    ]
    for cls, shape in cases:
        model = cls(input_shape=shape, num_classes=10)
        assert model(torch.randn(2, *shape)).shape == (2, 10), cls.__name__
    wrn = WideResNet(input_shape=(3, 32, 32), num_classes=10)
    assert 1.4e6 < sum(p.numel() for p in wrn.parameters()) < 1.5e6  # WRN-28-2 has ~1.47M parameters
    airbench = FastCifarCNN(input_shape=(3, 32, 32), num_classes=10)
    assert 1.9e6 < sum(p.numel() for p in airbench.parameters()) < 2.05e6  # airbench94: ~1.97M


def test_mlp_hidden_sizes_and_group_norm_count():
    mlp = MLP(input_shape=(1, 8, 8), num_classes=3, hidden_sizes=(16, 8, 4))
    linears = [m for m in mlp.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [16, 8, 4, 3] and linears[0].in_features == 64
    assert MLP(input_shape=(1, 8, 8), num_classes=3, hidden_sizes=())(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    groups = [m.num_groups for m in SmallCNN(input_shape=(1, 8, 8), num_classes=2, width=48, norm="group").modules()
              if isinstance(m, nn.GroupNorm)]
    assert groups == [16, 32]  # gcd(32, channels) for 48 and 96 channels


@pytest.mark.parametrize(
    "build",
    [
        lambda: SmallCNN(input_shape=(1, 8, 8), num_classes=10, norm="layer"),
        lambda: ResNet18(input_shape=(3, 32), num_classes=10),
        lambda: WideResNet(input_shape=(3, 32, 32), num_classes=10, depth=27),
        lambda: FastCifarCNN(input_shape=(3, 32, 32), num_classes=10, widths=(64, 256)),
        lambda: MLP(input_shape=(1, 8, 8), num_classes=10, activation="swish"),
    ],
)
def test_invalid_options_raise_value_error(build):
    with pytest.raises(ValueError):
        build()


INTENDED = {"small_cnn": (1, 28, 28), "cifar_cnn": (3, 32, 32), "resnet18": (3, 32, 32), "wrn28_2": (3, 32, 32),
            "mlp": (1, 8, 8)}


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_model_configs_instantiate_with_shape_from_the_dataset(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert "input_shape" not in cfg and "num_classes" not in cfg
    assert cfg._target_.startswith("mia_torch.models.")
    shape = INTENDED[name]
    model = hydra.utils.instantiate(cfg, input_shape=shape, num_classes=10)
    assert isinstance(model, nn.Module)
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, *shape)).shape == (1, 10)


def test_every_model_config_is_covered():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(INTENDED)


def test_fast_cifar_cnn_whitening_init_whitens_patches():
    torch.manual_seed(0)
    model = FastCifarCNN(input_shape=(3, 16, 16), num_classes=10, widths=(8, 8, 8))
    # correlated channels, so whitening has something to undo
    shared = torch.randn(64, 1, 16, 16) * torch.tensor([1.0, 0.8, 0.5]).view(1, 3, 1, 1)
    images = shared + 0.3 * torch.randn(64, 3, 16, 16)
    model.init_whitening(images, eps=1e-6)
    assert not model.stem.weight.requires_grad
    half = model.stem.out_channels // 2
    out = F.conv2d(images, model.stem.weight[:half])  # no bias: raw whitened responses
    flat = out.transpose(0, 1).reshape(half, -1)
    cov = flat @ flat.T / flat.shape[1]
    torch.testing.assert_close(cov, torch.eye(half), atol=2e-2, rtol=0)


def _fit_small_cnn(data, *, batch: int, steps: int = 100) -> float:
    """Test accuracy of a small SmallCNN after ``steps`` Adam steps on random batches."""
    torch.manual_seed(0)
    model = SmallCNN(input_shape=data.input_shape, num_classes=data.num_classes, width=8, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(data.x), (batch,), generator=gen)
        loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        return (model(data.x_test).argmax(1) == data.y_test).float().mean().item()


def test_small_cnn_learns_the_written_mnist_fixture(tmp_path):
    write_mnist(tmp_path, num_train=600, num_test=200, seed=0)
    acc = _fit_small_cnn(load_dataset(MNIST(), root=tmp_path), batch=32)
    assert acc > 0.6, acc  # chance is 0.1


def test_small_cnn_learns_digits(tmp_path):
    acc = _fit_small_cnn(load_dataset(Digits(), root=tmp_path, seed=0), batch=64)
    assert acc > 0.7, acc


DROPOUT_CASES = [
    (SmallCNN, {"width": 8, "hidden": 32}, (1, 8, 8)),
    (FastCifarCNN, {"widths": (8, 16, 16)}, (3, 16, 16)),
    (ResNet18, {"width": 4}, (3, 16, 16)),
    (WideResNet, {"depth": 10, "widen_factor": 1}, (3, 16, 16)),
    (MLP, {"hidden_sizes": (32, 16)}, (1, 8, 8)),
]


@pytest.mark.parametrize(("cls", "opts", "shape"), DROPOUT_CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_dropout_zero_is_the_plain_model_and_dropout_changes_only_training(cls, opts, shape):
    x = torch.randn(4, *shape)
    built = {}
    for p in (None, 0.0, 0.5):
        torch.manual_seed(0)
        built[p] = cls(input_shape=shape, num_classes=5, **opts, **({} if p is None else {"dropout": p}))
    plain, zero, half = built[None], built[0.0], built[0.5]
    assert plain.state_dict().keys() == zero.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), zero.state_dict().values()))
    plain.eval(), half.eval()
    with torch.no_grad():  # same initialisation; in eval mode dropout is the identity
        torch.testing.assert_close(half(x), plain(x))
    plain.train(), zero.train(), half.train()
    torch.manual_seed(1)
    torch.testing.assert_close(zero(x), plain(x), rtol=0, atol=0)  # no dropout layer, no randomness drawn
    assert not any(isinstance(m, nn.Dropout) for m in zero.modules())
    assert any(isinstance(m, nn.Dropout) and m.p == 0.5 for m in half.modules())
    assert not torch.allclose(half(x), half(x))  # training: a fresh dropout mask per forward


@pytest.mark.parametrize(("cls", "opts", "shape"), DROPOUT_CASES[:3], ids=lambda v: getattr(v, "__name__", ""))
def test_conv_classifiers_drop_the_inputs_of_their_last_linear_layer(cls, opts, shape):
    x = torch.randn(64, *shape)

    def nonzero_inputs_of_last_linear(dropout: float) -> float:
        torch.manual_seed(0)
        model = cls(input_shape=shape, num_classes=5, dropout=dropout, **opts).train()
        last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
        seen = []
        last.register_forward_hook(lambda module, inp, out: seen.append(inp[0]))
        model(x)
        return (seen[0] != 0).float().mean().item()

    ratio = nonzero_inputs_of_last_linear(0.75) / nonzero_inputs_of_last_linear(0.0)
    assert 0.17 < ratio < 0.33, ratio  # ~75% of the features dropped right before the output layer


@pytest.mark.parametrize(("cls", "opts", "shape"), DROPOUT_CASES, ids=lambda v: getattr(v, "__name__", ""))
def test_invalid_dropout_is_refused_by_name(cls, opts, shape):
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="dropout"):
            cls(input_shape=shape, num_classes=5, dropout=bad, **opts)


@pytest.mark.parametrize("name", sorted(INTENDED))
def test_every_model_config_has_dropout_off_by_default(name):
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    assert cfg.dropout == 0.0
    model = hydra.utils.instantiate(cfg, input_shape=INTENDED[name], num_classes=10, dropout=0.2)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.2 for m in model.modules())


class _ClassesOnly(torch.nn.Module):
    """A user's network whose constructor knows nothing of input shapes."""

    def __init__(self, num_classes: int, width: int = 8) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(width), torch.nn.ReLU(),
                                       torch.nn.Linear(width, num_classes))

    def forward(self, x):
        return self.net(x)


def test_build_model_passes_only_the_data_arguments_a_class_takes():
    from mia_torch.training.build import build_model

    model = build_model({"_target_": f"{__name__}._ClassesOnly", "width": 4}, input_shape=(1, 8, 8), num_classes=3,
                        seed=0)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 3)
    resnet = build_model({"_target_": "torchvision.models.resnet18"}, input_shape=(3, 32, 32), num_classes=5, seed=0)
    assert resnet.fc.out_features == 5
    first, again = (build_model({"_target_": "mia_torch.models.MLP"}, input_shape=(1, 4, 4), num_classes=2, seed=3)
                    for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), again.state_dict().values()))
    with pytest.raises(ValueError, match=r"model\._target_=collections\.OrderedDict builds a collections\.OrderedDict, "
                                         r"which is not a torch\.nn\.Module"):
        build_model({"_target_": "collections.OrderedDict"}, input_shape=(1, 4, 4), num_classes=2, seed=0)
