"""Whole runs on one store: corrupt artifacts are rebuilt, concurrent runs train each model once."""

import io
import json
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import TINY, make_config, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.pipeline import prepare, run
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.stages.context import model_key
from mia_torch.stages.train import train_group
from mia_torch.store import ArtifactStore
from test_store import _plant, _Planted


def _artifact_of(store: Path, kind: str, model: int) -> str:
    """The key of model ``model``'s artifact of ``kind`` (found through its meta)."""
    for meta in (store / kind).glob("*/meta.json"):
        if json.loads(meta.read_text())["meta"]["model"] == model:
            return meta.parent.name
    raise AssertionError(f"no {kind} artifact for model {model}")


def test_undecodable_and_incomplete_artifacts_are_listed_moved_aside_and_rebuilt(tmp_path):
    overrides = [*TINY, "attack=[loss]", "bootstrap=0", "sanity_check=false", "save_signals=true"]
    first = run_experiment(tmp_path, overrides, name="first")
    root = tmp_path / "store"
    store = ArtifactStore(root)
    buf = io.BytesIO()
    torch.save({"planted": _Planted(tmp_path / "pwned")}, buf)
    _plant(store, "models", _artifact_of(root, "models", 0), buf.getvalue())  # fails weights_only loading
    (root / "models" / _artifact_of(root, "models", 1) / "meta.json").unlink()  # an incomplete artifact
    buf = io.BytesIO()
    np.save(buf, np.array([None], dtype=object), allow_pickle=True)
    _plant(store, "signals", _artifact_of(root, "signals", 2), buf.getvalue())  # needs pickle
    second = run_experiment(tmp_path, overrides, name="second")
    assert not (tmp_path / "pwned").exists()
    assert second.trained_models == [0, 1]
    assert len(second.corrupt_artifacts) == 3
    assert all(Path(p).is_dir() and ".corrupt-" in p for p in second.corrupt_artifacts)  # kept, not deleted
    np.testing.assert_array_equal(np.load(tmp_path / "first" / "signals.npy"),
                                  np.load(tmp_path / "second" / "signals.npy"))  # rebuilt bitwise (CPU)
    assert second.attacks["loss"].pooled.auc == first.attacks["loss"].pooled.auc


def test_a_run_trains_what_nobody_holds_then_waits_for_and_reuses_the_rest(tmp_path):
    cfg = make_config(tmp_path, [*TINY, "stage=train"])
    other = prepare(cfg, tmp_path / "other")  # another run on the same store, training model 1
    lease = other.store.lease("models", model_key(other, 1))
    lease.acquire()
    failures = []

    def finish_model_1_once_the_rest_is_stored():
        try:
            deadline = time.monotonic() + 120
            while not all(other.store.contains("models", model_key(other, i)) for i in (0, 2, 3)):
                assert time.monotonic() < deadline
                time.sleep(0.02)
            train_group(other, [1])
        except BaseException as err:  # noqa: BLE001 - reported by the test below
            failures.append(err)
        finally:
            lease.release()

    thread = threading.Thread(target=finish_model_1_once_the_rest_is_stored)
    thread.start()
    try:
        results = run(cfg, run_dir=tmp_path / "run")
    finally:
        thread.join(timeout=120)
    assert failures == []
    assert results.trained_models == [0, 2, 3] and results.reused_models == [1]
    assert other.trained == [1]


# One run of the tiny experiment that starts when the file argv[2] appears, into tmp/name; argv[3] marks it done.
RUNNER = textwrap.dedent("""
    import json, sys, time
    from pathlib import Path
    import torch
    from helpers import make_config
    from mia_torch.pipeline import run
    torch.set_num_threads(1)
    tmp, go, out, name = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
    cfg = make_config(tmp, json.loads(sys.argv[5]))
    Path(str(out) + ".ready").touch()
    while not go.exists():
        time.sleep(0.01)
    run(cfg, run_dir=tmp / name)
    out.write_text("finished")
""")


@pytest.mark.slow  # two processes importing torch and running the whole pipeline: ~20 s of CPU
def test_two_runs_on_one_store_train_each_model_once_and_agree(tmp_path):
    tests = Path(__file__).parent
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(tests), str(tests.parent), os.environ.get("PYTHONPATH")]))}
    overrides = [*TINY, "num_models=8", "train.epochs=6", "parallel_models=2", "parallel_strategy=loop",
                 "attack=[loss,lira_offline]", "bootstrap=0", "sanity_check=false"]
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", RUNNER, str(tmp_path), str(go), str(tmp_path / f"{name}.json"),
                               name, json.dumps(overrides)], env=env) for name in ("a", "b")]
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"{name}.json.ready").exists() for name in ("a", "b")):
        assert all(p.poll() is None for p in procs) and time.monotonic() < deadline, "a run failed to start"
        time.sleep(0.05)
    go.touch()  # both start at once
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    a, b = (RunResults.from_dict(read_json(tmp_path / name / "results.json")) for name in ("a", "b"))
    print("trained by a:", a.trained_models, "by b:", b.trained_models)
    assert sorted(a.trained_models + b.trained_models) == list(range(8))  # each model exactly once
    assert sorted(a.trained_models + a.reused_models) == list(range(8))
    assert sorted(b.trained_models + b.reused_models) == list(range(8))
    assert a.corrupt_artifacts == b.corrupt_artifacts == []
    scores_a, scores_b = load_scores(tmp_path / "a" / "scores.npz"), load_scores(tmp_path / "b" / "scores.npz")
    for attack in ("loss", "lira_offline"):
        np.testing.assert_array_equal(scores_a[attack][0], scores_b[attack][0])
    assert not list((tmp_path / "store").glob("*/*.lock")) and not list((tmp_path / "store" / ".staging").iterdir())
