"""Shared test utilities: compose the project's Hydra config and run the pipeline in a temp dir."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from mia_torch.attacks.base import Attack, ReferenceSignals, check_target
from mia_torch.settings.schemas import register_configs
from mia_torch.report.types import RunResults

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "configs"

# A small, fast experiment on the synthetic dataset (seconds on a laptop CPU).
TINY = [
    "dataset=synthetic",
    "dataset.num_examples=400",
    "dataset.num_test=100",
    "model=mlp",
    "num_models=4",
    "train.epochs=4",
    "bootstrap=20",
    "progress=false",
]


def make_config(tmp_path: Path, overrides: Sequence[str] = ()) -> DictConfig:
    """Compose ``configs/config.yaml`` with ``overrides`` and a private store."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[f"store_dir={tmp_path / 'store'}", *overrides])


def run_experiment(tmp_path: Path, overrides: Sequence[str] = (), name: str = "run") -> RunResults:
    """Run the pipeline with ``overrides`` into ``tmp_path/name``; returns its typed results."""
    from mia_torch.pipeline import run

    return run(make_config(tmp_path, overrides), run_dir=tmp_path / name)


def digits_tensors(*, shuffle_seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 8x8 digits as ``[N, 1, 8, 8]`` float images (normalised over all pixels) and labels;
    shuffled by a seeded permutation when ``shuffle_seed`` is given."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    x = (x - x.mean()) / x.std()
    y = torch.tensor(data.target, dtype=torch.long)
    if shuffle_seed is None:
        return x, y
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(shuffle_seed))
    return x[perm], y[perm]


def attack_stage_on(ctx, logits):
    """The attack stage of ``ctx`` on served outputs ``logits [M, N, Q, C]`` held in memory (the features the
    signals stage would reduce them to, computed here from the logits)."""
    import numpy as np

    from mia_torch.attacks import FeatureAttack, ReferenceFeatures, ReferenceSignals
    from mia_torch.stages.attacks import attack_stage

    class InMemory:  # what attacks that read logits get from a store's signal source
        def dense(self):
            return np.asarray(logits)

    features = [f for a in ctx.attacks.values() if isinstance(a, FeatureAttack) for f in a.required_features()]
    signals = ReferenceSignals(torch.from_numpy(np.asarray(logits)).float(), torch.from_numpy(ctx.splits.keep),
                               ctx.data.y)
    return attack_stage(ctx, ReferenceFeatures.from_signals(signals, features), InMemory())


def refuse_dense_logits(monkeypatch) -> None:
    """Make building models' dense served logits (``SignalSource.dense``) fail: for runs that must read features."""
    from mia_torch.signals.source import SignalSource

    def refuse(self, *args, **kwargs):
        raise AssertionError("SignalSource.dense was called: the run built the dense logits of its models")

    monkeypatch.setattr(SignalSource, "dense", refuse)


def count_dense_logits(monkeypatch) -> list[list[int]]:
    """Record the models of every ``SignalSource.dense`` call (the calls still go through)."""
    from mia_torch.signals.source import SignalSource

    calls: list[list[int]] = []
    dense = SignalSource.dense

    def counted(self, models=None, *args, **kwargs):
        calls.append(self.models if models is None else list(models))
        return dense(self, models, *args, **kwargs)

    monkeypatch.setattr(SignalSource, "dense", counted)
    return calls


def _margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """True-class logit minus the largest other one, averaged over queries: float64 ``[..., N]``."""
    index = labels[..., None, None].expand(*labels.shape, logits.shape[-2], 1)
    runner_up = logits.scatter(-1, index, float("-inf")).amax(-1)
    return (logits.gather(-1, index).squeeze(-1) - runner_up).double().mean(-1)


class OutMargin(Attack):
    """An attack written against the logits interface whose fit reads the references' logits: the target's margin
    minus the OUT references' mean margin on each record."""

    requires_references = True

    def fit(self, ref: ReferenceSignals) -> "OutMargin":
        ref = self._check_references(ref)
        out = (~ref.keep).double()
        self.mean_out = (_margin(ref.logits, ref.labels.expand(ref.num_models, -1)) * out).sum(0) / out.sum(0)
        return self

    def score(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits, labels = check_target(logits, labels)
        return _margin(logits, labels) - self.mean_out.to(logits.device)
