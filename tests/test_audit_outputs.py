"""Audits from a model's outputs alone (audit.outputs): conversion to log-odds, refusals, and the same scores as
from its checkpoint when the stand-in references share its architecture."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from helpers import TINY, run_experiment
from mia_torch.audit.outputs import SUM_TOLERANCE, read_outputs, to_logits
from mia_torch.evaluation import load_scores
from mia_torch.report.table import PROXY_CAVEAT
from mia_torch.report.types import RunResults
from mia_torch.signals.stats import logit_scaled_confidence

NO_DATA = [o for o in TINY if not o.startswith("dataset")]
FILE = Path("outputs.npy")
N, F, C = 240, 8, 3


def _phi(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return logit_scaled_confidence(torch.from_numpy(logits), torch.from_numpy(labels)).numpy()


# --------------------------------------------------------------------------- conversion


def test_logits_probabilities_and_log_probabilities_give_the_same_log_odds():
    rng = np.random.default_rng(0)
    z = rng.normal(scale=4, size=(50, C))
    z[0] = [30.0, 0.0, 0.0]  # 1 - p_y = 2e-13: beyond float32, still resolved by the small entries in float64
    labels = rng.integers(0, C, 50)
    labels[0] = 0
    p = np.exp(z - np.logaddexp.reduce(z, axis=-1, keepdims=True))
    expected = _phi(z, labels)
    for array, kind in ((z, "logits"), (p, "probabilities"), (np.log(p), "log_probabilities")):
        logits, saturated = to_logits(array, kind, file=FILE)
        assert saturated == 0
        np.testing.assert_allclose(_phi(logits, labels), expected, rtol=1e-9, atol=1e-9, err_msg=kind)
    assert _phi(to_logits(p, "probabilities", file=FILE)[0], labels)[0] == pytest.approx(30 - np.log(2), rel=1e-9)


def test_a_probability_of_exactly_one_gets_the_file_resolution_and_is_counted():
    p = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [1.0, 1e-300, 0.0], [0.2, 0.3, 0.5]])
    for dtype, resolution in ((np.float64, 2.0**-53), (np.float32, 2.0**-24)):
        logits, saturated = to_logits(p.astype(dtype), "probabilities", file=FILE)
        assert np.isfinite(logits).all() and saturated == 1 + (dtype == np.float32)  # float32 rounds 1e-300 to 0
        assert logits[0, 1] == pytest.approx(np.log(resolution / 2))  # two zeros share the unserved mass
        assert _phi(logits, np.zeros(4, dtype=np.int64))[0] == pytest.approx(np.log(1 / resolution))
        for row, served in ((1, [0, 1]), (2, [0, 1]), (3, [0, 1, 2])):  # a zero stays below every nonzero entry
            zero = [c for c in range(3) if c not in served and p.astype(dtype)[row, c] == 0]
            nonzero = [c for c in range(3) if p.astype(dtype)[row, c] > 0]
            assert all(logits[row, z] < logits[row, s] for z in zero for s in nonzero)


def test_log_probabilities_with_minus_infinity_are_probabilities_of_zero():
    p = np.array([[0.9, 0.1, 0.0], [1.0, 0.0, 0.0]])
    with np.errstate(divide="ignore"):
        from_logs, saturated = to_logits(np.log(p), "log_probabilities", file=FILE)
    np.testing.assert_allclose(from_logs, to_logits(p, "probabilities", file=FILE)[0])
    assert saturated == 1


@pytest.mark.parametrize("array, kind, needle", [
    (np.array([[0.5, 0.4, 0.05]]), "probabilities", "do not sum to 1"),
    (np.array([[2.0, -1.0, 0.0]]), "probabilities", "outside [0, 1]"),
    (np.array([[np.nan, 0.5, 0.5]]), "probabilities", "NaN in 1 row(s), first at row 0"),
    (np.array([[1.0, 2.0, 3.0]]), "log_probabilities", "positive log-probabilities"),
    (np.array([[-0.1, -0.2, -0.3]]), "log_probabilities", "do not sum to 1"),
    (np.array([[np.inf, 0.0, 1.0]]), "logits", "infinite logits"),
])
def test_bad_outputs_are_refused_naming_the_file(array, kind, needle):
    with pytest.raises(ValueError, match="outputs.npy \\(audit.outputs\\)") as info:
        to_logits(array, kind, file=FILE)
    assert needle in str(info.value)


def test_a_row_off_by_less_than_the_tolerance_is_renormalised():
    logits, _ = to_logits(np.array([[0.6, 0.4 - SUM_TOLERANCE / 2]]), "probabilities", file=FILE)
    assert np.exp(logits).sum() == pytest.approx(1.0, abs=1e-15)


@pytest.mark.parametrize("array, queries, needle", [
    (np.full((9, C), 1 / C), ("identity",), "has 9 rows, but the population has 10 records"),
    (np.full((10, 2), 0.5), ("identity",), "has 2 classes per row, but the dataset has 3"),
    (np.full((10, 2, C), 1 / C), ("identity",), "holds 2 output(s) per record, but queries=['identity']"),
    (np.full((10, C), 1 / C), ("identity", "flip"), "set queries=[identity] for [N, C]"),
    (np.full((10,), 0.5), ("identity",), "has shape (10,)"),
    (np.array([["a"] * C] * 10), ("identity",), "outputs must be numbers"),
])
def test_outputs_of_the_wrong_shape_are_refused(tmp_path, array, queries, needle):
    np.save(tmp_path / "out.npy", array)
    with pytest.raises(ValueError) as info:
        read_outputs(tmp_path / "out.npy", kind="probabilities", num_records=10, num_classes=C, queries=queries)
    assert str(tmp_path / "out.npy") in str(info.value) and needle in str(info.value)


def test_pickled_and_npz_outputs_are_refused(tmp_path):
    np.save(tmp_path / "objects.npy", np.array([{"p": 1}] * 10, dtype=object), allow_pickle=True)
    np.savez(tmp_path / "archive.npz", outputs=np.full((10, C), 1 / C))
    for name, needle in (("objects.npy", "without unpickling"), ("archive.npz", "np.save(path, outputs)")):
        with pytest.raises(ValueError, match=re.escape(needle)):
            read_outputs(tmp_path / name, kind="probabilities", num_records=10, num_classes=C, queries=("identity",))


# --------------------------------------------------------------------------- end to end


class BankNet(nn.Module):
    """The user's network, trained outside mia_torch; its layout is mia_torch's model=mlp with one hidden layer."""

    def __init__(self, hidden: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(F, hidden), nn.ReLU(), nn.Linear(hidden, C))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


@pytest.fixture(scope="module")
def trained_outside(tmp_path_factory) -> Path:
    """A feature matrix, the members, an overfit network's state dict and its outputs in every kind."""
    root = tmp_path_factory.mktemp("outside")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 60, F)).astype(np.float32)
    y = (x @ rng.normal(size=(F, C)) + 1.5 * rng.normal(size=(N + 60, C))).argmax(1)
    np.savez(root / "features.npz", x_train=x[:N], y_train=y[:N], x_test=x[N:], y_test=y[N:])
    members = np.arange(0, N, 2)
    np.save(root / "members.npy", members)
    torch.manual_seed(0)
    net = BankNet()
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(200):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(torch.from_numpy(x[members])), torch.from_numpy(y[members])).backward()
        optimizer.step()
    torch.save(net.state_dict(), root / "net.pt")
    with torch.no_grad():
        logits = net(torch.from_numpy(x[:N]))
    np.save(root / "logits.npy", logits.numpy())
    np.save(root / "log_probabilities.npy", torch.log_softmax(logits.double(), -1).numpy())
    np.save(root / "probabilities.npy", torch.softmax(logits.double(), -1).numpy())
    return root


