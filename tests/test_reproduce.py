"""mia_torch.reproduce (mia-reproduce): a finished CPU run retrains bitwise-identically; tampering is caught; a crafted run directory runs no code."""

from __future__ import annotations

import copy
import functools
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import yaml

from helpers import REPO, TINY
from results_fixtures import make_results
from mia_torch.evaluation import load_scores, save_scores
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults


SCRIPT = ["-m", "mia_torch.reproduce"]  # mia-reproduce
OVERRIDES = [*TINY, "attack=[loss,lira_online]", "sanity_check=false"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _load_script():
    """The reproduce module (its ``main(argv)`` returns the exit status)."""
    from mia_torch import reproduce

    return reproduce


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run made by the Hydra entry point (so it has .hydra/config.yaml)."""
    root = tmp_path_factory.mktemp("original")
    proc = subprocess.run([sys.executable, "-m", "mia_torch.cli", *OVERRIDES,
                           f"store_dir={root / 'store'}", f"hydra.run.dir={root / 'run'}"],
                          cwd=root, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (root / "run" / ".hydra" / "config.yaml").is_file()
    return root


def test_reproduce_matches_a_finished_run_then_catches_tampered_scores(finished_run, tmp_path, capsys):
    """``main(argv)`` is what ``mia-reproduce`` exits with (in-process: no second torch start-up)."""
    reproduce = _load_script()
    run_dir = finished_run / "run"
    code = reproduce.main([str(run_dir), "--out", str(tmp_path / "again")])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert "MATCH: the rerun reproduces" in out and "MISMATCH" not in out
    for name in ("keep.npy", "signals", "scores loss/target_0", "scores lira_online/target_0",
                 "results.json metrics"):
        assert f"MATCH     {name}" in out, name
    assert "versions:" in out and "torch" in out
    assert f"config: {run_dir / 'results.json'} (the resolved config the run recorded)" in out
    assert "WARNING: config.yaml" not in out  # its ${oc.env:...} data_dir is text, never resolved nor flagged
    # A fresh store: every model was retrained, none read from the original store.
    assert "empty: every model is retrained" in out
    rerun = RunResults.from_dict(read_json(tmp_path / "again" / "results.json"))
    assert rerun.trained_models == [0, 1, 2, 3]
    assert rerun.config["store_dir"] == str(tmp_path / "again" / "store")
    report = json.loads((tmp_path / "again" / "reproduce_report.json").read_text())
    assert report["verdict"] == "MATCH" and report["mode"] == "exact"

    # Tamper with one attack's saved scores: the same rerun (its models reused) now disagrees.
    scores = load_scores(run_dir / "scores.npz")
    scores["loss"][0] = scores["loss"][0].copy()
    scores["loss"][0][7] += np.float32(0.5)
    save_scores(run_dir / "scores.npz", scores)
    code = reproduce.main([str(run_dir), "--out", str(tmp_path / "tampered"),
                           "--store-dir", str(tmp_path / "again" / "store")])
    out = capsys.readouterr().out
    assert code == 1
    assert "holds 4 model(s) already" in out
    assert "MISMATCH  scores loss/target_0: max abs diff 0.5, 1 of 400 values differ" in out
    assert "MATCH     scores lira_online/target_0" in out
    assert "\nMISMATCH: 1 of" in out


def test_reproduce_exits_2_without_a_finished_run(tmp_path, capsys):
    """In-process (the script is checked as a process by the crafted-directory test below)."""
    (tmp_path / "half").mkdir()
    assert _load_script().main([str(tmp_path / "half")]) == 2
    assert "results.json is missing" in capsys.readouterr().err


def _results_with(auc: float, tpr: float, test_acc: float):
    results = copy.deepcopy(_typed_results())
    pooled = results.attacks["loss"].pooled
    pooled.auc, pooled.tpr[0.001] = auc, tpr
    results.targets[0].test_acc = test_acc
    return results


@functools.cache
def _typed_results():
    return make_results(shifts={"loss": 0.5}, targets=(0,), num_examples=200, bootstrap=0)[0]


def test_cuda_runs_are_compared_on_auc_and_accuracy_within_atol():
    reproduce = _load_script()
    original = _results_with(0.700, 0.01, 0.80)
    close = _results_with(0.705, 0.03, 0.803)
    far = _results_with(0.75, 0.01, 0.80)
    ok = reproduce.compare_metrics(original, close, exact=False, atol=0.01)
    assert not [c for c in ok if c.status == "mismatch"]
    assert [c.name for c in ok if c.status == "match"] == ["metric attacks.loss.pooled.auc", "metric targets.0.test_acc",
                                                           "metric targets.0.train_acc"]
    assert any(c.status == "info" and "tpr@0.001fpr" in c.detail for c in ok)  # reported, not gated
    bad = reproduce.compare_metrics(original, far, exact=False, atol=0.01)
    assert [c.name for c in bad if c.status == "mismatch"] == ["metric attacks.loss.pooled.auc"]
    # The same small differences fail the exact (CPU) comparison.
    assert [c for c in reproduce.compare_metrics(original, close, exact=True, atol=0.01) if c.status == "mismatch"]
    assert reproduce._device_is_cuda({"device": "auto"}, {"cuda": "12.4"})
    assert not reproduce._device_is_cuda({"device": "cpu"}, {"cuda": "12.4"})


# ---------------------------------------------------------------- untrusted run directories


def _crafted_run(root, finished, *, key: str, target: str, args: list[str]):
    """A copy of the ``finished`` run whose saved config is valid except that ``key`` builds ``target(*args)``."""
    from omegaconf import OmegaConf

    from helpers import make_config

    config = OmegaConf.to_container(make_config(root, [*OVERRIDES, "device=cpu"]), resolve=True)
    results = json.loads((finished / "run" / "results.json").read_text())
    node = config
    for part in key.split(".")[:-1]:
        node = node[part]
    node[key.split(".")[-1]] = {"_target_": target, "_args_": args}
    run_dir = root / "crafted"
    (run_dir / ".hydra").mkdir(parents=True)
    for name in ("keep.npy", "eval_mask.npy", "labels.npy", "signals.json", "scores.npz"):
        shutil.copy(finished / "run" / name, run_dir / name)
    OmegaConf.save(OmegaConf.create(config), run_dir / ".hydra" / "config.yaml")
    (run_dir / "results.json").write_text(json.dumps({**results, "config": config}))
    return run_dir


@pytest.mark.parametrize("key, target", [
    ("attack.loss", "pathlib.Path.touch"),            # creates the file when built
    ("model", "pathlib.Path.touch"),
    ("attack.loss", "mia_torch.atomic.os.mkdir"),     # a path that starts in mia_torch but leaves it
    ("attack.loss", "mia_torch.atomic.atomic_write_bytes"),  # a function inside mia_torch, not a class
])
def test_a_crafted_run_directory_runs_no_code(finished_run, tmp_path, capsys, key, target):
    marker = tmp_path / "marker"
    run_dir = _crafted_run(tmp_path, finished_run, key=key, target=target, args=[str(marker)])
    code = _load_script().main([str(run_dir), "--out", str(tmp_path / "again")])
    err = capsys.readouterr().err
    assert code == 2
    assert not marker.exists()
    assert f"{key}._target_: '{target}'" in err and f"--allow-target {target}" in err
    assert not (tmp_path / "again").exists()  # refused before anything was built or written


def test_the_script_exits_2_on_a_crafted_run_directory(finished_run, tmp_path):
    marker = tmp_path / "marker"
    run_dir = _crafted_run(tmp_path, finished_run, key="attack.loss", target="pathlib.Path.touch", args=[str(marker)])
    proc = subprocess.run([sys.executable, *SCRIPT, str(run_dir)], capture_output=True, text=True,
                          env=_env(), timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "attack.loss._target_" in proc.stderr and not marker.exists()
    assert "Traceback" not in proc.stderr and proc.stderr.startswith("mia-reproduce: error: ")


def test_allow_target_lets_a_trusted_target_be_built(finished_run, tmp_path, capsys):
    """With the flag the named callable runs (here: creates the marker); it is no attack, so the rerun fails."""
    marker = tmp_path / "marker"
    run_dir = _crafted_run(tmp_path, finished_run, key="attack.loss", target="pathlib.Path.touch", args=[str(marker)])
    code = _load_script().main([str(run_dir), "--out", str(tmp_path / "again"), "--allow-target", "pathlib.Path.touch"])
    assert code == 2 and marker.exists()
    assert "attack.loss._target_=pathlib.Path.touch builds a builtins.NoneType, which is not an Attack" in \
        capsys.readouterr().err


def test_every_shipped_target_is_accepted_and_foreign_modules_are_not_imported(tmp_path, monkeypatch):
    from mia_torch.settings.trusted import UnsafeConfigError, check_targets, find_targets

    shipped = {value for path in (REPO / "configs").rglob("*.yaml")
               for _, value in find_targets(yaml.safe_load(path.read_text()) or {})}
    assert {"mia_torch.models.MLP", "mia_torch.attacks.LiRA"} <= shipped
    check_targets({"targets": [{"_target_": t} for t in sorted(shipped)]})
    # Deciding never imports a module outside mia_torch (importing one can run code).
    (tmp_path / "planted.py").write_text(f"open({str(tmp_path / 'imported')!r}, 'w').close()\nclass Net: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for target in ("planted.Net", "mia_torch.nope.Net", "mia_torch", "mia_torch.pipeline.np.ndarray", 42,
                   "mia_torch.store.ArtifactStore"):  # a mia_torch class, but no model, attack or callback
        with pytest.raises(UnsafeConfigError, match=r"model\._target_"):
            check_targets({"model": {"_target_": target}})
    assert not (tmp_path / "imported").exists()
    check_targets({"model": {"_target_": "planted.Net"}}, allowed=["planted.Net"])


def test_reproduce_refuses_a_results_json_that_is_not_a_finished_runs(tmp_path, capsys):
    (tmp_path / "results.json").write_text(json.dumps({"stage": "train", "trained_models": [0], "config": {"seed": 0}}))
    assert _load_script().main([str(tmp_path)]) == 2
    assert "is not a finished run's results" in capsys.readouterr().err
