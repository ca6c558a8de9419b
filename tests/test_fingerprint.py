"""Store keys follow the data as loaded and the code that makes an artifact, nothing else."""

import dataclasses
import hashlib
import importlib
import pkgutil
import shutil

import numpy as np
import pytest
import torch

from helpers import TINY, make_config, run_experiment
from mia_torch import fingerprint
from mia_torch.data.builtin import Synthetic
from mia_torch.data.datasets import Dataset
from mia_torch.data.loader import DatasetLoader, load_dataset
from mia_torch.data.torchvision_sets import MNIST
from mia_torch.fingerprint import ARTIFACT_CODE, code_digest, covered_files, dataset_digest, tensor_digest
from mia_torch.signals.manifest import load_run_signals


@pytest.fixture
def package_copy(tmp_path):
    """A private copy of the mia_torch sources to edit."""
    copy = tmp_path / "mia_torch"
    shutil.copytree(fingerprint.PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def _edit(path, text="\n# edited\n"):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(text)


@pytest.mark.parametrize(
    ("edited", "models_change", "signals_change"),
    [
        ("training/trainer.py", True, False),
        ("training/ensemble.py", True, False),
        ("training/brand_new_defense.py", True, False),  # a new module counts without being listed
        ("models/cnn.py", True, False),
        ("data/augment.py", True, False),
        ("data/new_augmentation.py", True, False),
        ("signals/collect.py", False, True),
        ("signals/output.py", False, True),
        ("data/datasets.py", False, False),  # the data digest covers what it loads
        ("data/loader.py", False, False),
        ("data/torchvision_sets.py", False, False),
        ("data/builtin.py", False, False),
        ("data/npz.py", False, False),
        ("data/tabular.py", False, False),
        ("data/csv_cells.py", False, False),  # reads the CSV the tabular loader encodes
        ("data/user_encoder.py", False, False),  # its product (the features) is in the data digest
        ("data/splits.py", False, False),  # the keep row is in the key
        ("signals/stats.py", False, False),
        ("signals/features.py", False, False),  # derived from stored logits
        ("signals/source.py", False, False),
        ("signals/manifest.py", False, False),
        ("attacks/lira.py", False, False),
        ("metrics/roc.py", False, False),
        ("report/tensorboard.py", False, False),
        ("pipeline.py", False, False),
    ],
)
def test_code_digest_changes_exactly_with_the_covered_source(package_copy, edited, models_change, signals_change):
    before = {kind: code_digest(kind, root=package_copy) for kind in ARTIFACT_CODE}
    _edit(package_copy / edited)
    after = {kind: code_digest(kind, root=package_copy) for kind in ARTIFACT_CODE}
    assert (before["models"] != after["models"]) is models_change
    assert (before["signals"] != after["signals"]) is signals_change


def test_code_digest_returns_when_an_edit_is_undone_and_covers_the_installed_package(package_copy):
    original = code_digest("models", root=package_copy)
    assert original == code_digest("models")  # the copy has the same content as the package
    trainer = package_copy / "training" / "trainer.py"
    source = trainer.read_bytes()
    trainer.write_bytes(source.replace(b"def ", b"def  ", 1))
    assert code_digest("models", root=package_copy) != original
    trainer.write_bytes(source)
    assert code_digest("models", root=package_copy) == original
    names = {p.relative_to(fingerprint.PACKAGE_DIR).as_posix() for p in covered_files(ARTIFACT_CODE["models"])}
    assert {"training/trainer.py", "models/cnn.py", "data/augment.py"} <= names
    assert not {"data/datasets.py", "attacks/lira.py", "pipeline.py"} & names


def _subclasses(cls: type) -> set[type]:
    return {sub for child in cls.__subclasses__() for sub in (child, *_subclasses(child))}


def test_every_module_that_defines_a_dataset_loader_is_left_out_of_the_model_digest():
    """A loader's product is in the key through the dataset digest, so its code need not be."""
    import mia_torch

    for module in pkgutil.walk_packages(mia_torch.__path__, "mia_torch."):  # every loader class gets defined
        importlib.import_module(module.name)

    covered = {p.relative_to(fingerprint.PACKAGE_DIR).as_posix() for p in covered_files(ARTIFACT_CODE["models"])}
    modules = {cls.__module__ for cls in _subclasses(DatasetLoader) if cls.__module__.startswith("mia_torch.")}
    modules |= {DatasetLoader.__module__, Dataset.__module__}
    loaders = {module.removeprefix("mia_torch.").replace(".", "/") + ".py" for module in modules}
    assert {"data/torchvision_sets.py", "data/builtin.py", "data/npz.py", "data/tabular.py"} <= loaders
    assert not loaders & covered


def test_an_edit_to_training_code_changes_model_and_signal_keys(tmp_path, package_copy, monkeypatch):
    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import model_key, signal_key

    ctx = prepare(make_config(tmp_path, TINY), tmp_path / "run")
    monkeypatch.setattr(fingerprint, "PACKAGE_DIR", package_copy)

    def keys() -> tuple[str, str]:
        model = model_key(ctx, 0)
        return model, signal_key(ctx.settings, model)

    before = keys()
    _edit(package_copy / "attacks" / "rmia.py")
    assert keys() == before
    _edit(package_copy / "signals" / "collect.py")
    assert keys()[0] == before[0] and keys()[1] != before[1]
    _edit(package_copy / "training" / "trainer.py")
    assert model_key(ctx, 0) != before[0]


def test_tensor_digest_is_sha256_of_the_bytes_and_sensitive_to_every_element():
    x = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)
    assert tensor_digest(x) == tensor_digest(x.clone())
    assert tensor_digest(x.numpy()) == tensor_digest(x.numpy().copy())
    assert tensor_digest(x) != tensor_digest(x.reshape(4, 3, 2))  # same bytes, other shape
    assert tensor_digest(x) != tensor_digest(x.double())
    y = x.clone()
    y[1, 2, 3] += 1
    assert tensor_digest(y) != tensor_digest(x)
    assert tensor_digest(x.transpose(0, 2)) == tensor_digest(x.transpose(0, 2).contiguous())