def _audit(root: Path, name: str, source: list[str]) -> RunResults:
    return run_experiment(root, [*NO_DATA, "dataset=npz_features", f"dataset.path={root / 'features.npz'}",
                                 "model.hidden_sizes=[32]", "train=adam", "train.epochs=6",
                                 "attack=[loss,lira_offline,rmia]", *source], name=name)


def test_outputs_give_the_scores_of_the_checkpoint_with_references_of_its_architecture(trained_outside, capsys):
    """Scores do not depend on audit.members: only the logits audit writes the full report (the others stay cheap)."""
    root = trained_outside
    from_checkpoint = _audit(root, "checkpoint", [f"audit.checkpoint={root / 'net.pt'}"])
    capsys.readouterr()
    known = [f"audit.members={root / 'members.npy'}"]
    runs = {kind: _audit(root, kind, [f"audit.outputs={root / kind}.npy", f"audit.output_kind={kind}",
                                      *(known if kind == "logits" else [])])
            for kind in ("logits", "log_probabilities", "probabilities")}
    printed = capsys.readouterr().out
    expected = load_scores(root / "checkpoint" / "scores.npz")
    for kind, results in runs.items():
        assert results.trained_models == []  # the same stand-in references, from the store
        scores = load_scores(root / kind / "scores.npz")
        for attack in ("loss", "lira_offline", "rmia"):
            if kind == "logits":  # the very numbers the checkpoint's query gives
                np.testing.assert_array_equal(scores[attack][0], expected[attack][0], err_msg=attack)
            else:
                np.testing.assert_allclose(scores[attack][0], expected[attack][0], rtol=1e-4, atol=1e-6, err_msg=kind)
        target = results.targets[0]
        assert target.proxy_references is True and target.outputs == str(root / f"{kind}.npy")
        assert results.audit.output_kind == kind and results.audit.saturated_rows == 0
        assert results.audit.checkpoint is None and results.audit.outputs == str(root / f"{kind}.npy")
    assert from_checkpoint.targets[0].proxy_references is False and from_checkpoint.audit.outputs is None
    full = runs["logits"]
    assert full.attacks["loss"].pooled.auc > 0.5 and full.targets[0].train_acc == 1.0
    assert printed.count(PROXY_CAVEAT) == 3 and printed.count("known membership:") == 1


