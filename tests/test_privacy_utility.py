"""The privacy-utility study: its points, files and figure, its settings group, and a tiny sweep end to end."""

from __future__ import annotations

import csv
import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from helpers import CONFIG_DIR, REPO, make_config
from results_fixtures import make_results
from mia_torch.report.privacy_utility import PrivacyUtilityCallback, write_privacy_utility
from mia_torch.report.json_file import read_json, write_json
from mia_torch.report.types import RunResults

SETTINGS = sorted(p.stem for p in (CONFIG_DIR / "setting").glob("*.yaml"))
STUDIES = ["privacy_utility", "privacy_utility_cifar10"]


def _fake_job(sweep: Path, name: str, setting: str, *, test_acc: tuple[float, float], shifts: dict[str, float],
              defense: dict | None = None, output: dict | None = None, dp_epsilon: float | None = None) -> dict:
    """A finished job of ``setting`` with two targets and synthetic scores; returns its results dict."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(f"- experiment=privacy_utility\n- setting={setting}\n")
    results, _, _, _ = make_results(num_examples=2000, shifts=shifts, bootstrap=50)
    results.config["defense"] = defense or {"name": "none"}
    results.config["output"] = output or {"name": "logits"}
    for target, acc in zip(results.targets.values(), test_acc):
        target.test_acc = acc
        if dp_epsilon is not None:
            target.dp_epsilon, target.dp_delta, target.dp_noise_multiplier = dp_epsilon, 1e-3, 0.0 if \
                math.isinf(dp_epsilon) else 1.5
    data = results.to_dict()
    write_json(job / "results.json", data)
    return data


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    dpsgd = {"name": "dpsgd", "epsilon": 1.0, "delta": None, "max_grad_norm": 0.5, "apply_to": "all"}
    jobs = {
        "none": _fake_job(root, "0", "none", test_acc=(0.94, 0.96), shifts={"loss": 0.5, "lira": 1.5}),
        "weight_decay_5e-2": _fake_job(root, "1", "weight_decay_5e-2", test_acc=(0.90, 0.90),
                                       shifts={"loss": 0.5, "lira": 2.0}),
        "dpsgd_eps_1": _fake_job(root, "2", "dpsgd_eps_1", test_acc=(0.80, 0.82), shifts={"loss": 0.1, "lira": 0.3},
                                 defense=dpsgd, dp_epsilon=1.0),
        "dpsgd_eps_inf": _fake_job(root, "3", "dpsgd_eps_inf", test_acc=(0.90, 0.90),
                                   shifts={"loss": 0.2, "lira": 0.8}, defense={**dpsgd, "epsilon": math.inf},
                                   dp_epsilon=math.inf),
        "label_only": _fake_job(root, "4", "label_only", test_acc=(0.94, 0.96), shifts={"gap": 0.3, "label_only": 1.0},
                                output={"name": "label"}),
    }
    (root / "5" / ".hydra").mkdir(parents=True)  # a job that did not finish
    (root / "5" / ".hydra" / "overrides.yaml").write_text("- setting=dropout\n")
    return root, jobs


def test_one_point_per_setting_with_its_strongest_attack_and_intervals(sweep):
    root, jobs = sweep
    study = write_privacy_utility(root)
    assert [p.setting for p in study.points] == list(jobs)
    assert study.missing == [("dropout", "no results.json (job failed or has not finished)")]
    strongest = {"none": "lira", "weight_decay_5e-2": "lira", "dpsgd_eps_1": "lira", "dpsgd_eps_inf": "lira",
                 "label_only": "label_only"}  # the larger shift separates members better at every FPR
    for point in study.points:
        pooled = jobs[point.setting]["attacks"][point.attack]["pooled"]
        assert point.attack == strongest[point.setting]
        assert point.tpr == pooled["tpr@0.01fpr"] and list(point.tpr_ci) == pooled["clopper_pearson_ci"]["tpr@0.01fpr"]
        assert point.auc == pooled["auc"] and list(point.auc_ci) == pooled["ci"]["auc"]
    by_name = {p.setting: p for p in study.points}
    assert by_name["none"].test_acc == pytest.approx(0.95)
    assert by_name["none"].test_acc_std == pytest.approx(math.sqrt(2) * 0.01)
    assert [by_name[n].kind for n in jobs] == ["none", "regularization", "dp", "dp", "output"]
    assert by_name["dpsgd_eps_1"].epsilon == 1.0 and by_name["dpsgd_eps_inf"].epsilon == math.inf
    assert by_name["none"].epsilon is None

    rows = list(csv.DictReader(study.csv.open()))
    assert [r["setting"] for r in rows] == list(jobs)
    assert [r["costs_more_than_it_buys"] for r in rows] == ["False", "True", "False", "False", "False"]
    assert float(rows[2]["dp_epsilon"]) == 1.0 and rows[3]["dp_epsilon"] == "inf" and rows[0]["dp_epsilon"] == ""
    assert float(rows[1]["tpr"]) == by_name["weight_decay_5e-2"].tpr and rows[1]["attack"] == "lira"
    markdown = study.markdown.read_text()
    flagged = [line for line in markdown.splitlines() if "accuracy paid, no privacy bought" in line]
    assert len(flagged) == 1 and flagged[0].startswith("| weight_decay_5e-2 |")
    assert "| dpsgd_eps_inf |" in markdown and "| ∞ |" in markdown
    assert "- `dropout`: no results.json" in markdown
    assert study.figure is not None and study.figure.stat().st_size > 10_000


def test_the_page_recommends_the_most_private_setting_within_the_accuracy_budget(sweep, capsys):
    from mia_torch.report.html.cli import main as mia_report
    from mia_torch.report.privacy_utility_points import recommend

    root, _ = sweep
    study = write_privacy_utility(root)  # budget 0.02: test accuracy >= 0.93, so none or label_only
    assert study.recommended.setting == "label_only"  # its attack's shift (1.0) is smaller than LiRA's on none (1.5)
    assert [recommend(study.points, accuracy_budget=b).setting for b in (0.0, 0.06, 0.2)] == \
        ["label_only", "dpsgd_eps_inf", "dpsgd_eps_1"]  # >= 0.95; + 0.90 (shifts 2.0, 0.8); + 0.81 (shift 0.3)
    assert [p.setting for p in study.paying_for_nothing()] == ["weight_decay_5e-2"]
    assert study.html == root / "report.html"
    assert '<strong>label_only</strong>' in study.html.read_text().split('id="recommended"')[1].split("</p>")[0]
    assert mia_report([str(root), "--accuracy-budget", "0.2"]) == 0 and "wrote" in capsys.readouterr().out
    assert '<strong>dpsgd_eps_1</strong>' in study.html.read_text().split('id="recommended"')[1].split("</p>")[0]
    assert mia_report([str(root), "--accuracy-budget", "-1"]) == 2 and "accuracy_budget" in capsys.readouterr().err


def test_the_figure_labels_every_setting_and_the_dp_epsilons(sweep):
    from mia_torch.report.privacy_utility_points import study_points
    from mia_torch.report.privacy_utility_plot import privacy_utility_figure
    from mia_torch.report.sweep_jobs import collect_jobs

    points, _ = study_points(collect_jobs(sweep[0]))
    figure = privacy_utility_figure(points, fpr=0.01)
    left, right = figure.axes[:2]
    for ax in (left, right):
        texts = {t.get_text() for t in ax.texts}
        assert {"none", "weight_decay_5e-2", "label_only", "dpsgd_eps_1\nε = 1", "dpsgd_eps_inf\nε = ∞"} <= texts
        assert ax.get_xlabel().startswith("target test accuracy")
    assert "TPR at 1% FPR" in left.get_ylabel() and "AUC" in right.get_ylabel()


def test_an_fpr_no_attack_measured_leaves_every_setting_without_a_point(sweep):
    study = write_privacy_utility(sweep[0], fpr=0.05)
    assert study.points == [] and study.figure is None
    reasons = [reason for name, reason in study.missing if name != "dropout"]
    assert len(reasons) == 5 and all(r.startswith("no attack measured tpr@0.05fpr") for r in reasons)
    with pytest.raises(ValueError, match="fpr"):
        write_privacy_utility(sweep[0], fpr=1.5)


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO),
                                                                              os.environ.get("PYTHONPATH", "")])}


def test_the_script_and_the_callback_rebuild_the_files(sweep, tmp_path, capsys):
    root, _ = sweep
    script = REPO / "scripts" / "privacy_utility.py"
    proc = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, env=_env(),
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert str(root / "privacy_utility.png") in proc.stdout and "weight_decay_5e-2" in proc.stdout
    empty = tmp_path / "empty"
    empty.mkdir()
    spec = importlib.util.spec_from_file_location("privacy_utility_script", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main([str(empty)]) == 2 and "no Hydra jobs" in capsys.readouterr().err

    (root / "privacy_utility.csv").unlink()
    PrivacyUtilityCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(root)}}}))
    assert (root / "privacy_utility.csv").is_file()
    PrivacyUtilityCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(empty)}}}))
    assert "retry with `python scripts/privacy_utility.py" in capsys.readouterr().out  # reported, not raised


# ------------------------------------------------------------------ the settings group and the experiments


def _flat(cfg) -> dict[str, object]:
    out = {}

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            out[prefix] = value

    walk("", OmegaConf.to_container(cfg))
    return out


#: What each setting may change in the base recipe (key prefixes).
CHANGES = {
    "none": (),
    "weight_decay_5e-4": ("train.weight_decay",),
    "weight_decay_5e-3": ("train.weight_decay",),
    "weight_decay_5e-2": ("train.weight_decay",),
    "dropout": ("model.dropout",),
    "label_smoothing": ("train.label_smoothing",),
    "early_stopping": ("train.early_stopping.",),
    "dpsgd_eps_inf": ("defense.",),
    "dpsgd_eps_8": ("defense.",),
    "dpsgd_eps_1": ("defense.",),
    "label_only": ("output.", "attack."),
}


@pytest.mark.parametrize("study", STUDIES)
def test_the_study_sweeps_every_setting_and_each_changes_only_its_own_keys(tmp_path, study):
    from mia_torch.settings.load import check_attacks, load_settings

    assert set(SETTINGS) == set(CHANGES)
    hydra_cfg = OmegaConf.load(CONFIG_DIR / "experiment" / f"{study}.yaml").hydra
    assert hydra_cfg.sweeper.params.setting.split(",") == list(CHANGES)
    assert hydra_cfg.callbacks.privacy_utility._target_ == "mia_torch.report.privacy_utility.PrivacyUtilityCallback"
    base = _flat(make_config(tmp_path, [f"experiment={study}", "device=cpu"]))
    for setting, prefixes in CHANGES.items():
        cfg = make_config(tmp_path, [f"experiment={study}", f"setting={setting}", "device=cpu"])
        flat = _flat(cfg)
        changed = {k for k in base.keys() | flat.keys() if base.get(k, "<absent>") != flat.get(k, "<absent>")}
        assert changed and all(k.startswith(prefixes) for k in changed) if prefixes else not changed, (setting, changed)
        check_attacks(load_settings(cfg))  # every point passes the checks that run before training


def test_the_label_only_point_serves_labels_to_label_only_attacks(tmp_path):
    cfg = make_config(tmp_path, ["experiment=privacy_utility", "setting=label_only"])
    assert cfg.output.name == "label" and set(cfg.attack) == {"gap", "label_only"}
    assert list(cfg.queries) == ["identity"]  # the base recipe's views, as at every point
    dp = make_config(tmp_path, ["experiment=privacy_utility", "setting=dpsgd_eps_inf"])
    assert dp.defense.name == "dpsgd" and math.isinf(dp.defense.epsilon)


@pytest.mark.slow
def test_a_tiny_study_runs_end_to_end_as_a_multirun(tmp_path):
    """Three settings of the study on tiny synthetic data: the callback writes the study; the label-only point
    reuses the undefended models from the shared store. About 20 s (every job writes its full report)."""
    sweep = tmp_path / "sweep"
    args = [sys.executable, "-m", "mia_torch.cli", "-m", "experiment=privacy_utility",
            "dataset=synthetic", "dataset.num_examples=400", "dataset.num_test=100", "num_models=4",
            "target_ids=[0,2]", "train.epochs=3", "bootstrap=20", "progress=false", "sanity_check=false",
            "hydra.sweeper.params.setting='none,weight_decay_5e-2,label_only'", f"store_dir={tmp_path / 'store'}",
            f"hydra.sweep.dir={sweep}"]
    proc = subprocess.run(args, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-4000:])
    assert "privacy-utility study of 3 setting(s)" in proc.stdout
    rows = list(csv.DictReader((sweep / "privacy_utility.csv").open()))
    assert [r["setting"] for r in rows] == ["none", "weight_decay_5e-2", "label_only"]
    assert rows[2]["output"] == "label" and rows[2]["attack"] in {"gap", "label_only"}
    assert rows[2]["test_acc"] == rows[0]["test_acc"]
    label_only = RunResults.from_dict(read_json(sweep / "2" / "results.json"))
    assert label_only.trained_models == [] and label_only.reused_models == [0, 1, 2, 3]
    assert (sweep / "privacy_utility.png").stat().st_size > 10_000
