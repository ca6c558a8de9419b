"""Report: TensorBoard contents, figures, results.json, the printed summary, per-record CSV."""
import csv
import io
import json

import numpy as np
import pytest
import torch

from mia_torch.atomic import atomic_open
from mia_torch.metrics import membership_metrics, roc_curve
from mia_torch.report import json_file, plots, table, tensorboard, vulnerability
from mia_torch.report.pictures import ImageSource
from results_fixtures import make_results

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
    fig = plots.roc_figure(curves, title="test", reliable_fpr=10 / 300)
    ax_log, ax_lin = fig.axes[:2]
    assert ax_log.get_xscale() == "log" and ax_log.get_yscale() == "log"
    assert ax_lin.get_xscale() == "linear"
    lo, hi = ax_log.get_xlim()
    assert 1e-5 <= lo < 0.01 and hi == 1.0
    texts = [t.get_text() for t in fig.legends[0].get_texts()]
    auc = curves["lira"][2]
    assert any(t.startswith(f"lira (AUC={auc:.3f}, TPR@0.1%=") for t in texts)
    assert any(t.startswith("loss (AUC=") for t in texts)
    assert "chance" in texts
    assert "FPR < 10/N: < 10 false positives" in texts  # the shaded low-FPR region

    path = tmp_path / "sub" / "roc.png"
    plots.save_figure(fig, path)
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert sorted(p.name for p in path.parent.iterdir()) == ["roc.png"]


def test_a_long_roc_is_drawn_through_its_highest_points_at_evenly_spaced_fprs():
    from mia_torch.metrics import roc_curve
    from mia_torch.report.plots import drawn_points

    rng = np.random.default_rng(0)
    members = rng.random(200_000) < 0.5
    fpr, tpr, _ = roc_curve(rng.standard_normal(members.size) + members, members)
    few, low = drawn_points(fpr, tpr, max_points=400)
    assert few.size <= 402 and (few[0], few[-1], low[0], low[-1]) == (fpr[0], fpr[-1], tpr[0], tpr[-1])
    for f in np.concatenate([np.geomspace(fpr[fpr > 0].min(), 1.0, 100), np.linspace(0.0, 1.0, 100)]):
        assert low[few <= f].max() == tpr[fpr <= f].max()  # the highest TPR at or below each drawn FPR
    same = drawn_points(fpr[:300], tpr[:300], max_points=400)
    assert np.array_equal(same[0], fpr[:300]) and np.array_equal(same[1], tpr[:300])  # short curves: every point