@pytest.mark.parametrize("array, kind, needle", [
    (lambda p: p[:-1], "probabilities", "has 239 rows, but the population has 240 records"),
    (lambda p: p[:, :2], "probabilities", "has 2 classes per row, but the dataset has 3"),
    (lambda p: p * 2, "probabilities", "outside [0, 1]"),
    (lambda p: p, None, "audit.output_kind=None is invalid"),
])
def test_bad_outputs_stop_the_audit_before_training(trained_outside, tmp_path, array, kind, needle):
    np.save(tmp_path / "bad.npy", array(np.load(trained_outside / "probabilities.npy")))
    stated = [] if kind is None else [f"audit.output_kind={kind}"]
    with pytest.raises(ValueError, match="audit.output") as info:
        run_experiment(tmp_path, [*NO_DATA, "dataset=npz_features", f"dataset.path={trained_outside / 'features.npz'}",
                                  f"audit.outputs={tmp_path / 'bad.npy'}", *stated])
    assert needle in str(info.value)
    assert not (tmp_path / "store" / "models").exists()


def test_a_checkpoint_and_outputs_together_are_refused(trained_outside, tmp_path):
    with pytest.raises(ValueError, match="audit.checkpoint and audit.outputs"):
        run_experiment(tmp_path, [*TINY, f"audit.checkpoint={trained_outside / 'net.pt'}",
                                  f"audit.outputs={trained_outside / 'logits.npy'}", "audit.output_kind=logits"])
