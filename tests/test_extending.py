"""Extension points: an attack from outside the package runs end to end; anything that is not
an Attack is refused by its config key before any training."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from helpers import TINY, run_experiment
from mia_torch.evaluation import load_scores
from mia_torch.signals.manifest import load_run_signals

# The README's "Extending" example, verbatim.
MY_ATTACKS = textwrap.dedent('''
    """An attack outside the package: the margin between the true-class logit and the runner-up."""
    import torch

    from mia_torch.attacks.base import Attack, check_target


    class LogitMargin(Attack):
        """Score = true-class logit minus the largest other logit, averaged over queries (higher = member)."""

        def __init__(self, scale: float = 1.0):
            self.scale = scale

        def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
            logits, labels = check_target(logits, labels)  # [N, Q, C], [N]
            index = labels[:, None, None].expand(-1, logits.shape[1], 1)
            true = logits.gather(-1, index).squeeze(-1)
            runner_up = logits.scatter(-1, index, float("-inf")).amax(-1)
            return (self.scale * (true - runner_up)).mean(1).float()
''')


@pytest.fixture
def my_package(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "my_attacks.py").write_text(MY_ATTACKS)
    monkeypatch.syspath_prepend(str(package))
    return package


def test_an_out_of_tree_attack_runs_end_to_end(tmp_path, my_package):
    results = run_experiment(tmp_path, [*TINY, "attack=[loss]", "+attack.mine._target_=my_attacks.LogitMargin",
                                        "+attack.mine.scale=2.0", "bootstrap=0"])
    assert set(results["attacks"]) == {"loss", "mine"}
    run_dir = tmp_path / "run"
    # Its scores are the margin, computed here independently from the saved signals.
    logits = torch.from_numpy(load_run_signals(run_dir, models=[0])[0]).double()  # [N, Q, C]
    labels = torch.from_numpy(np.load(run_dir / "labels.npy"))
    true = logits[torch.arange(len(labels)), :, labels]
    others = logits.clone()
    others[torch.arange(len(labels)), :, labels] = -torch.inf
    expected = (2.0 * (true - others.max(-1).values)).mean(1).numpy()
    np.testing.assert_allclose(load_scores(run_dir / "scores.npz")["mine"][0], expected, rtol=1e-5, atol=1e-5)
    assert set(results["attacks"]["mine"]) == set(results["attacks"]["loss"])  # reported like a built-in attack
    assert "mine" in (run_dir / "records_target0.csv").read_text().splitlines()[0]


@pytest.mark.parametrize("overrides, message", [
    (["+attack.bad._target_=collections.OrderedDict"], r"attack\.bad\._target_=collections\.OrderedDict builds a "
                                                       r"collections\.OrderedDict, which is not an Attack"),
    (["+attack.bad.scale=1"], r"attack\.bad has no _target_"),
    (["+attack.bad._target_=my_attacks.Missing"], r"attack\.bad cannot be built"),
])
def test_anything_but_an_attack_is_refused_before_training(tmp_path, my_package, overrides, message):
    with pytest.raises(ValueError, match=message):
        run_experiment(tmp_path, [*TINY, "attack=[loss]", *overrides])
    assert not (tmp_path / "store" / "models").exists()
