"""Sharded training with the joblib launcher, resume after a kill, corrupt store artifacts,
sweep summaries (callback and script), and the named experiments' configs.

Hydra runs are real subprocesses of ``python -m mia_torch.cli`` (``mia-run``) on the tiny synthetic setup;
every comparison of scores is exact (CPU, one thread everywhere).
"""

from __future__ import annotations

import copy
import csv
import functools
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from helpers import CONFIG_DIR, REPO, TINY, make_config, run_experiment
from results_fixtures import make_results
from mia_torch.evaluation import load_scores
from mia_torch.report.json_file import read_json, write_json
from mia_torch.report.sweep import SweepSummaryCallback, write_sweep_summary
from mia_torch.report.sweep_jobs import collect_jobs
from mia_torch.report.sweep_plot import _axis
from mia_torch.report.types import RunResults, TargetResult
from mia_torch.store import ArtifactStore


RUN = ["-m", "mia_torch.cli"]  # mia-run
OVERRIDES = [*TINY, "attack=[loss,lira_online]", "sanity_check=false"]
NUM_MODELS = 4  # TINY's num_models


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _hydra(args: list[str], cwd: Path, timeout: int = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *RUN, *args], cwd=cwd, env=_env(), capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def _stored_models(store: Path) -> dict[int, Path]:
    """Model index -> artifact folder, for every completed model artifact in ``store``."""
    out = {}
    for meta in (store / "models").glob("*/meta.json"):
        out[json.loads(meta.read_text())["meta"]["model"]] = meta.parent
    return out


def _stored_signals(store: Path) -> dict[int, Path]:
    return {json.loads(m.read_text())["meta"]["model"]: m.parent for m in (store / "signals").glob("*/meta.json")}


def _assert_same_scores(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].keys() == b[name].keys(), name
        for target in a[name]:
            np.testing.assert_array_equal(a[name][target], b[name][target], err_msg=f"{name}/target_{target}")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted, unsharded run in its own fresh store: (root, results, scores).

    Made once per test session, also under pytest-xdist (a file lock in the temp dir that
    the workers share); tests only read it (the truncation test copies its store).
    """
    from filelock import FileLock

    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    root = shared / "sweeps_reference"
    with FileLock(str(shared / "sweeps_reference.lock")):
        if not (root / "run" / "results.json").is_file():
            results = run_experiment(root, OVERRIDES)
            assert results.trained_models == list(range(NUM_MODELS))
    results = RunResults.from_dict(read_json(root / "run" / "results.json"))
    return root, results, load_scores(root / "run" / "scores.npz")


def test_two_joblib_shards_then_attack_stage_equal_the_unsharded_run(tmp_path, reference):
    store, sweep = tmp_path / "store", tmp_path / "sweep"
    proc = _hydra(["-m", *OVERRIDES, "stage=train", "shard=0,1", "num_shards=2", "hydra/launcher=parallel",
                   f"store_dir={store}", f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert "Joblib.Parallel(" in proc.stdout + proc.stderr  # both shards went through the joblib launcher
    # Each shard trained exactly its own models (m % 2 == shard) into the shared store.
    assert "shard 0/2: trained [0, 2], reused []" in (sweep / "0" / "mia-run.log").read_text()
    assert "shard 1/2: trained [1, 3], reused []" in (sweep / "1" / "mia-run.log").read_text()
    assert sorted(_stored_models(store)) == list(range(NUM_MODELS))
    # The sweep summary lists train-only shards as missing instead of failing.
    rows = list(csv.DictReader((sweep / "sweep_summary.csv").open()))
    assert [(r["shard"], r["status"]) for r in rows] == [("0", "missing"), ("1", "missing")]
    assert "stage=train" in (sweep / "sweep_summary.md").read_text()

    final = run_experiment(tmp_path, [*OVERRIDES, "stage=all"])  # same store (tmp_path / "store")
    assert final.trained_models == []
    assert final.reused_models == list(range(NUM_MODELS))
    _assert_same_scores(load_scores(tmp_path / "run" / "scores.npz"), reference[2])


SLOW_TRAINING = """
import os, runpy, sys, time
from pathlib import Path
import mia_torch.stages.train as train_stage

_train_models = train_stage.train_models
started = Path(os.environ["MIA_TEST_STARTED"])

def slow_train_models(*args, **kwargs):
    # runs with the models' locks held (and written): count the call, then leave a wide window
    started.write_text(str(int(started.read_text()) + 1 if started.exists() else 1))
    time.sleep(0.25)
    return _train_models(*args, **kwargs)

