"""Report: TensorBoard contents, ROC figure, results.json, summary table, per-record CSV."""
import csv
import io
import json

import numpy as np
import pytest
import torch

from mia_torch.atomic import atomic_open
from mia_torch.metrics import bootstrap_intervals, membership_metrics, roc_curve
from mia_torch.report import plots, records, results, table, tensorboard

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _attack_data(seed, n=600, shift=1.0):
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    scores = rng.normal(size=n) + shift * labels
    return scores, labels


def _attacks():
    out = {}
    for i, (name, shift) in enumerate([("loss", 0.5), ("lira", 1.5)]):
        scores, labels = _attack_data(i, shift=shift)
        out[name] = {
            "scores": scores,
            "labels": labels,
            "metrics": membership_metrics(scores, labels),
        }
    return out


# ----------------------------------------------------------------------------- plots


def test_roc_figure_and_atomic_save(tmp_path):
    curves = {}
    for name, a in _attacks().items():
        fpr, tpr, _ = roc_curve(a["scores"], a["labels"])
        curves[name] = (fpr, tpr, a["metrics"]["auc"])
    fig = plots.roc_figure(curves, title="test")
    ax_log, ax_lin = fig.axes[:2]
    assert ax_log.get_xscale() == "log" and ax_log.get_yscale() == "log"
    assert ax_lin.get_xscale() == "linear"
    lo, hi = ax_log.get_xlim()
    assert 1e-5 <= lo < 0.01 and hi == 1.0
    texts = [t.get_text() for t in ax_lin.get_legend().get_texts()]
    auc = curves["lira"][2]
    assert any(t.startswith(f"lira (AUC={auc:.3f}, TPR@0.1%=") for t in texts)
    assert any(t.startswith("loss (AUC=") for t in texts)
    assert "chance" in texts

    path = tmp_path / "sub" / "roc.png"
    plots.save_figure(fig, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["roc.png"]


def test_roc_figure_rejects_bad_curve():
    with pytest.raises(ValueError):
        plots.roc_figure({"x": (np.array([0.0, 1.0]), np.array([0.0]), 0.5)})


# ------------------------------------------------------------------------ tensorboard


def test_flatten_hparams():
    flat = tensorboard.flatten_hparams(
        {
            "train": {"lr": 0.1, "epochs": 3, "opt": {"name": "sgd", "nesterov": True}},
            "attack": {"names": ["loss", "lira"], "extra": None},
            "seed": np.int64(4),
            "empty": {},
        }
    )
    assert flat == {
        "train.lr": 0.1,
        "train.epochs": 3,
        "train.opt.name": "sgd",
        "train.opt.nesterov": True,
        "attack.names": "['loss', 'lira']",
        "attack.extra": "None",
        "seed": 4,
    }
    assert type(flat["seed"]) is int
    assert tensorboard.flatten_hparams(flat) == flat


def test_rank_scale_preserves_order():
    x = np.array([5.0, -1.0, 3.0, 3.0, 100.0])
    r = tensorboard.rank_scale(x)
    assert r.min() == 0.0 and r.max() == 1.0
    assert r[2] == r[3]
    assert np.all(np.argsort(r, kind="stable") == np.argsort(x, kind="stable"))


@pytest.fixture(scope="module")
def tb_report(tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log_dir = tmp_path_factory.mktemp("tb") / "run"
    attacks = _attacks()
    model_metrics = [
        {
            "model": 0,
            "train_acc": 0.99,
            "train_loss": 0.05,
            "test_acc": 0.71,
            "test_loss": 1.2,
            "epoch_train_loss": [1.0, 0.5, 0.25],
            "epoch_train_acc": [0.5, 0.8, np.float32(0.9)],
        },
        {"model": 1, "train_acc": 0.98, "train_loss": 0.06, "test_acc": 0.7, "test_loss": 1.3},
    ]
    hparams = {"dataset": {"name": "synthetic"}, "train": {"lr": 0.1, "epochs": 3}, "attacks": ["loss", "lira"]}
    summary = {"hparam/lira_auc": attacks["lira"]["metrics"]["auc"], "attack/lira/auc": attacks["lira"]["metrics"]["auc"]}
    tensorboard.write_report(
        log_dir, model_metrics=model_metrics, attacks=attacks, hparams=hparams, summary_metrics=summary
    )
    acc = EventAccumulator(
        str(log_dir),
        size_guidance={"images": 0, "tensors": 0, "histograms": 0, "scalars": 0},
    )
    acc.Reload()
    return log_dir, acc, attacks


def test_tensorboard_single_run_dir(tb_report):
    log_dir, _, _ = tb_report
    files = list(log_dir.rglob("*"))
    assert all(f.parent == log_dir for f in files)  # nothing in sub-runs
    assert len([f for f in files if f.name.startswith("events.out.tfevents")]) == 1


def test_tensorboard_scalars(tb_report):
    _, acc, attacks = tb_report
    tags = set(acc.Tags()["scalars"])
    for i in (0, 1):
        for key in ("train_acc", "train_loss", "test_acc", "test_loss"):
            assert f"model/{i}/{key}" in tags
    assert [e.value for e in acc.Scalars("model/0/test_acc")] == [pytest.approx(0.71)]
    curve = acc.Scalars("model/0/epoch_train_loss")
    assert [e.step for e in curve] == [1, 2, 3]
    assert [e.value for e in curve] == pytest.approx([1.0, 0.5, 0.25])
    assert [e.step for e in acc.Scalars("model/0/epoch_train_acc")] == [1, 2, 3]
    for name, a in attacks.items():
        for key in ("auc", "advantage", "balanced_accuracy", "tpr@0.01fpr", "tpr@0.001fpr"):
            events = acc.Scalars(f"attack/{name}/{key}")
            assert len(events) == 1
            assert events[0].value == pytest.approx(a["metrics"][key], rel=1e-6, abs=1e-7)
    assert "attack/lira/balanced_accuracy_threshold" not in tags
    # a summary metric not otherwise written is added as a scalar, once
    assert acc.Scalars("hparam/lira_auc")[0].value == pytest.approx(attacks["lira"]["metrics"]["auc"], rel=1e-6)
    assert len(acc.Scalars("attack/lira/auc")) == 1


def test_tensorboard_roc_image(tb_report):
    from PIL import Image

    _, acc, _ = tb_report
    assert "roc" in acc.Tags()["images"]
    (event,) = acc.Images("roc")
    png = event.encoded_image_string
    assert png[:8] == PNG_MAGIC
    img = Image.open(io.BytesIO(png))
    img.load()
    assert img.size == (event.width, event.height)
    assert event.width > 400 and event.height > 200


def test_tensorboard_pr_curves_and_histograms(tb_report):
    from tensorboard.util import tensor_util

    _, acc, attacks = tb_report
    pr_tags = set(acc.PluginTagToContent("pr_curves"))
    assert pr_tags == {f"pr/{name}" for name in attacks}
    for name, a in attacks.items():
        (event,) = acc.Tensors(f"pr/{name}")
        data = tensor_util.make_ndarray(event.tensor_proto)
        assert data.shape[0] == 6  # TP, FP, TN, FN, precision, recall
        tp, fp = data[0], data[1]
        assert tp[0] == a["labels"].sum() and fp[0] == (~a["labels"]).sum()
    hist_tags = set(acc.Tags()["histograms"])
    for name, a in attacks.items():
        assert {f"scores/{name}/member", f"scores/{name}/nonmember"} <= hist_tags
        (h,) = acc.Histograms(f"scores/{name}/member")
        assert h.histogram_value.num == a["labels"].sum()
        assert h.histogram_value.max == pytest.approx(a["scores"][a["labels"]].max())


def test_tensorboard_hparams(tb_report):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, acc, _ = tb_report
    content = acc.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(content)
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(0.1)
    assert hp["dataset.name"].string_value == "synthetic"
    assert hp["attacks"].string_value == "['loss', 'lira']"
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == {"hparam/lira_auc", "attack/lira/auc"}


def test_tensorboard_rejects_invalid_scores(tmp_path):
    attacks = _attacks()
    attacks["loss"]["scores"] = attacks["loss"]["scores"].copy()
    attacks["loss"]["scores"][3] = np.nan
    with pytest.raises(ValueError):
        tensorboard.write_report(tmp_path / "bad", model_metrics=[], attacks=attacks, hparams={}, summary_metrics={})


# --------------------------------------------------------------------------- results


def test_json_round_trip_numpy_and_torch(tmp_path):
    path = tmp_path / "out" / "results.json"
    obj = {
        "auc": np.float32(0.75),
        "n": np.int64(7),
        "flag": np.bool_(True),
        "array": np.arange(3, dtype=np.int32),
        "matrix": np.eye(2),
        "tensor": torch.tensor([1.5, 2.5]),
        "tscalar": torch.tensor(3),
        "ci": (0.1, 0.2),
        "nested": {np.int64(1): [np.float64(0.5)]},
        "nan": float("nan"),
        "path": tmp_path,
    }
    results.write_json(path, obj)
    back = results.read_json(path)
    assert back == {
        "auc": 0.75,
        "n": 7,
        "flag": True,
        "array": [0, 1, 2],
        "matrix": [[1.0, 0.0], [0.0, 1.0]],
        "tensor": [1.5, 2.5],
        "tscalar": 3,
        "ci": [0.1, 0.2],
        "nested": {"1": [0.5]},
        "nan": None,
        "path": str(tmp_path),
    }
    json.loads(path.read_text())  # strict JSON
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_json_failed_write_keeps_old_file_and_no_temp(tmp_path):
    path = tmp_path / "results.json"
    results.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        results.write_json(path, {"a": object()})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert results.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ----------------------------------------------------------------------------- table


def test_format_summary():
    attacks = _attacks()
    rows = []
    for name, a in attacks.items():
        ci = bootstrap_intervals(a["scores"], a["labels"], fpr_targets=(0.01, 0.001), num_resamples=20)
        rows.append({"attack": name, "metrics": a["metrics"], "intervals": ci})
    rows.append({"attack": "population", "auc": 0.5})
    text = table.format_summary(rows)
    lines = text.splitlines()
    assert len(lines) == 2 + len(rows)
    assert "TPR@1%FPR" in lines[0] and "TPR@0.1%FPR" in lines[0] and "AUC" in lines[0]
    for name in ("loss", "lira", "population"):
        assert any(line.startswith(name) for line in lines[2:])
    lira_line = next(line for line in lines if line.startswith("lira"))
    m = attacks["lira"]["metrics"]
    assert f"{m['auc']:.3f} [" in lira_line
    assert f"{100 * m['tpr@0.01fpr']:.2f}%" in lira_line
    assert f"{m['balanced_accuracy']:.3f}" in lira_line
    assert lines[-1].split()[-1] == "-"
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule aligned


def test_format_summary_aggregated():
    text = table.format_summary([{"attack": "lira", "auc": {"mean": 0.7, "std": 0.01}}])
    assert "0.700 ± 0.010" in text


# --------------------------------------------------------------------------- records


def test_vulnerability_csv(tmp_path):
    n = 50
    rng = np.random.default_rng(0)
    ids = np.arange(100, 100 + n)
    member = rng.random(n) < 0.5
    classes = rng.integers(0, 10, n)
    scores = {"loss": rng.normal(size=n), "lira": rng.normal(size=n)}
    scores["lira"][:5] = 0.0  # ties
    path = tmp_path / "records" / "vulnerability.csv"
    records.write_vulnerability_csv(
        path, example_ids=ids, labels_member=member, scores_by_attack=scores, class_labels=classes
    )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert list(rows[0]) == ["id", "class", "member", "loss_score", "loss_rank_pct", "lira_score", "lira_rank_pct"]
    assert [int(r["id"]) for r in rows] == ids.tolist()
    assert [int(r["class"]) for r in rows] == classes.tolist()
    assert [r["member"] == "1" for r in rows] == member.tolist()
    np.testing.assert_array_equal([float(r["loss_score"]) for r in rows], scores["loss"])
    pct = np.array([float(r["loss_rank_pct"]) for r in rows])
    assert pct[np.argmax(scores["loss"])] == 100.0
    assert pct[np.argmin(scores["loss"])] == pytest.approx(100.0 / n)
    lira_pct = [float(r["lira_rank_pct"]) for r in rows[:5]]
    assert len(set(lira_pct)) == 1
    assert [p.name for p in path.parent.iterdir()] == ["vulnerability.csv"]


def test_vulnerability_csv_rejects_length_mismatch(tmp_path):
    with pytest.raises(ValueError):
        records.write_vulnerability_csv(
            tmp_path / "v.csv",
            example_ids=np.arange(3),
            labels_member=np.array([True, False]),
            scores_by_attack={"a": np.zeros(3)},
            class_labels=np.zeros(3, int),
        )
    assert not (tmp_path / "v.csv").exists()
