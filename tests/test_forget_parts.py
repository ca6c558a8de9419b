"""Unlearning methods and the forgotten-vs-never-seen separation."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from mia_torch.training.unlearning import finetune, gradient_ascent
from mia_torch.forget.verdict import INDISTINGUISHABLE, STILL_DISTINGUISHABLE, separation
from mia_torch.models import MLP
from mia_torch.training.config import TrainConfig
from mia_torch.training.trainer import train_model


def test_separation_verdicts_follow_the_interval():
    rng = np.random.default_rng(0)
    never_seen = np.arange(100, 900)
    forgotten = np.arange(0, 100)
    same = rng.normal(size=900)
    result = separation(same, forgotten, never_seen, bootstrap=200, seed=0)
    assert result.auc_ci[0] <= result.auc <= result.auc_ci[1]
    assert result.verdict == INDISTINGUISHABLE
    shifted = same.copy()
    shifted[forgotten] += 1.0
    result = separation(shifted, forgotten, never_seen, bootstrap=200, seed=0)
    assert result.auc > 0.7 and result.verdict == STILL_DISTINGUISHABLE


def _data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 4, 4, generator=gen)
    y = torch.randint(0, 3, (200,), generator=gen)  # random labels: only memorisation fits them
    return x, y


def test_gradient_ascent_raises_the_forgotten_loss_and_finetune_repairs_the_rest():
    x, y = _data()
    torch.manual_seed(0)
    model = MLP(input_shape=(1, 4, 4), num_classes=3, hidden_sizes=(64,))
    cfg = TrainConfig(epochs=60, batch_size=32, lr=0.1, weight_decay=0.0)
    train_model(model, x, y, torch.arange(200), cfg, seed=0)
    forget, retain = torch.arange(20), torch.arange(20, 200)

    def loss(idx):
        with torch.no_grad():
            return float(F.cross_entropy(model(x[idx]), y[idx]))

    before_forget, before_retain = loss(forget), loss(retain)
    gradient_ascent(model, x, y, forget, epochs=2, lr=0.5, batch_size=10, seed=1)
    assert loss(forget) > before_forget + 0.5
    damaged_retain = loss(retain)
    finetune(model, x, y, retain, cfg, epochs=10, lr=0.02, seed=2)
    assert loss(retain) < damaged_retain
    assert loss(retain) < before_retain + 0.5


def test_finetune_does_not_early_stop_under_a_study_recipe_with_early_stopping():
    x, y = _data()
    model = MLP(input_shape=(1, 4, 4), num_classes=3, hidden_sizes=(8,))
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.1, early_stopping={"patience": 1})
    result = finetune(model, x, y, torch.arange(20, 200), cfg, epochs=3, lr=0.02, seed=2)
    assert len(result.metrics["epoch_train_loss"]) == 3 and "stopped_epoch" not in result.metrics
