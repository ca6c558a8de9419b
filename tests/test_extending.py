"""Extension points: the README's attack, model, dataset and defense, written from the README into a
folder outside the package, run end to end and replay with ``mia-reproduce``; anything that builds
the wrong kind of object is refused by its config key before any training."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, TINY, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.reproduce import main as reproduce

#: The README's Extending section: every ```python / ```yaml block whose first line names its file.
EXTENDING = REPO.joinpath("README.md").read_text().split("## Extending\n", 1)[1].split("\n## ", 1)[0]
FILES = {match["name"]: match["body"] for match in re.finditer(
    r"```(?:python|yaml)\n# (?P<name>my_[\w/.]+)\n(?P<body>.*?)```", EXTENDING, flags=re.S)}
#: What the README's rerun command allows.
ALLOWED = ["my_data.Digits4", "my_models.TinyNet", "my_defenses.Flooding", "my_attacks.LogitMargin"]


@pytest.fixture
def my_package(tmp_path, monkeypatch):
    """The README's files, in a folder outside the package that is on the import path."""
    package = tmp_path / "pkg"
    for name, body in FILES.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    monkeypatch.syspath_prepend(str(package))
    return package


def test_the_readme_shows_each_extension_point_with_its_config():
    assert set(FILES) == {"my_attacks.py", "my_models.py", "my_data.py", "my_defenses.py",
                          "my_configs/attack/logit_margin.yaml", "my_configs/model/tiny.yaml",
                          "my_configs/dataset/digits4.yaml", "my_configs/defense/flooding.yaml"}
    for target in ALLOWED:
        assert f"--allow-target {target}" in EXTENDING


def test_the_readme_extensions_run_together_and_replay_with_mia_reproduce(tmp_path, my_package):
    """Dataset, model, defense and attack from outside the package; the rerun in a fresh process finds them."""
    overrides = [f"hydra.searchpath=[file://{my_package / 'my_configs'}]", "dataset=digits4", "model=tiny",
                 "model.width=32", "defense=flooding", "defense.level=1.5", "defense.apply_to=target",
                 "attack=[loss,logit_margin]",
                 "dataset.population_size=600", "num_models=4", "train.epochs=12", "bootstrap=0",
                 "sanity_check=false", "progress=false"]
    results = run_experiment(tmp_path, overrides)
    assert results.dataset == {"name": "digits4", "population": 600, "test": 297, "num_classes": 10}
    assert np.load(tmp_path / "run" / "signals.npy").shape == (4, 600, 2, 10)
    assert set(results.attacks) == {"loss", "logit_margin"}
    assert results.config["defense"]["_target_"] == "my_defenses.Flooding"
    # The flooded target's training loss stays at the flood level; its references (apply_to=target), trained
    # by the same recipe without it, go below.
    target, references = results.models[0], results.models[1:]
    assert target["train_loss"] > 0.9 * 1.5 > max(m["train_loss"] for m in references)

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(my_package), str(REPO), os.environ.get("PYTHONPATH", "")])}
    rerun = subprocess.run([sys.executable, "-m", "mia_torch.reproduce", str(tmp_path / "run"), "--out",
                            str(tmp_path / "again"), *(arg for t in ALLOWED for arg in ("--allow-target", t))],
                           env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert "MATCH: the rerun reproduces" in rerun.stdout


def test_reproduce_refuses_the_extensions_unless_each_is_allowed(tmp_path, my_package, capsys):
    """Without ``--allow-target`` a run directory's own code is not built (exit 2, each key named)."""
    from mia_torch.report.json_file import write_json

    run_dir = tmp_path / "run"
    config = {"dataset": {"_target_": "my_data.Digits4", "name": "digits4"},
              "defense": {"_target_": "my_defenses.Flooding", "name": "flooding"}}
    write_json(run_dir / "results.json", {"config": config})
    assert reproduce([str(run_dir), "--out", str(tmp_path / "again"), "--allow-target", "my_data.Digits4"]) == 2
    error = capsys.readouterr().err
    assert "defense._target_: 'my_defenses.Flooding'" in error and "dataset._target_" not in error
    assert not (tmp_path / "again").exists()


def test_an_out_of_tree_attack_runs_end_to_end(tmp_path, my_package):
    results = run_experiment(tmp_path, [*TINY, "attack=[loss]", "+attack.mine._target_=my_attacks.LogitMargin",
                                        "+attack.mine.scale=2.0", "bootstrap=0"])
    assert set(results.attacks) == {"loss", "mine"}
    run_dir = tmp_path / "run"
    # Its scores are the margin, computed here independently from the saved signals.
    logits = torch.from_numpy(np.load(run_dir / "signals.npy")[0]).double()  # [N, Q, C]
    labels = torch.from_numpy(np.load(run_dir / "labels.npy"))
    true = logits[torch.arange(len(labels)), :, labels]
    others = logits.clone()
    others[torch.arange(len(labels)), :, labels] = -torch.inf
    expected = (2.0 * (true - others.max(-1).values)).mean(1).numpy()
    np.testing.assert_allclose(load_scores(run_dir / "scores.npz")["mine"][0], expected, rtol=1e-5, atol=1e-5)
    mine, loss = results.attacks["mine"], results.attacks["loss"]
    assert mine.sanity is not None and len(mine.slices) == len(loss.slices)  # reported like a built-in attack
    assert "mine" in (run_dir / "records_target0.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("overrides, message", [
    (["+attack.bad._target_=collections.OrderedDict"], r"attack\.bad\._target_=collections\.OrderedDict builds a "
                                                       r"collections\.OrderedDict, which is not an Attack"),
    (["+attack.bad.scale=1"], r"attack\.bad has no _target_"),
    (["+attack.bad._target_=my_attacks.Missing"], r"attack\.bad cannot be built"),
    (["dataset._target_=my_models.TinyNet"], r"dataset cannot be built"),
    (["defense._target_=my_data.Digits4"], r"defense\._target_=my_data\.Digits4 builds a my_data\.Digits4, "
                                           r"which is not a Defense"),
])
def test_anything_but_the_right_kind_is_refused_before_training(tmp_path, my_package, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(tmp_path, [*TINY, "attack=[loss]", *overrides])
    assert not (tmp_path / "store" / "models").exists()
