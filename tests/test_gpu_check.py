"""The prepared GPU check (scripts/gpu_check.sh) and its helper scripts, run on CPU."""

from __future__ import annotations

import importlib.util
import io
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from helpers import REPO

SCRIPT = REPO / "scripts" / "gpu_check.sh"


def load_script(name: str):
    """Import ``scripts/<name>.py`` as a module."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_check(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = os.environ | {
        "OUT": str(tmp_path / "out"),
        "GPU_CHECK_WORK": str(tmp_path / "work"),
        "PYTHON": sys.executable,
        "OMP_NUM_THREADS": "1",
    } | env
    environ.pop("PYTHONPATH", None)  # the script sets it: the checkout, then the unpacked wheels
    return subprocess.run(["bash", str(SCRIPT), *args], env=environ, capture_output=True, text=True, timeout=600)


def returned_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*") if p.is_file()]


def test_smoke_run_reports_every_stage(tmp_path):
    """`--smoke` runs every stage on CPU and leaves at most 8 files of at most 16 MB, all directly in $OUT."""
    proc = run_check(tmp_path, "--smoke")
    out = tmp_path / "out"
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    files = returned_files(out)
    assert 1 <= len(files) <= 8, files
    assert all(p.stat().st_size <= 16 * 2**20 and p.parent == out for p in files)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["mode"] == "smoke" and summary["all_ok"]
    assert [r["stage"] for r in summary["stages"]] == [
        "env", "tests", "data", "study", "bench_cifar_cnn", "bench_resnet18"
    ]
    tests = summary["tests"]
    assert tests["skipped"] >= 4 and tests["failed"] == tests["errors"] == 0  # GPU tests, collected and skipped
    for model in ("cifar_cnn", "resnet18"):
        bench = summary["bench"][model]
        names = [r["name"] for r in bench["train"]]
        assert names[0].startswith("naive") and "train_model" in names and len(names) == 4
        assert all(r["img_per_s"] > 0 and r["tflops"] > 0 and not r["fell_back"] for r in bench["train"])
        assert bench["ratios"]["vmap_vs_loop"] > 0
    study = summary["study"]
    assert study["complete"] and study["num_models"] == 4
    assert all(study["timings"][k] > 0 for k in ("train_s", "signals_s", "attacks_s"))
    assert set(study["attacks"]) == {"loss", "lira_online", "lira_offline", "rmia"}
    assert all(0 <= a["auc"] <= 1 for a in study["attacks"].values())
    table = (out / "summary.md").read_text()
    assert table in proc.stdout  # printed at the end
    for heading in ("## Stages", "## Benchmark: resnet18", "| lira_online |", "not checked in a smoke run"):
        assert heading in table
    with tarfile.open(out / "artifacts.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"env.json", "tests.xml", "bench_cifar_cnn.json", "study/results.json"} <= names


def test_a_stage_past_its_limit_is_stopped_and_the_next_still_runs(tmp_path):
    proc = run_check(tmp_path, "--smoke", "--stages", "tests,data", GPU_CHECK_LIMIT_TESTS="1")
    assert proc.returncode == 1
    assert "tests: TIMEOUT" in proc.stdout and "data: ok" in proc.stdout
    stages = {r["stage"]: r["status"] for r in json.loads((tmp_path / "out" / "summary.json").read_text())["stages"]}
    assert stages == {"env": "ok", "tests": "timeout", "data": "ok"}


def test_without_cuda_the_gpu_run_stops_after_saying_why(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    proc = run_check(tmp_path, "--stages", "study")
    out = tmp_path / "out"
    assert proc.returncode == 1
    assert "no CUDA device" in (out / "setup.log").read_text()
    stages = {r["stage"]: r["status"] for r in json.loads((out / "summary.json").read_text())["stages"]}
    assert stages == {"env": "failed (exit 2)", "study": "skipped (env failed)"}
    assert "skipped (env failed)" in (out / "summary.md").read_text()


def test_unknown_stage_is_rejected_before_anything_runs(tmp_path):
    proc = run_check(tmp_path, "--stages", "tests,bench")
    assert proc.returncode == 2 and "unknown stage 'bench'" in proc.stderr
    assert not (tmp_path / "out").exists()


# ---- the CIFAR-10 JPEG decoder


def test_decoder_returns_the_jpeg_pixels_and_labels(tmp_path):
    decoder = load_script("decode_cifar10_jpeg")
    container, out = tmp_path / "c.npz", tmp_path / "d.npz"
    decoder.write_synthetic(container, num_train=30, num_test=12, seed=3)
    assert decoder.main([str(container), str(out)]) == 0
    with np.load(container) as c, np.load(out) as d:
        assert d["x_train"].shape == (30, 32, 32, 3) and d["x_train"].dtype == np.uint8
        assert d["x_test"].shape == (12, 32, 32, 3)
        np.testing.assert_array_equal(d["y_train"], c["train_labels"])
        for i in (0, 17, 29):  # what Pillow decodes from that image's own bytes
            raw = c["train_jpeg"][c["train_offsets"][i] : c["train_offsets"][i + 1]].tobytes()
            np.testing.assert_array_equal(d["x_train"][i], np.asarray(Image.open(io.BytesIO(raw)).convert("RGB")))
        assert list(d["classes"])[:2] == ["airplane", "automobile"]


def test_decoded_file_loads_as_npz_dataset(tmp_path):
    from mia_torch.data.loader import load_dataset
    from mia_torch.data.npz import NpzImages

    decoder = load_script("decode_cifar10_jpeg")
    decoder.write_synthetic(tmp_path / "c.npz", num_train=40, num_test=10)
    decoder.decode(tmp_path / "c.npz", tmp_path / "d.npz")
    data = load_dataset(NpzImages(path=str(tmp_path / "d.npz")), root=None, download=False, seed=0)
    assert data.x.shape == (40, 3, 32, 32) and data.x_test.shape == (10, 3, 32, 32) and data.num_classes == 10
    assert abs(float(data.x.mean())) < 1e-3  # normalised per channel


def test_decoder_rejects_a_file_that_is_not_a_container_and_writes_nothing(tmp_path, capsys):
    decoder = load_script("decode_cifar10_jpeg")
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 32, 32, 3), np.uint8))
    out = tmp_path / "d.npz"
    assert decoder.main([str(bad), str(out)]) == 1
    err = capsys.readouterr().err
    assert "bad.npz is not a CIFAR-10 JPEG container" in err and "train_jpeg" in err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]
    assert decoder.main([str(tmp_path / "missing.npz"), str(out)]) == 1
    assert "missing.npz not found" in capsys.readouterr().err


def test_decoder_rejects_offsets_that_do_not_index_the_bytes(tmp_path):
    decoder = load_script("decode_cifar10_jpeg")
    decoder.write_synthetic(tmp_path / "c.npz", num_train=5, num_test=2)
    with np.load(tmp_path / "c.npz") as c:
        arrays = dict(c)
    arrays["train_offsets"] = arrays["train_offsets"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="train_offsets do not index train_jpeg"):
        decoder.decode(tmp_path / "bad.npz", tmp_path / "d.npz")


# ---- environment step: wheels onto a bare interpreter


def test_wheels_unpack_into_an_importable_folder(tmp_path):
    env_step = load_script("gpu_check_env")
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "demo-1.0-py3-none-any.whl", "w") as whl:
        whl.writestr("demo_pkg/__init__.py", "VALUE = 41\n")
        whl.writestr("demo-1.0.dist-info/METADATA", "Name: demo\nVersion: 1.0\n")
        whl.writestr("demo-1.0.data/purelib/demo_extra.py", "VALUE = 1\n")
        whl.writestr("demo-1.0.data/scripts/demo-tool", "#!/bin/sh\n")
    site = tmp_path / "site"
    assert env_step.install_wheels(wheels, site) == ["demo-1.0-py3-none-any.whl"]
    assert not (site / "demo-tool").exists() and not (site / "demo-1.0.data").exists()
    proc = subprocess.run(
        [sys.executable, "-S", "-c", "import demo_pkg, demo_extra; print(demo_pkg.VALUE + demo_extra.VALUE)"],
        env={"PYTHONPATH": str(site)}, capture_output=True, text=True, timeout=60,
    )
    assert proc.stdout.strip() == "42", proc.stderr


def test_missing_modules_are_named_with_their_package(tmp_path, monkeypatch, capsys):
    env_step = load_script("gpu_check_env")
    monkeypatch.setitem(env_step.REQUIRED, "no_such_module_xyz", ("no-such-package", "the test"))
    assert env_step.check(tmp_path / "env.json", require_cuda=False) == 1
    err = capsys.readouterr().err
    assert "no_such_module_xyz (package no-such-package, needed by the test)" in err and "hydra" not in err
    assert not (tmp_path / "env.json").exists()


# ---- summary and benchmark arithmetic


def _write_bench(path: Path, naive: float, train_model: float, loop: float, vmap: float, sig_naive: float,
                 sig: float) -> None:
    def row(name, ips):
        return {"name": name, "img_per_s": ips, "seconds": 1.0, "models": 1, "vs_naive": None, "tflops": None,
                "fell_back": False}

    path.write_text(json.dumps({
        "train": [row("naive (DataLoader)", naive), row("train_model", train_model),
                  row("train_models[loop] x8", loop), row("train_models[vmap] x8", vmap)],
        "signals": [row("naive (DataLoader)", sig_naive), row("collect_logits", sig)],
    }))


def test_summary_checks_the_targets_against_the_measured_numbers(tmp_path):
    summary_mod = load_script("gpu_check_summary")
    work = tmp_path / "work"
    (work / "study").mkdir(parents=True)
    (work / "stages.tsv").write_text("env\t0\t3.0\t60\nstudy\t124\t240.0\t240\nbench_resnet18\t0\t50\t120\n")
    _write_bench(work / "bench_resnet18.json", 1000, 6000, 5000, 4000, 2000, 19000)
    _write_bench(work / "bench_cifar_cnn.json", 1000, 3000, 3000, 5000, 1000, 2000)
    (work / "study_timings.json").write_text(json.dumps({"train_s": 30.0, "signals_s": 20.0, "attacks_s": 5.0}))
    lira = {"pooled": {"auc": 0.72, "tpr@0.01fpr": 0.12, "tpr@0.001fpr": 0.05}}
    results = {"targets": {"0": {"test_acc": 0.9}}, "models": [{"test_acc": 0.9}, {"test_acc": 0.87}],
               "attacks": {"lira_online": lira}, "config": {}, "dataset": {}}
    (work / "study" / "results.json").write_text(json.dumps(results))
    summary = summary_mod.summarize(work, smoke=False)
    met = {t["target"]: t["met"] for t in summary["targets"]}
    assert met["ResNet-18 training vs naive loop (best row)"] is True  # 6000 / 1000
    assert met["ResNet-18 signals vs naive loop (best row)"] is False  # 9.5x < 10x
    assert met["cifar_cnn train_models vmap vs loop"] is False  # 5000 / 3000 < 2
    assert met["study training + signals (s)"] is False  # 50 s > 45 s
    assert met["study mean test accuracy, all models"] is True  # 0.885
    assert met["LiRA online AUC (pooled)"] is True and met["LiRA online TPR@0.1%FPR (pooled)"] is False
    assert summary["bench"]["resnet18"]["ratios"]["train_best_row"] == "train_model"
    assert [r["status"] for r in summary["stages"]] == ["ok", "timeout", "ok"] and not summary["all_ok"]
    text = summary_mod.markdown(summary)
    assert "| study | timeout | 240.0 | 240 |" in text and "| LiRA online AUC (pooled) | 0.720 | >= 0.71 | yes |" in text


def test_summary_of_an_empty_work_folder_says_what_is_missing(tmp_path):
    summary_mod = load_script("gpu_check_summary")
    assert summary_mod.main(["--work", str(tmp_path / "nothing"), "--out", str(tmp_path / "out"), "--quiet"]) == 0
    text = (tmp_path / "out" / "summary.md").read_text()
    assert "no test report" in text and "no results (see study.log)" in text and "not measured" in text


def test_bench_counts_flops_of_a_known_model():
    bench = load_script("bench")
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10, bias=False), nn.ReLU(), nn.Linear(10, 3, bias=False))
    flops = bench.count_flops(model, (1, 8, 8))
    forward = 2 * 64 * 10 + 2 * 10 * 3  # multiply-adds of the two matrix products, per image
    # backward: both weight gradients, and the input gradient of the second layer (the first one's input needs none)
    assert flops == {"forward": forward, "train": forward + forward + 2 * 10 * 3}
    conv = nn.Conv2d(1, 4, 3, padding=1, bias=False)
    assert bench.count_flops(conv, (1, 8, 8))["forward"] == 2 * 9 * 4 * 64


def test_summary_of_a_study_cut_short_reports_its_pace(tmp_path):
    summary_mod = load_script("gpu_check_summary")
    (tmp_path / "study_timings.json").write_text(json.dumps({"models_trained_so_far": 16, "training_groups_s": 120.0}))
    text = summary_mod.markdown(summary_mod.summarize(tmp_path, smoke=False))
    assert "the study did not finish: 16 models trained in 120.0 s" in text


def test_bad_settings_are_rejected_before_anything_runs(tmp_path):
    proc = run_check(tmp_path, "--smoke", GPU_CHECK_LIMIT_STUDY="ten")
    assert proc.returncode == 2 and "GPU_CHECK_LIMIT_STUDY=ten is not a whole number" in proc.stderr
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    proc = run_check(tmp_path, "--smoke")
    assert proc.returncode == 2 and "is not empty" in proc.stderr
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]
