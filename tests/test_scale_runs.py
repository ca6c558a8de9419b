"""A study's run directory points into the store (``signals.json``), signals are memory-mapped once
verified, every model can be a target (``target_ids=all``), and the attack stage shards over
jobs (``stage=attack``, then ``stage=report``) with the joblib launcher into the unsharded results.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from helpers import REPO, TINY, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.signals.manifest import load_run_signals
from mia_torch.store import ArtifactStore, array_to_bytes

OVERRIDES = [*TINY, "target_ids=all", "attack=[loss,lira_online,rmia]", "sanity_check=false"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """One tiny study of every model as a target, with ``save_signals=true``: (root, results)."""
    root = tmp_path_factory.mktemp("study")
    results = run_experiment(root, [*OVERRIDES, "save_signals=true"], name="whole")
    return root, results


def test_every_model_is_a_target_with_knobs_from_the_other_half(study):
    root, results = study
    assert results.target_ids == [0, 1, 2, 3] and results.config["target_ids"] == "all"
    rows = results.attacks["rmia"].per_target
    assert [row.target for row in rows] == [0, 1, 2, 3]
    # pairs (0, 1) and (2, 3) sit in different halves: each pair's knobs come from the other pair
    assert rows[0].fitted_params == rows[1].fitted_params != rows[2].fitted_params
    assert (root / "whole" / "records_target3.csv").is_file()


def test_the_run_directory_points_into_the_store_and_materialises_any_slice(study, tmp_path):
    root, _ = study
    run = tmp_path / "run"
    shutil.copytree(root / "whole", run)
    manifest = json.loads((run / "signals.json").read_text())
    assert manifest["store_dir"] == str((root / "store").resolve()) and len(manifest["signals"]) == 4
    dense = np.load(run / "signals.npy")  # save_signals=true: the served outputs, written model by model
    (run / "signals.npy").unlink()
    np.testing.assert_array_equal(load_run_signals(run), dense)  # the same, read from the store
    rows = [5, 7, 9]
    np.testing.assert_array_equal(load_run_signals(run, models=[3, 1], examples=rows), dense[[3, 1]][:, rows])
    manifest["store_dir"] = str(tmp_path / "gone")
    (run / "signals.json").write_text(json.dumps(manifest))
    with pytest.raises(FileNotFoundError, match="gone, which does not exist"):
        load_run_signals(run)


def test_a_corrupt_array_is_moved_aside_before_it_is_mapped(tmp_path):
    store = ArtifactStore(tmp_path)
    array = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    store.save("signals", "good", array_to_bytes(array))
    mapped = store.open_array("signals", "good")
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, array)
    payload = store.payload_path("signals", "good")
    payload.write_bytes(payload.read_bytes()[:-8])  # truncated after it was published
    assert store.open_array("signals", "good") is None and len(store.corrupt) == 1
    store.save("signals", "wrong", array_to_bytes(array))

    def five_rows(a: np.ndarray) -> None:
        if a.shape[0] != 5:
            raise ValueError(f"{a.shape[0]} rows")

    assert store.open_array("signals", "wrong", check=five_rows) is None
    assert store.open_array("signals", "absent") is None and len(store.corrupt) == 2


def test_each_signal_artifact_is_checksummed_once_per_process(tmp_path, monkeypatch):
    """Logits a run collects are verified once, as they are stored, not again on their first read; a later run
    (a new source) verifies each stored artifact once, on its first read."""
    passes: Counter[str] = Counter()
    verified = ArtifactStore._verified

    def counted(self, kind, key, **kwargs):
        if kind == "signals" and self.contains(kind, key):  # a checksum pass over a stored payload
            passes[key] += 1
        return verified(self, kind, key, **kwargs)

    monkeypatch.setattr(ArtifactStore, "_verified", counted)
    overrides = [*TINY, "attack=[loss]", "bootstrap=0", "sanity_check=false"]
    for name in ("collects", "reuses"):
        passes.clear()
        run_experiment(tmp_path, overrides, name=name)
        assert sorted(passes.values()) == [1, 1, 1, 1], (name, passes)  # num_models = 4 artifacts


def _mia_run(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "mia_torch.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    return proc


def test_sharded_attack_stage_merges_into_the_unsharded_results(study, tmp_path):
    root, whole = study
    store = root / "store"
    with pytest.raises(FileNotFoundError, match=r"shard\(s\) 0,1 of num_shards=2 .* stage=attack shard=0,1"):
        run_experiment(root, [*OVERRIDES, "stage=report", "num_shards=2"], name="early")
    proc = _mia_run(["-m", *OVERRIDES, "stage=attack", "shard=0,1", "num_shards=2", "hydra/launcher=parallel",
                     f"store_dir={store}", f"hydra.sweep.dir={tmp_path / 'sweep'}"], cwd=tmp_path)
    assert "Joblib.Parallel(" in proc.stdout + proc.stderr  # both shards went through the joblib launcher
    assert "shard 1/2: scored targets [1, 3]" in (tmp_path / "sweep" / "1" / "mia-run.log").read_text()
    assert "stage=attack (scores its targets" in (tmp_path / "sweep" / "sweep_summary.md").read_text()
    merged = run_experiment(root, [*OVERRIDES, "stage=report", "num_shards=2"], name="merged")
    assert merged.trained_models == []
    a, b = load_scores(root / "whole" / "scores.npz"), load_scores(root / "merged" / "scores.npz")
    assert a.keys() == b.keys()
    for name in a:
        for target in a[name]:
            np.testing.assert_array_equal(a[name][target], b[name][target], err_msg=f"{name}/{target}")
    written = {name: json.loads((root / name / "results.json").read_text()) for name in ("whole", "merged")}
    for section in ("attacks", "targets"):  # as written (a NaN, e.g. an undefined precision, is null there)
        assert written["merged"][section] == written["whole"][section], section
