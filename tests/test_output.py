"""Output defenses (mia_torch.signals.output): each transform against its definition, and
every attack's statistics finite on every served output."""
import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mia_torch.attacks import RMIA, GapAttack, LabelOnlyAttack, LiRA, PopulationAttack, ShokriAttack, ThresholdAttack
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.signals.output import ServedOutput, serve, serve_array
from mia_torch.signals.stats import STATISTICS

OUTPUTS = [
    {"name": "logits"},
    {"name": "temperature", "t": 3.0},
    {"name": "topk", "k": 1},
    {"name": "topk", "k": 3},
    {"name": "round", "decimals": 1},
    {"name": "round", "decimals": 3},
    {"name": "label"},
]


def out(**values) -> ServedOutput:
    return ServedOutput.from_config(values)


def random_logits(*shape: int, scale: float = 4.0, seed: int = 0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def probabilities(served: torch.Tensor) -> torch.Tensor:
    return torch.softmax(served.double(), dim=-1)


def test_logits_are_served_unchanged():
    z = random_logits(5, 2, 10).half()
    assert serve(z, out(name="logits")) is z
    array = z.numpy()
    assert serve_array(array, out(name="logits")) is array


def test_temperature_equals_softmax_of_scaled_logits():
    z = random_logits(50, 3, 10)
    for t in (0.5, 1.0, 4.0):
        served = serve(z, out(name="temperature", t=t))
        assert served.dtype == torch.float32
        torch.testing.assert_close(probabilities(served), torch.softmax(z.double() / t, -1), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 5])
def test_topk_keeps_the_top_k_probabilities_and_zeroes_the_rest(k):
    z = random_logits(200, 2, 10, seed=k)
    p = torch.softmax(z.double(), -1)
    served = serve(z, out(name="topk", k=k))
    top = p.topk(k, dim=-1)
    # The k largest probabilities are served exactly (as log-probabilities) ...
    torch.testing.assert_close(served.gather(-1, top.indices).double().exp(), top.values, atol=1e-6, rtol=1e-5)
    # ... every other class ties at one value, strictly below every served one ...
    mask = torch.zeros_like(p, dtype=torch.bool).scatter(-1, top.indices, True)
    rest = torch.where(mask, torch.full_like(served, math.nan), served)
    assert torch.equal(rest.nan_to_num(-math.inf).amax(-1), rest.nan_to_num(math.inf).amin(-1))
    assert (rest.nan_to_num(-math.inf).amax(-1) < served.gather(-1, top.indices).amin(-1)).all()
    # ... and carries the unserved mass 1 - sum(top-k), so the served probabilities sum to 1.
    unserved_mass = 1.0 - top.values.sum(-1)
    torch.testing.assert_close(torch.where(mask, 0.0, served.double().exp()).sum(-1), unserved_mass,
                               atol=1e-6, rtol=1e-4)
    torch.testing.assert_close(probabilities(served).gather(-1, top.indices), top.values, atol=1e-6, rtol=1e-4)


def test_top1_of_a_confident_model_keeps_the_confidence_and_the_loss_of_correct_predictions():
    z = random_logits(300, 1, 10, scale=8.0, seed=3)
    labels = z.argmax(-1)  # every prediction correct
    served = serve(z, out(name="topk", k=1))
    loss_served = STATISTICS["loss"].function(served, labels)
    loss_true = STATISTICS["loss"].function(z, labels)
    assert loss_true.min() < 1e-4 < loss_true.max()  # confident and less confident predictions
    torch.testing.assert_close(loss_served, loss_true, rtol=1e-3, atol=1e-6)  # float32 statistics


@pytest.mark.parametrize("decimals", [1, 2, 3])
def test_round_serves_rounded_probabilities(decimals):
    z = random_logits(300, 2, 10, seed=decimals)
    p = torch.softmax(z.double(), -1)
    served = serve(z, out(name="round", decimals=decimals))
    expected = np.round(p.numpy(), decimals)
    positive = expected > 0
    np.testing.assert_allclose(served.double().exp().numpy()[positive], expected[positive], rtol=1e-6)
    step = 10.0**-decimals
    zeroed = served.double().exp().numpy()[~positive]
    assert zeroed.size > 0
    assert (zeroed < step).all()  # strictly below the smallest served value
    # All zeroed entries of a row together add less than one step of probability mass.
    assert np.where(positive, 0.0, served.double().exp().numpy()).sum(-1).max() < step


def test_label_serves_only_the_predicted_class():
    z = random_logits(300, 3, 10, seed=5)
    served = serve(z, out(name="label"))
    pred = z.argmax(-1)
    assert torch.equal(served.argmax(-1), pred)
    assert torch.equal(served, serve(z * 3.0 + 1.0, out(name="label")))  # only the arg-max matters
    assert (probabilities(served).gather(-1, pred[..., None]) > 1 - 1e-12).all()
    others = torch.ones_like(served, dtype=torch.bool).scatter(-1, pred[..., None], False)
    assert served[others].unique().numel() == 1


