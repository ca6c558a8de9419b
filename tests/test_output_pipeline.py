"""Output defenses and label-only attacks wired through the pipeline (small end-to-end runs)."""
import numpy as np
import pytest

from helpers import TINY, make_config, run_experiment
from mia_torch.attacks.label_only import RECOMMENDED_QUERIES
from mia_torch.signals.output import ServedOutput, serve_array
from mia_torch.signals.manifest import load_run_signals

QUERIES = f"queries=[{','.join(RECOMMENDED_QUERIES)}]"


def test_score_attack_on_label_output_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match=r"lira_online.*output=label"):
        run_experiment(tmp_path, [*TINY, "output=label", "attack=[gap,lira_online]"])
    assert not (tmp_path / "store").exists() or not any((tmp_path / "store").rglob("*.*"))


@pytest.mark.parametrize(
    "overrides, key",
    [
        (["output=topk", "output.k=0"], "output.k"),
        (["output=round", "output.decimals=-2"], "output.decimals"),
        (["output=temperature", "output.t=0"], "output.t"),
        (["output=topk", "output.k=10"], "output.k"),  # serves all 10 classes
    ],
)
def test_invalid_output_values_fail_before_training_naming_the_key(tmp_path, overrides, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        run_experiment(tmp_path, [*TINY, *overrides, "attack=[loss]"])
    assert not (tmp_path / "store" / "models").exists()


def test_changing_the_output_reuses_models_and_signals_and_saves_what_attacks_saw(tmp_path):
    first = run_experiment(tmp_path, [*TINY, "attack=[loss]", "sanity_check=false"], name="logits")
    second = run_experiment(tmp_path, [*TINY, "attack=[loss]", "output=topk", "output.k=1",
                                       "sanity_check=false"], name="top1")
    assert first.trained_models == [0, 1, 2, 3] and second.trained_models == []
    raw = load_run_signals(tmp_path / "logits")
    served = load_run_signals(tmp_path / "top1")
    np.testing.assert_array_equal(served, serve_array(raw, ServedOutput("topk", k=1)))
    assert not np.array_equal(served, raw)
    assert second.config["output"] == {"name": "topk", "k": 1}


def test_label_output_run_with_label_only_attacks(tmp_path):
    # An overfit target: 30% random labels, memorised. The synthetic images are random
    # prototypes, so shifted views carry no signal; the default queries (identity, flip) do.
    results = run_experiment(tmp_path, [*TINY, "dataset.label_noise=0.3", "train.epochs=30", "num_models=8",
                                        "target_ids=[0,1]", "output=label", "attack=[gap,label_only]",
                                        "bootstrap=50"])
    signals = load_run_signals(tmp_path / "run")
    assert signals.shape == (8, 400, 2, 10)
    # What the attacks saw is labels only: each row is one served class above one shared floor.
    ordered = np.sort(signals, axis=-1)
    assert (ordered[..., :-1] == ordered[..., :1]).all() and (ordered[..., -1] > ordered[..., 0]).all()
    gap, label_only = results.attacks["gap"].pooled, results.attacks["label_only"].pooled
    assert label_only.tpr[0.01] > max(0.05, gap.tpr[0.01])
    assert label_only.auc > 0.6 and gap.auc > 0.6
    for name in ("gap", "label_only"):
        assert results.attacks[name].sanity.chance_in_ci, name


def test_label_only_experiment_composes(tmp_path):
    cfg = make_config(tmp_path, ["experiment=label_only"])
    assert cfg.output.name == "label"
    assert set(cfg.attack) == {"gap", "label_only"}
    assert list(cfg.queries) == list(RECOMMENDED_QUERIES)