train_stage.train_models = slow_train_models
sys.argv = ["mia-run", *sys.argv[1:]]
runpy.run_module("mia_torch.cli", run_name="__main__")
"""


def test_run_killed_after_k_models_resumes_with_only_the_missing_ones(tmp_path, reference):
    """SIGKILL a real run once 2 models are stored; the rerun trains exactly the others.

    The killed process is the normal entry point, training one model at a time; each
    model's training starts (its lock taken) with a count and a sleep, and the kill comes
    once a model beyond the 2 stored ones has started, so it lands while a model is in
    training, whatever the machine's load.
    """
    store, started = tmp_path / "store", tmp_path / "started"
    driver = tmp_path / "slow_run.py"
    driver.write_text(SLOW_TRAINING)
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, str(driver), *OVERRIDES, "parallel_models=1", f"store_dir={store}",
                             f"hydra.run.dir={tmp_path / 'killed'}"], cwd=tmp_path,
                            env=_env() | {"MIA_TEST_STARTED": str(started)}, stdout=log, stderr=subprocess.STDOUT)

    def training_past_two_stored() -> bool:
        stored = len(_stored_models(store))
        return stored >= 2 and started.exists() and int(started.read_text() or 0) > stored

    deadline = time.monotonic() + 180
    try:
        while not training_past_two_stored():
            assert proc.poll() is None, "the run ended before it could be interrupted"
            assert time.monotonic() < deadline, "no model was stored in time"
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        log.close()
    assert proc.returncode == -signal.SIGKILL
    done = sorted(_stored_models(store))
    assert 2 <= len(done) < NUM_MODELS, done
    assert not (tmp_path / "killed" / "results.json").exists()

    results = run_experiment(tmp_path, OVERRIDES)
    assert results.trained_models == sorted(set(range(NUM_MODELS)) - set(done))
    assert results.reused_models == done
    assert results.corrupt_artifacts == []
    _assert_same_scores(load_scores(tmp_path / "run" / "scores.npz"), reference[2])


def test_truncated_model_and_signals_are_detected_and_rebuilt(tmp_path, reference):
    root, _, scores = reference
    store = tmp_path / "store"
    shutil.copytree(root / "store", store)
    model_dir, signals_dir = _stored_models(store)[1], _stored_signals(store)[2]
    for folder in (model_dir, signals_dir):
        payload = folder / "payload"
        data = payload.read_bytes()
        payload.write_bytes(data[: len(data) // 2])

    results = run_experiment(tmp_path, OVERRIDES)
    corrupt = sorted(results.corrupt_artifacts)
    assert len(corrupt) == 2, corrupt
    assert Path(corrupt[0]).parent == store / "models" and Path(corrupt[0]).name.startswith(model_dir.name)
    assert Path(corrupt[1]).parent == store / "signals" and Path(corrupt[1]).name.startswith(signals_dir.name)
    assert results.trained_models == [1]  # the truncated model; model 2's signals came from its stored model
    _assert_same_scores(load_scores(tmp_path / "run" / "scores.npz"), scores)
    assert read_json(tmp_path / "run" / "results.json")["attacks"] == read_json(root / "run" / "results.json")["attacks"]
    # Both artifacts were rebuilt in place and verify again.
    fresh = ArtifactStore(store)
    assert fresh.load("models", model_dir.name) is not None
    assert fresh.load("signals", signals_dir.name) is not None


def _hparams(tensorboard_dir: Path) -> dict[str, object]:
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
    from tensorboard.plugins.hparams import plugin_data_pb2

    found: dict[str, object] = {}
    for events in tensorboard_dir.glob("events.out.tfevents.*"):
        for event in EventFileLoader(str(events)).Load():
            for value in event.summary.value:
                if value.metadata.plugin_data.plugin_name != "hparams":
                    continue
                data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    hp = data.session_start_info.hparams
                    found.update({k: getattr(hp[k], hp[k].WhichOneof("kind")) for k in hp})
    return found


def test_weight_decay_sweep_writes_summary_table_plot_and_hparams(tmp_path):
    sweep = tmp_path / "sweep"
    proc = _hydra(["-m", *OVERRIDES, "train.weight_decay=0,0.01", f"store_dir={tmp_path / 'store'}",
                   f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert str(sweep / "sweep_summary.csv") in proc.stdout  # the callback says where it wrote

    with (sweep / "sweep_summary.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows, columns = list(reader), reader.fieldnames
    calibration = ["target_ece", "target_ece_members", "target_member_confidence", "target_nonmember_confidence",
                   "target_confidence_gap"]
    assert columns == ["job", "train.weight_decay", "status", "target_train_acc", "target_test_acc", *calibration,
                       "generalization_gap", "loss/auc", "loss/tpr@0.01fpr", "loss/tpr@0.001fpr",
                       "loss/empirical_epsilon", "lira_online/auc", "lira_online/tpr@0.01fpr",
                       "lira_online/tpr@0.001fpr", "lira_online/empirical_epsilon", "dir"]
    assert [(r["job"], r["train.weight_decay"], r["status"]) for r in rows] == [("0", "0", "ok"), ("1", "0.01", "ok")]
    for row in rows:
        results = RunResults.from_dict(json.loads((sweep / row["job"] / "results.json").read_text()))
        assert results.config["train"]["weight_decay"] == float(row["train.weight_decay"])
        for attack in ("loss", "lira_online"):
            pooled = results.attacks[attack].pooled
            for metric, value in (("auc", pooled.auc), ("tpr@0.01fpr", pooled.tpr[0.01]),
                                  ("tpr@0.001fpr", pooled.tpr[0.001])):
                assert float(row[f"{attack}/{metric}"]) == pytest.approx(value)
        train, test = results.targets[0].train_acc, results.targets[0].test_acc
        assert float(row["target_train_acc"]) == pytest.approx(train)
        assert float(row["generalization_gap"]) == pytest.approx(train - test)
        # Each job's TensorBoard run carries its hyperparameters for the HParams view.
        hparams = _hparams(sweep / row["job"] / "tensorboard")
        assert hparams["train.weight_decay"] == pytest.approx(float(row["train.weight_decay"]))
    md = (sweep / "sweep_summary.md").read_text()
    assert sum(line.startswith("| 0") or line.startswith("| 1") for line in md.splitlines()) == 2
    assert "train.weight_decay" in md
    assert (sweep / "sweep_summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ------------------------------------------------------------ summary on hand-made sweeps (no training)


def _fake_job(sweep: Path, name: str, overrides: list[str], auc: float | None) -> None:
    """A job folder; with ``auc`` also a results.json whose loss attack has that pooled AUC."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(OmegaConf.to_yaml(overrides))
    if auc is not None:
        results = copy.deepcopy(_typed_results())
        results.targets = {0: TargetResult(train_acc=0.9, test_acc=0.7), 1: TargetResult(train_acc=0.8, test_acc=0.6)}
        pooled = results.attacks["loss"].pooled
        pooled.auc, pooled.tpr = auc, {0.01: auc / 10, 0.001: auc / 100}
        write_json(job / "results.json", results.to_dict())