@pytest.mark.parametrize("config", OUTPUTS, ids=lambda c: c["name"] + str(c.get("k", c.get("decimals", ""))))
def test_every_statistic_is_finite_and_the_prediction_kept(config):
    z = random_logits(200, 2, 10, seed=7)
    z[0, 0] = torch.tensor([1e4, -1e4, 0, 5, 3, 2, 1, 0, -1, 9e3])  # extreme logits
    z[1, 0] = 0.0  # a uniform row
    served = serve(z.half() if config["name"] == "round" else z, out(**config))
    assert torch.isfinite(served).all()
    labels = torch.randint(0, 10, (200, 1), generator=torch.Generator().manual_seed(0))
    for name, statistic in STATISTICS.items():
        assert torch.isfinite(statistic.function(served, labels)).all(), name
    if config["name"] in ("topk", "label"):  # the served top class is the model's prediction
        assert torch.equal(served[2:].argmax(-1), z[2:].argmax(-1))


def served_reference_signals(config: dict, r: int = 6, n: int = 300, q: int = 2, c: int = 10):
    """Reference signals and a target of a confident model with a membership shift, under ``config``."""
    g = torch.Generator().manual_seed(21)
    keep = torch.rand(r, n, generator=g) < 0.5
    labels = torch.randint(0, c, (n,), generator=g)
    member = torch.rand(n, generator=g) < 0.5

    def logits(in_train: torch.Tensor) -> torch.Tensor:
        z = 2.0 * torch.randn(*in_train.shape, q, c, generator=g)
        boost = 3.0 + 6.0 * in_train.float() + torch.randn(in_train.shape, generator=g)
        return z + boost[..., None, None] * torch.nn.functional.one_hot(labels, c)[:, None, :]

    o = out(**config)
    ref = ReferenceSignals(serve(logits(keep), o), keep, labels)
    return ref, serve(logits(member), o), labels, member


def all_attacks() -> list:
    # Score attacks are refused on output=label by the pipeline, but stay finite on it too.
    return [
        GapAttack(), LabelOnlyAttack(), LabelOnlyAttack(online=False),
        ThresholdAttack("loss"), ThresholdAttack("confidence"), ThresholdAttack("entropy"),
        ThresholdAttack("modified_entropy"), PopulationAttack(), ShokriAttack(epochs=30),
        ShokriAttack(mode="label_input", epochs=30), LiRA(online=True), LiRA(online=False),
        LiRA(variance="per_example"), RMIA(online=False), RMIA(online=True),
    ]


@pytest.mark.parametrize("config", OUTPUTS, ids=lambda c: c["name"] + str(c.get("k", c.get("decimals", ""))))
def test_every_attack_runs_finite_on_every_served_output(config):
    ref, target, labels, member = served_reference_signals(config)
    for attack in all_attacks():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scores = attack.fit(ref).score(target, labels)
        assert scores.shape == (300,) and torch.isfinite(scores).all(), attack
        assert attack.threshold is None or math.isfinite(attack.threshold), attack
        if isinstance(attack, LiRA) and attack.online and out(**config).serves_scores:
            # Members are far more confident here; any served score vector shows it.
            assert roc_auc_score(member.numpy(), scores.numpy()) > 0.8, config


@pytest.mark.parametrize(
    "values, key",
    [
        ({"name": "topk", "k": 0}, "output.k"),
        ({"name": "topk", "k": 1.5}, "output.k"),
        ({"name": "topk"}, "output.k"),
        ({"name": "round", "decimals": -1}, "output.decimals"),
        ({"name": "round", "decimals": "two"}, "output.decimals"),
        ({"name": "temperature", "t": 0}, "output.t"),
        ({"name": "temperature", "t": math.inf}, "output.t"),
        ({"name": "topk", "k": 2, "decimals": 1}, "output.decimals"),
        ({"name": "softmax"}, "output.name"),
    ],
)
def test_invalid_output_config_names_the_key(values, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        ServedOutput.from_config(values)


def test_topk_serving_every_class_is_rejected():
    with pytest.raises(ValueError, match=r"output\.k=10"):
        out(name="topk", k=10).check_classes(10)
    out(name="topk", k=9).check_classes(10)


def test_missing_output_group_means_logits():
    assert ServedOutput.from_config(None) == ServedOutput("logits")
    assert out(name="topk", k=1).describe() == "output=topk output.k=1"
    assert not out(name="label").serves_scores and out(name="round", decimals=1).serves_scores
