"""CUDA paths: bf16 training and querying agree with the CPU run (skipped without CUDA)."""

import numpy as np
import pytest
import torch

from helpers import TINY, run_experiment

pytestmark = pytest.mark.gpu


def test_cuda_run_matches_cpu_run_within_tolerance(tmp_path):
    overrides = [*TINY, "model=small_cnn", "model.width=8", "train.epochs=8", "attack=[loss,lira_online]"]
    cpu = run_experiment(tmp_path, [*overrides, "device=cpu"], name="cpu")
    gpu = run_experiment(tmp_path, [*overrides, "device=cuda"], name="gpu")
    assert gpu["versions"]["cuda"] is not None
    np.testing.assert_array_equal(np.load(tmp_path / "cpu" / "keep.npy"), np.load(tmp_path / "gpu" / "keep.npy"))
    for name in ("loss", "lira_online"):
        assert abs(cpu["attacks"][name]["pooled"]["auc"] - gpu["attacks"][name]["pooled"]["auc"]) < 0.05
    assert abs(cpu["targets"]["0"]["test_acc"] - gpu["targets"]["0"]["test_acc"]) < 0.05


def test_cuda_signals_stay_on_device_and_are_finite(tmp_path):
    from mia_torch.models import SmallCNN
    from mia_torch.signals.collect import collect_logits

    model = SmallCNN(input_shape=(1, 28, 28), num_classes=10).cuda()
    x = torch.randn(300, 1, 28, 28, device="cuda")
    logits = collect_logits(model, x, ["identity", "flip", "shift_1_0"], batch_size=128, dtype=torch.float16)
    assert logits.device.type == "cuda" and logits.dtype == torch.float16
    assert logits.shape == (300, 3, 10) and torch.isfinite(logits).all()
