"""Dataset loading (on files written in torchvision's formats), augmentation and query views."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from mia_torch.data import (
    QUERY_NAMES,
    Dataset,
    DatasetLoader,
    DatasetNotFoundError,
    apply_queries,
    apply_query,
    load_dataset,
    parse_queries,
    random_crop_flip,
)
from mia_torch.data.builtin import Digits, Synthetic
from mia_torch.data.npz import NpzImages
from mia_torch.data.torchvision_sets import CIFAR10, CIFAR100, MNIST, FashionMNIST
from mia_torch.settings import trusted
from fixtures_torchvision import MNIST_FILES, write_cifar, write_mnist

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
LOADERS = {"mnist": MNIST, "fashion_mnist": FashionMNIST, "cifar10": CIFAR10, "cifar100": CIFAR100}


def _denormalise(x: torch.Tensor, data: Dataset) -> torch.Tensor:
    mean = torch.tensor(data.mean).view(1, -1, 1, 1)
    std = torch.tensor(data.std).view(1, -1, 1, 1)
    return x * std + mean


# --------------------------------------------------------------------------- torchvision formats


@pytest.mark.parametrize(
    ("kind", "name", "mean", "std"),
    [("MNIST", "mnist", 0.1307, 0.3081), ("FashionMNIST", "fashion_mnist", 0.2860, 0.3530)],
)
def test_mnist_like_loads_written_idx_files(tmp_path, kind, name, mean, std):
    written = write_mnist(tmp_path, num_train=50, num_test=20, seed=3, kind=kind)
    data = load_dataset({"MNIST": MNIST, "FashionMNIST": FashionMNIST}[kind](name=name), root=tmp_path)
    assert data.name == name and data.num_classes == 10
    assert data.x.shape == (50, 1, 28, 28) and data.x_test.shape == (20, 1, 28, 28)
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert data.x.device.type == "cpu"
    assert data.input_shape == (1, 28, 28)
    assert torch.equal(data.y, torch.from_numpy(written.y_train))
    assert torch.equal(data.y_test, torch.from_numpy(written.y_test))
    expected = (torch.from_numpy(written.x_train).float() / 255 - mean) / std
    torch.testing.assert_close(data.x[:, 0], expected)
    expected_test = (torch.from_numpy(written.x_test).float() / 255 - mean) / std
    torch.testing.assert_close(data.x_test[:, 0], expected_test)
    assert data.mean == (mean,) and data.std == (std,)


def test_mnist_download_true_with_files_present_stays_offline(tmp_path):
    written = write_mnist(tmp_path, num_train=20, num_test=10, seed=0)
    data = load_dataset(MNIST(), root=str(tmp_path), download=True)
    assert torch.equal(data.y, torch.from_numpy(written.y_train))


def test_root_pointing_at_the_dataset_folder_itself_works(tmp_path):
    written = write_mnist(tmp_path, num_train=20, num_test=10, seed=0)
    data = load_dataset(MNIST(), root=tmp_path / "MNIST")
    assert torch.equal(data.y_test, torch.from_numpy(written.y_test))


@pytest.mark.parametrize(("name", "folder"), [("mnist", "MNIST/raw"), ("fashion_mnist", "FashionMNIST/raw"),
                                              ("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_missing_files_raise_dataset_not_found_with_our_message(tmp_path, name, folder):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset(LOADERS[name](), root=tmp_path, download=False)
    msg = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert str(tmp_path) in msg and str(tmp_path / folder) in msg
    assert "download=true" in msg and "data_dir" in msg
    assert "You can use download=True" not in msg  # not torchvision's message


def test_partially_present_mnist_names_the_missing_file(tmp_path):
    written = write_mnist(tmp_path, num_train=20, num_test=10, seed=0)
    (written.folder / MNIST_FILES["test_labels"]).unlink()
    with pytest.raises(DatasetNotFoundError, match="t10k-labels-idx1-ubyte") as info:
        load_dataset(MNIST(), root=tmp_path)
    assert "train-images-idx3-ubyte" not in str(info.value)


@pytest.mark.parametrize(("kind", "name", "num_classes"), [("CIFAR10", "cifar10", 10), ("CIFAR100", "cifar100", 100)])
def test_cifar_loads_pickled_batches_channels_first(tmp_path, monkeypatch, kind, name, num_classes):
    import torchvision.datasets.cifar as tv_cifar

    # torchvision checks the official MD5 sums, which tiny files cannot match
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    written = write_cifar(tmp_path, num_train=30, num_test=12, seed=1, kind=kind)
    data = load_dataset(LOADERS[name](), root=tmp_path)
    assert data.x.shape == (30, 3, 32, 32) and data.x_test.shape == (12, 3, 32, 32)
    assert data.num_classes == num_classes and data.x.dtype == torch.float32
    assert torch.equal(data.y, torch.from_numpy(written.y_train))
    pixels = (_denormalise(data.x, data) * 255).round().to(torch.uint8)
    assert torch.equal(pixels, torch.from_numpy(written.x_train).permute(0, 3, 1, 2))
    assert abs(data.x.mean().item()) < 2  # normalised, not raw 0..255


def test_population_and_test_size_take_seeded_subsets(tmp_path):
    write_mnist(tmp_path, num_train=60, num_test=30, seed=0)
    full = load_dataset(MNIST(), root=tmp_path)
    a = load_dataset(MNIST(population_size=20, test_size=10), root=tmp_path, seed=5)
    b = load_dataset(MNIST(population_size=20, test_size=10), root=tmp_path, seed=5)
    c = load_dataset(MNIST(population_size=20, test_size=10), root=tmp_path, seed=6)
    assert a.x.shape[0] == 20 and a.x_test.shape[0] == 10
    assert torch.equal(a.indices, b.indices) and torch.equal(a.test_indices, b.test_indices)
    assert not torch.equal(a.indices, c.indices)
    assert torch.all(a.indices[1:] > a.indices[:-1])  # original order kept
    assert torch.equal(a.x, full.x[a.indices]) and torch.equal(a.y, full.y[a.indices])
    assert torch.equal(a.y_test, full.y_test[a.test_indices])
    with pytest.raises(ValueError, match="population_size"):
        load_dataset(MNIST(population_size=61), root=tmp_path)
    with pytest.raises(ValueError, match="test_size"):
        load_dataset(MNIST(test_size=0), root=tmp_path)


# --------------------------------------------------------------------------- offline datasets


def test_digits_loads_offline_with_seeded_split(tmp_path):
    a = load_dataset(Digits(), root=tmp_path / "nothing-here", seed=0)
    b = load_dataset(Digits(), root=tmp_path, seed=0)
    c = load_dataset(Digits(), root=tmp_path, seed=1)
    assert a.x.shape == (1500, 1, 8, 8) and a.x_test.shape == (297, 1, 8, 8)
    assert a.num_classes == 10 and a.input_shape == (1, 8, 8)
    assert a.x.dtype == torch.float32 and a.y.dtype == torch.int64
    assert set(a.y.tolist()) == set(range(10))
    assert torch.equal(a.x, b.x) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.indices, c.indices)
    assert set(a.indices.tolist()).isdisjoint(a.test_indices.tolist())
    assert len(set(a.indices.tolist()) | set(a.test_indices.tolist())) == 1797
    assert abs(a.x.mean().item()) < 1e-4 and abs(a.x.std().item() - 1) < 1e-3
    smaller = load_dataset(Digits(num_test=97, population_size=1000, test_size=50), root=tmp_path)
    assert smaller.x.shape[0] == 1000 and smaller.x_test.shape[0] == 50


def test_synthetic_is_seeded_configurable_and_learnable(tmp_path):
    opts = dict(num_examples=300, num_test=100, num_classes=4, channels=3, image_size=6, noise=1.0)
    a = load_dataset(Synthetic(**opts), root=tmp_path, seed=2)
    b = load_dataset(Synthetic(**opts), root=tmp_path, seed=2)
    c = load_dataset(Synthetic(**opts), root=tmp_path, seed=3)
    assert a.x.shape == (300, 3, 6, 6) and a.x_test.shape == (100, 3, 6, 6) and a.num_classes == 4
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    # nearest class mean of the population classifies held-out examples well
    means = torch.stack([a.x[a.y == k].mean(0) for k in range(4)]).flatten(1)
    pred = torch.cdist(a.x_test.flatten(1), means).argmin(1)
    assert (pred == a.y_test).float().mean() > 0.9
    noisy = load_dataset(Synthetic(label_noise=0.5, **opts), root=tmp_path, seed=2)
    assert torch.equal(noisy.x, a.x) and (noisy.y != a.y).float().mean() > 0.2


def test_every_shipped_dataset_config_names_a_loader_class_of_the_package():
    """What ``_target_`` names is all a process needs to load a dataset, and a replay may build it."""
    for path in sorted((CONFIGS / "dataset").glob("*.yaml")):
        assert trusted.is_package_target(OmegaConf.load(path)["_target_"], [trusted.KINDS["dataset"]]), path


def test_unknown_option_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="num_examples"):
        Digits(num_examples=10)
    with pytest.raises(ValueError, match=r"dataset cannot be built: dataset 'digits' does not take option\(s\) "
                                         r"num_examples.*it accepts: num_test, plus name, population_size"):
        trusted.build({"_target_": "mia_torch.data.builtin.Digits", "name": "digits", "num_examples": 10},
                      kind="dataset", key="dataset")


class _Tiny(DatasetLoader):
    """A loader as a user writes one: its options are the keyword options of ``load``."""

    def load(self, *, root, download, seed, n: int = 4):
        x = torch.zeros(n, 1, 2, 2)
        labels = torch.arange(n) % 2  # two classes: a single-class population is refused
        return Dataset("tiny_test_set", x, labels, x[:1], labels[:1], 2)


def test_a_loader_class_of_your_own_loads_and_is_refused_when_it_is_no_loader(tmp_path):
    loader = trusted.build({"_target_": f"{__name__}._Tiny", "name": "tiny", "n": 6}, kind="dataset", key="dataset")
    data = load_dataset(loader, root=tmp_path)
    assert data.x.shape == (6, 1, 2, 2) and data.indices.tolist() == list(range(6)) and loader.name == "tiny"
    assert loader.describe() == f"dataset 'tiny' (loader {__name__}._Tiny)"
    with pytest.raises(ValueError, match=r"dataset\._target_=collections\.OrderedDict builds a collections\.OrderedDict, "
                                         r"which is not a DatasetLoader: subclass mia_torch\.data\.loader\.DatasetLoader"):
        trusted.build({"_target_": "collections.OrderedDict"}, kind="dataset", key="dataset")
    with pytest.raises(ValueError, match=r"dataset has no _target_"):
        trusted.build({"name": "digits"}, kind="dataset", key="dataset")
    with pytest.raises(TypeError, match="kind must be one of"):
        type("Text", (DatasetLoader,), {"kind": "text"})


def test_dataset_to_moves_tensors():
    data = load_dataset(Synthetic(num_examples=10, num_test=5), root=".")
    moved = data.to("meta")
    assert moved.x.device.type == "meta" and moved.y_test.device.type == "meta"
    assert data.x.device.type == "cpu" and moved.num_classes == data.num_classes


@pytest.mark.parametrize("path", sorted((CONFIGS / "dataset").glob("*.yaml")), ids=lambda p: p.stem)
def test_dataset_configs_hold_only_keys_their_loader_accepts(tmp_path, path):
    cfg = OmegaConf.to_container(OmegaConf.load(path))
    assert cfg["name"] == path.stem and "population_size" in cfg and "test_size" in cfg
    loader = trusted.build(cfg, kind="dataset", key="dataset")
    assert loader.name == path.stem
    try:
        data = load_dataset(loader, root=tmp_path, download=False, seed=0)
    except DatasetNotFoundError:
        assert cfg["name"] in ("mnist", "fashion_mnist", "cifar10", "cifar100")
    except ValueError as err:  # npz / csv without a path: a config error naming the key
        assert cfg["name"] in ("npz", "npz_features", "csv") and "dataset.path" in str(err)
    else:
        assert len(data.x) > 0


# --------------------------------------------------------------------------- augmentation


def _distinct_images(b: int = 32, c: int = 2, h: int = 6, w: int = 5) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.float32).view(b, c, h, w) + 1


def test_random_crop_flip_disabled_is_identity():
    x = _distinct_images()
    assert random_crop_flip(x, padding=0, flip=False) is x


def test_random_flip_flips_some_images_and_keeps_others():
    x = _distinct_images(64)
    out = random_crop_flip(x, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    same = (out == x).flatten(1).all(1)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same ^ flipped)
    assert same.any() and flipped.any()


@pytest.mark.parametrize("mode", ["zeros", "reflect"])
def test_random_crop_is_a_window_of_the_padded_image(mode):
    pad = 2
    x = _distinct_images(48)
    out = random_crop_flip(x, padding=pad, flip=False, generator=torch.Generator().manual_seed(1), padding_mode=mode)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="constant" if mode == "zeros" else "reflect")
    h, w = x.shape[-2:]
    offsets = set()
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + h, dx : dx + w])
        ]
        assert len(matches) == 1
        offsets.add(matches[0])
    assert len(offsets) > 5  # offsets vary per image


def test_augmentation_randomness_comes_only_from_the_generator():
    x = _distinct_images(16)
    torch.manual_seed(0)
    a = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(1)
    b = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(7))
    c = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_reflect_crop_on_tiny_images_and_bad_padding():
    x = torch.randn(4, 1, 3, 3)
    out = random_crop_flip(x, padding=4, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    with pytest.raises(ValueError):
        random_crop_flip(x, padding=-1, flip=False)


# --------------------------------------------------------------------------- query views

GRID = torch.tensor([[1.0, 2, 3], [4, 5, 6], [7, 8, 9]]).view(1, 1, 3, 3)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("identity", [[1, 2, 3], [4, 5, 6], [7, 8, 9]]),
        ("flip", [[3, 2, 1], [6, 5, 4], [9, 8, 7]]),
        ("shift_1_0", [[0, 1, 2], [0, 4, 5], [0, 7, 8]]),
        ("shift_-1_0", [[2, 3, 0], [5, 6, 0], [8, 9, 0]]),
        ("shift_0_1", [[0, 0, 0], [1, 2, 3], [4, 5, 6]]),
        ("shift_0_-1", [[4, 5, 6], [7, 8, 9], [0, 0, 0]]),
        ("shift_1_1", [[0, 0, 0], [0, 1, 2], [0, 4, 5]]),
        ("shift_-2_0", [[3, 0, 0], [6, 0, 0], [9, 0, 0]]),
        ("flip_shift_1_0", [[0, 3, 2], [0, 6, 5], [0, 9, 8]]),
        ("shift_3_0", [[0, 0, 0], [0, 0, 0], [0, 0, 0]]),
    ],
)
def test_query_views_match_hand_computed_values(name, expected):
    out = apply_query(GRID, name)
    assert out.shape == GRID.shape
    assert torch.equal(out, torch.tensor(expected, dtype=torch.float32).view(1, 1, 3, 3))


def test_query_views_work_per_image_on_batches():
    x = torch.randn(5, 3, 7, 7)
    out = apply_query(x, "flip_shift_-1_2")
    for i in range(5):
        assert torch.equal(out[i], apply_query(apply_query(x[i : i + 1], "flip"), "shift_-1_2")[0])
    stacked = apply_queries(x, ["identity", "flip"])
    assert stacked.shape == (2, 5, 3, 7, 7) and torch.equal(stacked[1], x.flip(-1))


def test_parse_queries_canonicalises_and_keeps_order():
    assert parse_queries(["identity", "flip", "shift_1_0", "shift_-1_0", "flip_shift_01_-1"]) == [
        "identity", "flip", "shift_1_0", "shift_-1_0", "flip_shift_1_-1",
    ]
    assert parse_queries(["shift_0_0"]) == ["identity"]
    assert parse_queries(OmegaConf.create(["flip"])) == ["flip"]
    assert "identity" in QUERY_NAMES


@pytest.mark.parametrize(
    "names",
    [["rotate"], ["shift_1"], ["shift_a_b"], [""], ["identity_flip"], ["shift_1.5_0"], ["identity", "shift_0_0"], [],
     "identity"],
)
def test_parse_queries_rejects_invalid_names_naming_the_config_key(names):
    with pytest.raises(ValueError, match="queries"):
        parse_queries(names)


def test_apply_query_rejects_invalid_names():
    with pytest.raises(ValueError, match="queries"):
        apply_query(GRID, "shift_x")


def test_data_dir_none_works_for_digits_and_is_explained_for_file_datasets():
    assert len(load_dataset(Digits(), root=None)) == 1500
    with pytest.raises(DatasetNotFoundError, match="data_dir"):
        load_dataset(MNIST(), root=None)


def test_npz_dataset_loads_user_arrays_in_any_layout(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, size=(40, 12, 12, 3), dtype=np.uint8)  # HWC, as image files decode
    x_test = rng.integers(0, 256, size=(10, 12, 12, 3), dtype=np.uint8)
    y_train, y_test = rng.integers(0, 5, 40), np.arange(10) % 5
    np.savez(tmp_path / "mine.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    data = load_dataset(NpzImages(path="mine.npz"), root=tmp_path)
    assert data.x.shape == (40, 3, 12, 12) and data.x_test.shape == (10, 3, 12, 12)
    assert data.num_classes == 5 and torch.equal(data.y, torch.from_numpy(y_train))
    # Channel 1 of image 0, pixel (2, 3), after scaling to [0, 1] and normalising.
    expected = (x_train[0, 2, 3, 1] / 255.0 - data.mean[1]) / data.std[1]
    assert float(data.x[0, 1, 2, 3]) == pytest.approx(expected, rel=1e-5)
    assert abs(float(data.x[:, 0].mean())) < 1e-4
    with pytest.raises(DatasetNotFoundError, match="dataset.path"):
        load_dataset(NpzImages(path="other.npz"), root=tmp_path)
    np.savez(tmp_path / "bad.npz", x_train=x_train)
    with pytest.raises(ValueError, match="y_train"):
        load_dataset(NpzImages(path="bad.npz"), root=tmp_path)