@functools.cache
def _typed_results():
    return make_results(shifts={"loss": 0.5}, num_examples=200, bootstrap=0)[0]


def test_summary_of_a_grid_sweep_lists_failed_jobs_and_draws_each_key(tmp_path):
    sweep = tmp_path / "sweep"
    grid = [(m, lr) for m in ("mlp", "small_cnn") for lr in ("0.001", "0.1")]
    for i, (model, lr) in enumerate(grid):
        _fake_job(sweep, str(i), [f"model={model}", f"train.lr={lr}", "seed=0"], auc=None if i == 3 else 0.6 + i / 100)
    _fake_job(sweep, "10", ["model=mlp", "train.lr=1.0", "seed=0"], auc=0.7)  # ordered after 3, not after 1
    _fake_job(sweep, "11", ["model=mlp", "train.lr=3.0", "seed=0"], auc=0.7)
    broken = read_json(sweep / "11" / "results.json")
    del broken["attacks"]["loss"]["pooled"]["auc"]
    write_json(sweep / "11" / "results.json", broken)

    summary = write_sweep_summary(sweep)
    assert summary.swept == ["model", "train.lr"]
    assert [r["job"] for r in summary.rows] == ["0", "1", "2", "3", "10", "11"]
    assert [r["status"] for r in summary.rows] == ["ok", "ok", "ok", "missing", "ok", "missing"]
    assert summary.missing[0] == ("3", "no results.json (job failed or has not finished)")
    assert summary.missing[1][0] == "11" and "attacks.loss.pooled: missing key 'auc'" in summary.missing[1][1]
    assert summary.rows[1]["loss/auc"] == pytest.approx(0.61)
    assert summary.rows[0]["target_train_acc"] == pytest.approx(0.85)
    assert summary.rows[0]["generalization_gap"] == pytest.approx(0.2)
    md = summary.markdown.read_text()
    assert "Common overrides: `seed=0`" in md and "## Missing jobs" in md
    # 200 non-members per job: TPR at 1% FPR rests on 2 false positives, 0.1% on none; both are marked.
    assert "| 6.10%* | 0.61%** |" in md and "* unreliable, the FPR is below 10/N" in md
    assert summary.figure is not None and summary.figure.stat().st_size > 1000
    # One panel row per swept key: model on a categorical axis, lr (1e-3 .. 1) on a log axis.
    assert _axis(["mlp", "small_cnn", "mlp"], ["mlp", "small_cnn", "mlp"]) == ("category", [0.0, 1.0, 0.0],
                                                                                 ["mlp", "small_cnn"])
    assert _axis([0.001, 0.1, 1.0], ["0.001", "0.1", "1.0"])[0] == "log"
    assert _axis([0, 0.01], ["0", "0.01"])[0] == "linear"  # zero: no log axis
    assert _axis([1, 5], ["1", "5"])[0] == "linear"  # less than a decade


