"""Bad input stops before any training, with one message naming the config key or the file; the store stays empty.

One table: every case composes the tiny test experiment with its overrides (after writing
any file it needs) and runs the pipeline inside ``mia-run``'s refusal handling (what its
``main`` wraps around Hydra, without Hydra's run directory and logging set-up, which
``test_mia_run_itself_...`` and the console-script test cover), and checks that it is refused
with exit status 2 and one clean message (no traceback without ``MIA_DEBUG=1``, and a
pointer to that switch), that the message holds the expected key or path, and that nothing
was written to the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
import yaml

from helpers import CONFIG_DIR, TINY, make_config, run_experiment
from mia_torch.data import Dataset, DatasetLoader, load_dataset
from mia_torch.data.npz import NpzImages
from mia_torch.data.validate import MIN_TRAIN_EXAMPLES, DataValidationError, read_npz
from mia_torch.settings.load import check_attacks, load_settings

#: TINY without its dataset, for cases that choose another one.
NO_DATA = [o for o in TINY if not o.startswith("dataset")]


def _arrays(n: int = 64, n_test: int = 16) -> dict[str, np.ndarray]:
    """A valid npz content: uint8 8x8 images, four classes."""
    rng = np.random.default_rng(0)
    return {"x_train": rng.integers(0, 256, (n, 8, 8), dtype=np.uint8), "y_train": np.arange(n) % 4,
            "x_test": rng.integers(0, 256, (n_test, 8, 8), dtype=np.uint8), "y_test": np.arange(n_test) % 4}


def _npz(change: Callable[[dict[str, np.ndarray]], None] = lambda a: None, **sizes: int) -> Callable[[Path], None]:
    """Setup that writes ``bad.npz``: the valid arrays after ``change``."""
    def write(tmp: Path) -> None:
        arrays = _arrays(**sizes)
        change(arrays)
        np.savez(tmp / "bad.npz", **arrays)
    return write


def _set(key: str, value) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        arrays[key] = value(arrays[key]) if callable(value) else value
    return change


def _with(key: str, index: int, value) -> Callable[[dict[str, np.ndarray]], None]:
    def change(arrays: dict[str, np.ndarray]) -> None:
        array = arrays[key].astype(np.float32) if isinstance(value, float) else arrays[key].copy()
        array[index] = value
        arrays[key] = array
    return change


def _write_bytes(make: Callable[[Path], bytes]) -> Callable[[Path], None]:
    def write(tmp: Path) -> None:
        _npz()(tmp)
        (tmp / "bad.npz").write_bytes(make(tmp))
    return write


def _file_in_the_way(tmp: Path) -> None:
    (tmp / "a_file").write_text("not a directory")


BAD_DATA: dict = {}  # what BadLoader puts in valid data (set by a case's setup)


class BadLoader(DatasetLoader):
    def load(self, *, root, download, seed, **options):
        x, y, num_classes = BAD_DATA["x"], BAD_DATA["y"], BAD_DATA["num_classes"]
        images = torch.randn(40, 1, 4, 4, generator=torch.Generator().manual_seed(0)) if x is None else x
        labels = torch.arange(40) % num_classes if y is None else y
        return Dataset("bad_loader", images, labels, images[:8], labels[:8], num_classes)


def _loader(x=None, y=None, num_classes: int = 3) -> Callable[[Path], None]:
    """Setup that makes :class:`BadLoader` return valid data with ``x`` / ``y`` replaced."""
    def register(tmp: Path) -> None:
        BAD_DATA.update(x=x, y=y, num_classes=num_classes)
    return register


def _records(*, typo_row: int | None = None, header: str = "age,city,label") -> Callable[[Path], None]:
    """Setup that writes ``records.csv``: 60 records, ``abc`` as the age of row ``typo_row``."""
    def write(tmp: Path) -> None:
        rows = [f"{20 + i % 50},{'ab'[i % 2]},{i % 3 % 2}" for i in range(60)]
        if typo_row is not None:
            rows[typo_row] = "abc" + rows[typo_row][2:]
        (tmp / "records.csv").write_text("\n".join([header, *rows]) + "\n")
    return write


def _text_file(tmp: Path) -> None:
    (tmp / "model.txt").write_text("these are not weights\n")


@dataclass
class Case:
    name: str
    overrides: list[str]
    expected: list[str]  # substrings of the message; "{tmp}" is the test's directory
    setup: Callable[[Path], None] | None = None
    base: list[str] = field(default_factory=lambda: list(TINY))
    run_name: str = "run"
    absent: list[str] = field(default_factory=list)  # substrings the message must not hold


NPZ = [*NO_DATA, "dataset=npz", "dataset.path={tmp}/bad.npz"]
CSV = [*NO_DATA, "dataset=csv", "dataset.path={tmp}/records.csv", "dataset.label=label"]
LOADER = [*NO_DATA, "dataset=npz", "dataset.name=bad_loader", f"dataset._target_={__name__}.BadLoader"]
NAN = float("nan")

CASES = [
    # ---- the config (Hydra composition, then our checks)
    Case("unknown group option", ["attack=[loss,nonexistent]"], ["attack/nonexistent"]),
    Case("mistyped key", ["num_modles=3"], ["num_modles", "did you mean num_models?", "Valid keys"], absent=["+"]),
    Case("mistyped key added with +", ["+num_modles=3"], ["num_modles", "did you mean num_models?", "Valid keys"]),
    Case("mistyped nested key", ["train.epocs=3"], ["train.epocs", "did you mean train.epochs?"], absent=["+"]),
    Case("malformed override", ["num_models=[1"], ["num_models=[1"]),
    Case("unknown top-level key", ["+unknown_key=1"], ["unknown_key", "Valid keys", "store_dir", "attack"]),
    Case("wrong type (structured)", ["train.epochs=many"], ["train.epochs"]),
    Case("out of range: optimizer", ["train.optimizer=rmsprop"], ["train.optimizer"]),
    Case("out of range: num_models", ["num_models=0"], ["num_models=0 is invalid"]),
    Case("one model for attacks that need references", ["num_models=1"],
         ["num_models=1", "need reference models", "attack=[quantile,loss]"]),
    Case("out of range: target_ids", ["target_ids=[7]"], ["target_ids"]),
    Case("unknown threat model", ["threat_model=both"], ["threat_model"]),
    Case("unknown query", ["queries=[identity,rotate]"], ["queries"]),
    Case("unknown signals dtype", ["signals_dtype=int8"], ["signals_dtype"]),
    Case("seed not a number", ["seed=abc"], ["seed='abc'"]),
    Case("negative seed", ["seed=-1"], ["seed=-1"]),
    Case("boolean that is not", ["download=maybe"], ["download='maybe'"]),
    Case("unknown device", ["device=tpu"], ["device='tpu'"]),
    Case("non-compute device", ["device=meta"], ["device='meta'", "compute device"]),
    Case("disjoint attacker with LiRA online", ["threat_model=disjoint", "num_models=5", "attack=[loss,lira_online]"],
         ["threat_model=disjoint", "lira_online", "IN references"]),
    Case("disjoint attacker with RMIA online", ["threat_model=disjoint", "num_models=5", "attack=[rmia_online]"],
         ["threat_model=disjoint", "rmia_online"]),
    Case("attack option out of range", ["attack=[rmia]", "attack.rmia.gamma=-1"], ["attack.rmia", "gamma"]),
    Case("allow_large not a boolean", ["allow_large=maybe"], ["allow_large='maybe'"]),
    # ---- sizes no study means: refused with their cost before any work
    Case("a million models", ["num_models=1000000"],
         ["num_models=1000000 is above 1024", "keep matrix", "signals", "training about", "allow_large=true"]),
    Case("1e8 bootstrap resamples", ["bootstrap=100000000"],
         ["bootstrap=100000000 is above 10000", "bootstrap about", "allow_large=true"]),
    Case("a population of 1e8 records", ["dataset.num_examples=100000000"],
         ["dataset.num_examples=100000000", "allow_large=true"]),
    Case("a shift that leaves nothing of the image", ["queries=[identity,shift_100_100]"],
         ["queries", "shift_100_100", "blank", "|dx| < 8"]),
    # ---- the environment
    Case("store_dir not writable", ["store_dir={tmp}/a_file/store"], ["store_dir=", "{tmp}/a_file/store"],
         setup=_file_in_the_way),
    Case("run directory not writable", [], ["hydra.run.dir", "{tmp}/a_file/run"], setup=_file_in_the_way,
         run_name="a_file/run"),
    # ---- the data: files and loaders
    Case("missing torchvision files", ["dataset=mnist", "data_dir={tmp}/nowhere"], ["{tmp}/nowhere", "download=true"],
         base=NO_DATA),
    Case("missing npz file", [], ["{tmp}/bad.npz", "dataset.path"], base=NPZ),
    Case("population larger than the data", ["dataset.population_size=5000"], ["dataset.population_size"]),
    Case("npz without the test arrays", [], ["{tmp}/bad.npz", "x_test"], base=NPZ,
         setup=lambda tmp: np.savez(tmp / "bad.npz", **{k: v for k, v in _arrays().items() if "train" in k})),
    Case("truncated npz", [], ["{tmp}/bad.npz", "not an .npz archive"], base=NPZ,
         setup=_write_bytes(lambda tmp: (tmp / "bad.npz").read_bytes()[:3000])),
    Case("random bytes", [], ["{tmp}/bad.npz", "not an .npz archive"], base=NPZ,
         setup=_write_bytes(lambda tmp: np.random.default_rng(1).bytes(5000))),
    Case("object array", [], ["{tmp}/bad.npz", "x_train", "object array"], base=NPZ,
         setup=_npz(_set("x_train", lambda x: np.array(list(x), dtype=object)))),
    Case("NaN pixel", [], ["{tmp}/bad.npz", "x_train", "NaN", "index 5"], base=NPZ,
         setup=_npz(_with("x_train", 5, NAN))),
    Case("Inf pixel in the test split", [], ["{tmp}/bad.npz", "x_test", "Inf"], base=NPZ,
         setup=_npz(_with("x_test", 2, float("inf")))),
    Case("negative label", [], ["{tmp}/bad.npz", "y_train", "negative", "index 3"], base=NPZ,
         setup=_npz(_with("y_train", 3, -1))),
    Case("fractional labels", [], ["{tmp}/bad.npz", "y_train", "whole numbers"], base=NPZ,
         setup=_npz(_set("y_train", lambda y: y + 0.5))),
    Case("NaN label", [], ["{tmp}/bad.npz", "y_test", "whole numbers"], base=NPZ,
         setup=_npz(_with("y_test", 0, NAN))),
    Case("string labels", [], ["{tmp}/bad.npz", "y_train", "strings"], base=NPZ,
         setup=_npz(_set("y_train", lambda y: np.array([f"class{v}" for v in y])))),
    Case("one-hot labels", [], ["{tmp}/bad.npz", "y_train", "one-hot"], base=NPZ,
         setup=_npz(_set("y_train", lambda y: np.eye(4)[y]))),
    Case("labels and images of different lengths", [], ["{tmp}/bad.npz", "y_train", "63 labels for 64 images"],
         base=NPZ, setup=_npz(_set("y_train", lambda y: y[:-1]))),
    Case("a single class", [], ["{tmp}/bad.npz", "single class"], base=NPZ,
         setup=_npz(lambda a: (a["y_train"].fill(2), a["y_test"].fill(2)))),
    Case("a test label that makes 1000 classes", [], ["{tmp}/bad.npz", "y_test", "999", "1000 classes"], base=NPZ,
         setup=_npz(_with("y_test", 1, 999))),
    Case("a training label that makes 1000 classes", [], ["{tmp}/bad.npz", "y_train", "1000 classes"], base=NPZ,
         setup=_npz(_with("y_train", 0, 999))),
    Case("empty population", [], ["{tmp}/bad.npz", "y_train", "empty"], base=NPZ, setup=_npz(n=0)),
    Case("empty float test split", [], ["{tmp}/bad.npz", "test split is empty"], base=NPZ,
         setup=_npz(lambda a: a.update(x_test=np.zeros((0, 8, 8), np.float32), y_test=np.zeros(0, np.int64)))),
    Case("tiny population for the models", ["num_models=4"], ["{tmp}/bad.npz", "population of 10 examples",
                                                              f"at least {MIN_TRAIN_EXAMPLES}"],
         base=NPZ, setup=_npz(n=10)),
    Case("tiny population from population_size", ["dataset.population_size=6"],
         ["dataset 'synthetic'", "population of 6 examples"]),
    Case("train and test images of different shapes", [], ["{tmp}/bad.npz", "differ in shape"], base=NPZ,
         setup=_npz(_set("x_test", lambda x: x[:, :6, :6]))),
    Case("registered loader with NaN images", [], ["dataset 'bad_loader'", "NaN"], base=LOADER,
         setup=_loader(x=torch.full((40, 1, 4, 4), NAN))),
    Case("registered loader with out-of-range labels", [], ["dataset 'bad_loader'", "[0, num_classes=3)", "found 3, 4, 5"],
         base=LOADER, setup=_loader(y=torch.arange(40) % 6)),
    Case("registered loader with float labels", [], ["dataset 'bad_loader'", "int64"],
         base=LOADER, setup=_loader(y=(torch.arange(40) % 3).float())),
]
CASES += [
    # ---- CSV cells that would change what a column means
    Case("one text cell in a numeric CSV column", [], ["records.csv", "`age`", "row 7: 'abc'",
                                                      "dataset.non_numeric=missing"], base=CSV,
         setup=_records(typo_row=7)),
    Case("two CSV columns of one name", [], ["records.csv", "duplicate column names", "'age' in columns [0, 1]"],
         base=CSV, setup=_records(header="age,age,label")),
    # ---- a model file given to audit or forget
    Case("a text file as audit.checkpoint", ["audit.checkpoint={tmp}/model.txt"],
         ["{tmp}/model.txt (audit.checkpoint)", "not a readable PyTorch checkpoint"], setup=_text_file),
    Case("a directory as audit.checkpoint", ["audit.checkpoint={tmp}"], ["audit.checkpoint=", "is a directory"],
         absent=["does not exist"]),
    Case("a text file as forget.checkpoint", ["forget.method=checkpoint", "forget.checkpoint={tmp}/model.txt"],
         ["{tmp}/model.txt (forget.checkpoint)", "not a readable PyTorch checkpoint"], absent=["audit.checkpoint"],
         setup=_text_file),
]
if not torch.cuda.is_available():
    CASES.append(Case("CUDA without CUDA", ["device=cuda"], ["device='cuda'", "CUDA is not available"]))


def _store_is_empty(store: Path) -> bool:
    return not store.exists() or not any(store.rglob("*"))


@pytest.fixture
def clean_registry():
    yield
    BAD_DATA.clear()


def refused(tmp_path: Path, overrides: list[str], monkeypatch, capsys, *, run_name: str = "run") -> tuple[int, str]:
    """The tiny run with ``overrides`` inside mia-run's refusal handling: (exit status, stderr)."""
    from mia_torch.cli import PROG, explain_hydra_error
    from mia_torch.refusal import clean_refusals

    monkeypatch.delenv("MIA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info, clean_refusals(PROG, translate=explain_hydra_error):
        run_experiment(tmp_path, overrides, name=run_name)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_stops_before_training_with_one_message(tmp_path, case, clean_registry, monkeypatch, capsys):
    if case.setup is not None:
        case.setup(tmp_path)
    overrides = [o.replace("{tmp}", str(tmp_path)) for o in (*case.base, *case.overrides)]
    code, message = refused(tmp_path, overrides, monkeypatch, capsys, run_name=case.run_name)
    assert code == 2, message
    assert message.startswith("mia-run: error: ") and "Traceback" not in message and "MIA_DEBUG=1" in message
    for expected in case.expected:
        assert expected.replace("{tmp}", str(tmp_path)) in message, message
    for unexpected in case.absent:
        assert unexpected not in message, message
    assert _store_is_empty(tmp_path / "store")
    assert not (tmp_path / "run" / "keep.npy").exists()


@pytest.mark.parametrize("override, expected", [
    ("num_modles=3", "unknown top-level key(s) num_modles: no config defines it; did you mean num_models?"),
    ("num_models=0", "num_models=0 is invalid"),
])
def test_mia_run_itself_refuses_hydra_and_pipeline_errors_with_one_message(tmp_path, monkeypatch, capsys, override,
                                                                           expected):
    """``mia-run``'s main in-process: Hydra raises its errors to it (and a single run's task refuses itself)."""
    from mia_torch import cli

    monkeypatch.setattr(sys, "argv", ["mia-run", *TINY, override, f"store_dir={tmp_path / 'store'}",
                                      f"hydra.run.dir={tmp_path / 'run'}"])
    monkeypatch.delenv("MIA_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        cli.main()
    err = capsys.readouterr().err
    assert info.value.code == 2 and err.startswith(f"mia-run: error: {expected}") and "Traceback" not in err
    assert "HYDRA_FULL_ERROR" not in os.environ and _store_is_empty(tmp_path / "store")


def test_the_console_script_prints_one_message_and_the_debug_switch_the_traceback(tmp_path):
    """As a process: exit 2 and the message alone; with MIA_DEBUG=1 the traceback too."""
    command = [sys.executable, "-m", "mia_torch.cli", *NO_DATA, "dataset=mnist", f"data_dir={tmp_path / 'nowhere'}",
               f"store_dir={tmp_path / 'store'}", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k not in ("MIA_DEBUG", "HYDRA_FULL_ERROR")}
    for debug in (False, True):
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120,
                              env={**env, "OMP_NUM_THREADS": "1", **({"MIA_DEBUG": "1"} if debug else {})})
        assert proc.returncode == (1 if debug else 2), proc.stderr[-2000:]
        assert str(tmp_path / "nowhere") in proc.stderr and "download=true" in proc.stderr
        assert ("Traceback" in proc.stderr) == debug, proc.stderr[-2000:]
    assert _store_is_empty(tmp_path / "store")


def test_valid_keys_are_read_from_the_shipped_config(tmp_path):
    """The list in the message is the primary config's keys plus its groups, not a list kept by hand."""
    primary = yaml.safe_load((CONFIG_DIR / "config.yaml").read_text())
    groups = [p.name for p in CONFIG_DIR.iterdir() if p.is_dir() and p.name not in ("hydra", "__pycache__")]
    with pytest.raises(ValueError) as info:
        load_settings(make_config(tmp_path, [*TINY, "+typo=1"]))
    listed = str(info.value).split("Valid keys: ")[1].split(", ")
    assert set(listed) == (set(primary) - {"defaults", "hydra"}) | set(groups)


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml")))
def test_every_named_experiment_passes_the_attack_checks(tmp_path, name):
    """shokri_cifar10 is disjoint: its attacks need no IN references, so it is not refused."""
    attacks = check_attacks(load_settings(make_config(tmp_path, [f"experiment={name}", "device=cpu"])))
    assert attacks


def test_online_attacks_need_in_references_and_offline_ones_do_not(tmp_path):
    settings = load_settings(make_config(tmp_path, [*TINY, "attack=[loss,shokri,lira_online,lira_offline,rmia,"
                                                           "rmia_online,population]"]))
    needs = {name: attack.needs_in_references for name, attack in check_attacks(settings).items()}
    assert needs == {"loss": False, "shokri": False, "lira_online": True, "lira_offline": False, "rmia": False,
                     "rmia_online": True, "population": False}


def test_near_misses_are_accepted(tmp_path):
    """Labels as integral floats or [N, 1], classes 1..4 without a 0, float images: all valid."""
    arrays = _arrays()
    arrays["y_train"] = (arrays["y_train"] + 1).astype(np.float64)[:, None]
    arrays["y_test"] = arrays["y_test"] + 1
    arrays["x_train"] = arrays["x_train"].astype(np.float32) / 255
    arrays["x_test"] = arrays["x_test"].astype(np.float32) / 255
    np.savez(tmp_path / "ok.npz", **arrays)
    read = read_npz(tmp_path / "ok.npz")
    assert read.num_classes == 5 and read.y_train.dtype == np.int64 and read.y_train.shape == (64,)
    data = load_dataset(NpzImages(path="ok.npz"), root=tmp_path)
    assert data.num_classes == 5 and sorted(data.y.unique().tolist()) == [1, 2, 3, 4]


def test_a_population_just_large_enough_runs_through_prepare(tmp_path):
    """The smallest population the check allows (every model trains on MIN_TRAIN_EXAMPLES) passes it."""
    from mia_torch.pipeline import prepare

    _npz(n=2 * MIN_TRAIN_EXAMPLES)(tmp_path)
    cfg = make_config(tmp_path, [*NO_DATA, "dataset=npz", f"dataset.path={tmp_path / 'bad.npz'}"])
    ctx = prepare(cfg, tmp_path / "run")
    assert ctx.splits.keep.sum(axis=1).min() == MIN_TRAIN_EXAMPLES
    with pytest.raises(DataValidationError, match="population of 14 examples"):
        _npz(n=2 * MIN_TRAIN_EXAMPLES - 2)(tmp_path)
        prepare(cfg, tmp_path / "run")


# ---------------------------------------------------------------- stored models that are not what they claim


def test_a_stored_model_with_a_forged_checksum_and_a_misshaped_tensor_is_retrained_not_reused(tmp_path):
    """Its checksum matches (forged), so only the shapes betray it: moved aside and retrained, never recorded as
    reused, and the stored checkpoint a run reports then loads into the configured model (as an audit does)."""
    from mia_torch.audit.checkpoint import load_checkpoint_model
    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import build, model_key, stored_path
    from mia_torch.stages.train import train_stage
    from mia_torch.store import state_dict_from_bytes, state_dict_to_bytes
    from test_store import _plant

    cfg = make_config(tmp_path, [*TINY, "stage=train"])
    first = prepare(cfg, tmp_path / "run")
    train_stage(first, [0])
    key = model_key(first, 0)
    state = state_dict_from_bytes(first.store.payload_path("models", key).read_bytes())
    name = next(iter(state))
    state[name] = torch.zeros(*state[name].shape[:-1], state[name].shape[-1] + 1)
    _plant(first.store, "models", key, state_dict_to_bytes(state))
    again = prepare(cfg, tmp_path / "run")
    train_stage(again, [0])
    assert again.trained == [0] and again.reused == []
    assert len(again.store.corrupt) == 1
    model = load_checkpoint_model(stored_path(again, 0), lambda: build(again.settings, again.data, 0))
    assert isinstance(model, torch.nn.Module)


def test_a_model_reused_then_rebuilt_in_the_same_run_is_listed_as_trained_only(tmp_path):
    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import stored_path
    from mia_torch.stages.train import stored_model, train_stage

    cfg = make_config(tmp_path, [*TINY, "stage=train"])
    train_stage(prepare(cfg, tmp_path / "run"), [0])
    ctx = prepare(cfg, tmp_path / "run")
    train_stage(ctx, [0])
    assert ctx.reused == [0]
    stored_path(ctx, 0).write_bytes(b"truncated")  # corrupted between the stages: rebuilt when loaded
    stored_model(ctx, 0)
    assert ctx.trained == [0] and ctx.reused == []