def test_a_kept_pooled_curve_is_thinned_with_its_legend_tpr_exact():
    """The pooled ROC kept for the figures holds at most MAX_CURVE_POINTS (+ a few) of its points, and the TPR the
    legend reads at LEGEND_FPR is the whole curve's."""
    from mia_torch.metrics.roc import LEGEND_FPR, MAX_CURVE_POINTS, curve_points, roc_curve, tpr_at_fpr
    from mia_torch.report.types import RocCurve

    rng = np.random.default_rng(1)
    members = rng.random(300_000) < 0.5
    full = RocCurve(*roc_curve(rng.standard_normal(members.size) + 2 * members, members))
    kept = full.thinned()
    assert kept.fpr.size <= MAX_CURVE_POINTS + 4 < full.fpr.size
    assert tpr_at_fpr(kept.fpr, kept.tpr, LEGEND_FPR) == tpr_at_fpr(full.fpr, full.tpr, LEGEND_FPR)
    assert np.isin(kept.thresholds, full.thresholds).all()
    few = curve_points(full.fpr, max_points=40)  # a coarse grid rarely lands on LEGEND_FPR's point by itself
    assert tpr_at_fpr(full.fpr[few], full.tpr[few], LEGEND_FPR) == tpr_at_fpr(full.fpr, full.tpr, LEGEND_FPR)


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
    """The report of a run, written from typed results by the pipeline's own report writer."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from mia_torch.evaluation import pooled
    from mia_torch.report.write_run import write_run_report

    run_dir = tmp_path_factory.mktemp("report")
    results, scores, keep, labels = make_results(targets=(0, 1))
    results.target_ids = [0]  # figures of one target (both are evaluated)
    results.config["dataset"] = {"name": "synthetic"}
    eval_mask = np.ones(keep.shape[1], bool)
    logits = {t: np.random.default_rng(t).normal(size=(keep.shape[1], 4)) + 3 * keep[t][:, None] * np.eye(4)[labels]
              for t in (0,)}
    images = ImageSource(torch.rand(keep.shape[1], 1, 8, 8), (0.0,), (1.0,))
    write_run_report(run_dir, results, scores=scores, keep=keep, eval_mask=eval_mask, labels=labels,
                     target_logits=logits, images=images)
    log_dir = run_dir / "tensorboard"
    acc = EventAccumulator(str(log_dir), size_guidance={"images": 0, "tensors": 0, "histograms": 0, "scalars": 0})
    acc.Reload()
    pooled_scores = {name: pooled(per, keep, eval_mask) for name, per in scores.items()}
    return log_dir, acc, results, pooled_scores


def test_run_report_writes_every_figure_as_png_and_results_json_last(tb_report):
    log_dir, _, results, _ = tb_report
    run_dir = log_dir.parent
    for stem in ("roc", "slices", "target0_confidence", "target0_exposed"):
        assert (run_dir / f"{stem}.png").read_bytes()[:8] == PNG_MAGIC, stem
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved == json.loads(json.dumps(results.to_dict()))
    assert {p.name for p in run_dir.glob("records_target*.csv")} == {"records_target0.csv"}


def test_tensorboard_single_run_dir(tb_report):
    log_dir, _, _, _ = tb_report
    files = list(log_dir.rglob("*"))
    assert all(f.parent == log_dir for f in files)  # nothing in sub-runs
    assert len([f for f in files if f.name.startswith("events.out.tfevents")]) == 1


def test_tensorboard_scalars_come_from_the_typed_results(tb_report):
    _, acc, results, _ = tb_report
    tags = set(acc.Tags()["scalars"])
    for i in range(4):
        assert f"model/{i}/train_acc" in tags
    assert [e.step for e in acc.Scalars("model/0/epoch_train_loss")] == [1, 2]
    assert acc.Scalars("target/1/test_acc")[0].value == pytest.approx(0.8)
    for name, attack in results.attacks.items():
        pooled = attack.pooled
        expected = {"auc": pooled.auc, "advantage": pooled.advantage, "tpr@0.01fpr": pooled.tpr[0.01],
                    "tpr@0.001fpr": pooled.tpr[0.001], "resolvable_fpr": 1 / pooled.num_nonmembers,
                    "sanity_auc": attack.sanity.auc}
        for key, value in expected.items():
            (event,) = acc.Scalars(f"attack/{name}/{key}")
            assert event.value == pytest.approx(value, rel=1e-6, abs=1e-7), (name, key)
        for piece in attack.slices:
            if piece.metrics is not None:
                assert acc.Scalars(f"slice/{name}/{piece.name}/auc")[0].value == pytest.approx(piece.metrics.auc,
                                                                                              rel=1e-6)
    assert acc.Scalars("hparam/lira/auc")[0].value == pytest.approx(results.attacks["lira"].pooled.auc, rel=1e-6)


def test_tensorboard_images_are_readable_at_native_size(tb_report):
    from PIL import Image

    _, acc, _, _ = tb_report
    tags = set(acc.Tags()["images"])
    assert tags == {"report/roc", "report/slices", "report/target0_confidence", "report/target0_exposed"}
    assert sorted(tags)[0] == "report/roc"  # the first card
    for tag in tags:
        (event,) = acc.Images(tag)
        png = event.encoded_image_string
        assert png[:8] == PNG_MAGIC
        img = Image.open(io.BytesIO(png))
        img.load()
        assert img.size == (event.width, event.height)
        # TensorBoard's image tab draws every image 350 pixels wide: letters must stay >= 10 pixels there.
        assert event.width == round(100 * plots.FIGURE_WIDTH)
        assert plots.FONT_SIZE * 100 / 72 * 350 / event.width >= 10


def test_tensorboard_pr_curves_and_histograms(tb_report):
    from tensorboard.util import tensor_util

    _, acc, _, pooled_scores = tb_report
    assert set(acc.PluginTagToContent("pr_curves")) == {f"pr/{name}" for name in pooled_scores}
    for name, (scores, members) in pooled_scores.items():
        (event,) = acc.Tensors(f"pr/{name}")
        data = tensor_util.make_ndarray(event.tensor_proto)
        assert data.shape[0] == 6  # TP, FP, TN, FN, precision, recall
        assert data[0][0] == members.sum() and data[1][0] == (~members).sum()
        (h,) = acc.Histograms(f"scores/{name}/member")
        assert h.histogram_value.num == members.sum()
        assert h.histogram_value.max == pytest.approx(scores[members].max())


def test_tensorboard_hparams(tb_report):
    from tensorboard.plugins.hparams import plugin_data_pb2

    _, acc, results, _ = tb_report
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hp = start.session_start_info.hparams
    assert hp["train.lr"].number_value == pytest.approx(0.1)
    assert hp["dataset.name"].string_value == "synthetic"
    assert hp["num_models"].number_value == 4
    exp = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {m.name.tag for m in exp.metric_infos} == set(tensorboard.summary_metrics(results))
    assert "hparam/target_test_acc" in {m.name.tag for m in exp.metric_infos}


def test_tensorboard_rejects_invalid_scores(tmp_path):
    results, scores, keep, _ = make_results()
    bad = scores["loss"][0].copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        tensorboard.write_report(tmp_path / "bad", results, pooled_scores={"loss": (bad, keep[0])}, images={},
                                 hparams={})
    assert not (tmp_path / "bad").exists()


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
    json_file.write_json(path, obj)
    back = json_file.read_json(path)
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
    json_file.write_json(path, {"a": 1})
    with pytest.raises(TypeError):
        json_file.write_json(path, {"a": object()})
    with pytest.raises(RuntimeError):
        with atomic_open(path, "w") as f:
            f.write("partial")
            raise RuntimeError("interrupted")
    assert json_file.read_json(path) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]


# ----------------------------------------------------------------------------- summary


def test_summary_marks_tprs_below_ten_over_n_and_gives_both_intervals():
    """750 non-members (the default run's count): 1% FPR is unreliable, 0.1% below the resolvable 1/750."""
    results, _, _, _ = make_results(num_examples=1500, targets=(0,))
    text = table.format_summary(results)
    lines = text.splitlines()
    assert lines[0] == "defense: none; output: logits"
    assert lines[1] == "target 0: train acc 0.950, test acc 0.800"
    header, rule = lines[2], lines[3]
    assert header.split()[:2] == ["attack", "AUC"] and "TPR@1%FPR" in header and "TPR@0.1%FPR" in header
    assert len(header) <= len(rule) + 1
    lira = results.attacks["lira"].pooled
    row = next(line for line in lines if line.startswith("lira "))
    low, high = lira.ci["auc"]
    assert f"{lira.auc:.3f} [{low:.3f}, {high:.3f}]" in row
    cp_low, cp_high = lira.tpr_exact_ci[0.001]
    assert f"{100 * lira.tpr[0.001]:.2f}%** [{100 * cp_low:.2f}, {100 * cp_high:.2f}]" in row
    assert f"{100 * lira.tpr[0.01]:.2f}%* [" in row
    assert "resolvable FPR: 1/N = 0.133% with N = 750 non-members" in text
    assert "\n* unreliable: FPR below 10/N = 1.333%" in text
    assert "\n** below the resolvable FPR 1/N = 0.133%: not measurable" in text
    assert "sanity (untrained target, AUC should be 0.5): ok" in text


def test_summary_does_not_mark_a_resolvable_fpr():
    results, _, _, _ = make_results(num_examples=4000, targets=(0,))  # 2000 non-members: 1% is 20 false positives
    row = next(line for line in table.format_summary(results).splitlines() if line.startswith("lira "))
    lira = results.attacks["lira"].pooled
    assert f"{100 * lira.tpr[0.01]:.2f}% [" in row and f"{100 * lira.tpr[0.001]:.2f}%* [" in row
    assert "** below the resolvable FPR" not in table.format_summary(results)  # 0.1% is 2 false positives


def test_summary_names_the_most_exposed_class_and_skipped_slices():
    results, _, _, _ = make_results(num_examples=400, targets=(0,), num_classes=4)
    lira = results.attacks["lira"]
    best = max((s for s in lira.slices if s.kind == "class"), key=lambda s: s.metrics.auc)
    text = table.format_summary(results)
    assert f"slices (lira, the strongest attack): most exposed class {best.name[6:]} (AUC {best.metrics.auc:.3f}" in text
    results.attacks["lira"].slices[0].metrics = None
    results.attacks["lira"].slices[0].skipped = "3 members and 40 non-members (each needs at least 10)"
    assert f"skipped slices: {lira.slices[0].name}: 3 members" in table.format_summary(results)


def test_strongest_attack_prefers_low_fpr_when_it_is_measurable():
    results, _, _, _ = make_results(num_examples=4000, targets=(0,), shifts={"auc_only": 1.0, "low_fpr": 1.0})
    a, b = results.attacks["auc_only"].pooled, results.attacks["low_fpr"].pooled
    a.auc, b.auc = 0.9, 0.8
    a.tpr[0.01], b.tpr[0.01] = 0.05, 0.2  # 1% FPR is measurable with 2000 non-members; 0.1% is not
    assert results.strongest_attack() == "low_fpr"
    results.attacks["auc_only"].pooled.num_nonmembers = results.attacks["low_fpr"].pooled.num_nonmembers = 500
    assert results.strongest_attack() == "auc_only"  # nothing measurable: the highest AUC


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
    vulnerability.write_vulnerability_csv(
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
        vulnerability.write_vulnerability_csv(
            tmp_path / "v.csv",
            example_ids=np.arange(3),
            labels_member=np.array([True, False]),
            scores_by_attack={"a": np.zeros(3)},
            class_labels=np.zeros(3, int),
        )
    assert not (tmp_path / "v.csv").exists()