def test_callback_and_script_write_the_summary(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    _fake_job(sweep, "0", ["train.epochs=1"], auc=0.55)
    _fake_job(sweep, "1", ["train.epochs=2"], auc=0.65)
    SweepSummaryCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert [r["train.epochs"] for r in csv.DictReader((sweep / "sweep_summary.csv").open())] == ["1", "2"]
    (sweep / "sweep_summary.csv").unlink()

    script = _load_script("summarize_sweep")  # its main(argv) is what the script exits with
    assert script.main([str(sweep)]) == 0
    assert (sweep / "sweep_summary.csv").is_file() and str(sweep / "sweep_summary.png") in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no Hydra jobs"):
        collect_jobs(empty)
    assert script.main([str(empty)]) == 2 and "no Hydra jobs" in capsys.readouterr().err


def _load_script(name: str):
    """``scripts/<name>.py`` imported as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------ named experiments


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))


def test_the_named_experiments_exist():
    assert {"mnist_quick", "shokri_cifar10", "lira_cifar10", "rmia_cifar10", "cifar10_fast"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_validates(tmp_path, name):
    from mia_torch.settings.load import load_settings

    first = (CONFIG_DIR / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
    assert first == "# @package _global_"
    cfg = make_config(tmp_path, [f"experiment={name}", "device=cpu"])
    settings = load_settings(cfg)  # every value passes the checks that run before training
    assert settings.attacks, name
    plain = make_config(tmp_path, ["device=cpu"])
    assert OmegaConf.to_container(cfg) != OmegaConf.to_container(plain)
    expected = {
        "mnist_quick": {"dataset.name": "mnist", "model._target_": "mia_torch.models.SmallCNN", "num_models": 8},
        "shokri_cifar10": {"dataset.name": "cifar10", "threat_model": "disjoint",
                           "model._target_": "mia_torch.models.FastCifarCNN"},
        "lira_cifar10": {"dataset.name": "cifar10", "model._target_": "mia_torch.models.WideResNet",
                         "num_models": 64, "queries": ["identity", "flip"]},
        "rmia_cifar10": {"dataset.name": "cifar10", "num_models": 6},
        "cifar10_fast": {"dataset.name": "cifar10", "model._target_": "mia_torch.models.FastCifarCNN",
                         "num_models": 32, "target_ids": [0, 1, 2, 3], "train.epochs": 16},
    }.get(name, {})
    for key, value in expected.items():
        assert OmegaConf.select(cfg, key) == value, key
    attacks = {"shokri_cifar10": {"shokri", "loss"}, "lira_cifar10": {"lira_online", "lira_offline", "loss"},
               "rmia_cifar10": {"rmia", "lira_offline", "loss"},
               "cifar10_fast": {"lira_online", "lira_offline", "rmia", "loss"}}.get(name)
    if attacks:
        assert attacks <= set(settings.attacks), name


@pytest.mark.parametrize("launcher, target, values", [
    ("parallel", "JoblibLauncher", {"n_jobs": 2}),
    ("slurm", "SlurmLauncher", {"gpus_per_node": 1, "tasks_per_node": 1, "partition": None}),
    ("local", "LocalLauncher", {"tasks_per_node": 1}),
])
def test_launcher_configs_extend_the_plugins_schemas(launcher, target, values):
    from hydra import compose, initialize_config_dir

    from mia_torch.settings.schemas import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    node = cfg.hydra.launcher
    assert node._target_.endswith(target)
    for key, value in values.items():
        assert node[key] == value, key
    if launcher != "parallel":
        assert node.timeout_min > 0 and node.submitit_folder.endswith(".submitit/%j")