def test_tensor_digest_chunks_agree_with_a_plain_hash(monkeypatch):
    data = torch.randint(0, 255, (10_000,), dtype=torch.uint8)
    monkeypatch.setattr(fingerprint, "_CHUNK", 1000)  # 10 chunks, hashed on threads
    chunks = b"".join(hashlib.sha256(data[i : i + 1000].numpy().tobytes()).digest() for i in range(0, 10_000, 1000))
    expected = hashlib.sha256(b"torch.uint8(10000,)" + chunks).hexdigest()
    assert tensor_digest(data) == expected


def _synthetic(**options):
    return load_dataset(Synthetic(num_examples=50, num_test=10, **options), root=None)


def test_dataset_digest_follows_the_content_not_the_object():
    data = _synthetic()
    assert data.content_digest is not None  # computed by load_dataset
    assert dataset_digest(_synthetic()) == data.content_digest
    fields = {f.name: getattr(data, f.name) for f in dataclasses.fields(data) if f.init}
    y = data.y.clone()
    y[7] = (y[7] + 1) % data.num_classes
    x_test = data.x_test.clone()
    x_test[0, 0, 0, 0] += 1e-3
    for change in ({"y": y}, {"x_test": x_test}, {"num_classes": data.num_classes + 1}, {"name": "other"}):
        assert dataset_digest(Dataset(**{**fields, **change})) != data.content_digest, change
    assert dataset_digest(Dataset(**fields)) == data.content_digest
    assert dataset_digest(_synthetic(label_noise=0.1)) != data.content_digest


def test_dataset_digest_survives_device_moves_but_not_replacement():
    data = _synthetic()
    moved = data.to("meta")  # no content to read there: the digest is carried over
    assert dataset_digest(moved) == data.content_digest
    swapped = dataclasses.replace(data, y=torch.roll(data.y, 1))
    assert swapped.content_digest is None
    assert dataset_digest(swapped) != data.content_digest


class _Tiny(DatasetLoader):
    def load(self, *, root, download, seed, label: int = 0):
        x = torch.zeros(4, 1, 2, 2)
        y = (torch.arange(4) + label) % 2  # two classes; `label` swaps them
        return Dataset("digest_test_set", x, y, x[:2], y[:2], 2)


def test_loaders_of_your_own_get_a_digest(tmp_path):
    zero, one = load_dataset(_Tiny(), root=None), load_dataset(_Tiny(label=1), root=None)
    assert zero.content_digest and one.content_digest and zero.content_digest != one.content_digest


def test_torchvision_datasets_get_a_digest_of_their_files(tmp_path):
    from fixtures_torchvision import write_mnist

    write_mnist(tmp_path, num_train=30, num_test=10, seed=0)
    first = load_dataset(MNIST(), root=tmp_path)
    write_mnist(tmp_path, num_train=30, num_test=10, seed=1)
    second = load_dataset(MNIST(), root=tmp_path)
    assert first.content_digest and second.content_digest and first.content_digest != second.content_digest


def _write_npz(path, labels_shift: int) -> np.ndarray:
    """A learnable 4-class set; ``labels_shift`` renames the classes (same images, same shapes)."""
    rng = np.random.default_rng(0)
    prototypes = rng.normal(size=(4, 8, 8))
    y, y_test = rng.integers(0, 4, 240), rng.integers(0, 4, 60)
    x = (prototypes[y] + 0.5 * rng.normal(size=(240, 8, 8))).astype(np.float32)
    x_test = (prototypes[y_test] + 0.5 * rng.normal(size=(60, 8, 8))).astype(np.float32)
    np.savez(path, x_train=x, y_train=(y + labels_shift) % 4, x_test=x_test, y_test=(y_test + labels_shift) % 4)
    return (y + labels_shift) % 4


def test_rewritten_npz_retrains_instead_of_reusing_stale_models(tmp_path):
    npz = tmp_path / "data.npz"
    overrides = [*TINY[3:], "dataset=npz", f"dataset.path={npz}", "attack=[loss]", "train.epochs=8", "num_models=3",
                 "bootstrap=0", "sanity_check=false"]
    _write_npz(npz, labels_shift=0)
    first = run_experiment(tmp_path, overrides, name="first")
    assert first.trained_models == [0, 1, 2]
    labels = _write_npz(npz, labels_shift=1)  # rewritten in place: same path and shapes, other labels
    second = run_experiment(tmp_path, overrides, name="second")
    assert second.trained_models == [0, 1, 2] and second.reused_models == []
    saved = np.load(tmp_path / "second" / "labels.npy")
    np.testing.assert_array_equal(saved, labels)
    signals = load_run_signals(tmp_path / "second")
    accuracy = (signals[:, :, 0].argmax(-1) == saved).mean()
    assert accuracy > 0.9  # models of the new labels (stale ones would score about 0 on them)
    assert second.targets[0].train_acc > 0.9
    third = run_experiment(tmp_path, overrides, name="third")  # unchanged file: everything reused
    assert third.trained_models == []
