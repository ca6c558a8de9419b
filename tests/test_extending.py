"""Extension points: the attack, model, dataset and defense of docs/extending.md, written from that page into a
folder outside the package, run end to end and replay with ``mia-reproduce``; anything that builds
the wrong kind of object is refused by its config key before any training."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO, TINY, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.report.json_file import read_json
from mia_torch.report.types import RunResults
from mia_torch.reproduce import main as reproduce
from mia_torch.signals.manifest import load_run_signals

#: The Extending page: every ```python / ```yaml block whose first line names its file.
EXTENDING = REPO.joinpath("docs", "extending.md").read_text()
FILES = {match["name"]: match["body"] for match in re.finditer(
    r"```(?:python|yaml)\n# (?P<name>my_[\w/.]+)\n(?P<body>.*?)```", EXTENDING, flags=re.S)}
#: What the page's rerun command allows.
ALLOWED = ["my_data.Digits4", "my_models.TinyNet", "my_defenses.Flooding", "my_attacks.LogitMargin"]
#: The page's commands and the modules they run; where its run goes (relative to the folder it runs in).
ENTRY_POINTS = {"mia-run": "mia_torch.cli", "mia-reproduce": "mia_torch.reproduce"}
RUN_DIR = "outputs/runs/mine"


@pytest.fixture
def my_package(tmp_path, monkeypatch):
    """The page's files, in a folder outside the package that is on the import path."""
    package = tmp_path / "pkg"
    for name, body in FILES.items():
        (package / name).parent.mkdir(parents=True, exist_ok=True)
        (package / name).write_text(body)
    monkeypatch.syspath_prepend(str(package))
    return package


def test_the_extending_page_shows_each_extension_point_with_its_config():
    assert set(FILES) == {"my_attacks.py", "my_models.py", "my_data.py", "my_defenses.py",
                          "my_configs/attack/logit_margin.yaml", "my_configs/model/tiny.yaml",
                          "my_configs/dataset/digits4.yaml", "my_configs/defense/flooding.yaml"}
    for target in ALLOWED:
        assert f"--allow-target {target}" in EXTENDING


def _page_commands() -> list[list[str]]:
    """The page's shell commands (its ```bash block), each as its words."""
    block = EXTENDING.split("```bash\n", 1)[1].split("```", 1)[0]
    return [shlex.split(line) for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def test_the_documented_extensions_run_together_and_replay_with_mia_reproduce(tmp_path, my_package):
    """Dataset, model, defense and attack from outside the package, run by the page's own commands in a folder
    outside the repository (smaller, by overrides appended to its mia-run); the replay finds them by name."""
    (run_cmd, rerun_cmd) = _page_commands()
    assert run_cmd[:2] == ["PYTHONPATH=.", "mia-run"] and rerun_cmd[:3] == ["PYTHONPATH=.", "mia-reproduce", RUN_DIR]
    smaller = ["model.width=32", "defense.level=1.5", "defense.apply_to=target", "dataset.population_size=600",
               "num_models=4", "train.epochs=12", "bootstrap=0", "sanity_check=false", "progress=false"]
    env = {**os.environ, "PYTHONPATH": ".", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env.pop("MIA_STORE_DIR", None)
    for command in ([*run_cmd[1:], *smaller], rerun_cmd[1:]):
        done = subprocess.run([sys.executable, "-m", ENTRY_POINTS[command[0]], *command[1:]], cwd=my_package,
                              env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "MATCH: the rerun reproduces" in done.stdout
    run_dir = my_package / RUN_DIR
    results = RunResults.from_dict(read_json(run_dir / "results.json"))
    assert results.dataset == {"name": "digits4", "population": 600, "test": 297, "num_classes": 10}
    assert load_run_signals(run_dir).shape == (4, 600, 2, 10)
    assert set(results.attacks) == {"loss", "lira_online", "logit_margin"}
    assert results.config["defense"]["_target_"] == "my_defenses.Flooding"
    # The flooded target's training loss stays at the flood level; its references (apply_to=target), trained
    # by the same recipe without it, go below.
    target, references = results.models[0], results.models[1:]
    assert target["train_loss"] > 0.9 * 1.5 > max(m["train_loss"] for m in references)


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
    logits = torch.from_numpy(load_run_signals(run_dir, models=[0])[0]).double()  # [N, Q, C]
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
