"""report.html from typed results (no training, no browser): exact numbers, plain answers, escaping,
nothing loaded from outside, and mia-report on complete, incomplete and broken run directories."""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

from report_pages import PageParts, resolve
from results_fixtures import make_results
from mia_torch.report.html import REPORT_NAME, write_run_html
from mia_torch.report.html.cli import main as mia_report
from mia_torch.report.json_file import write_json
from mia_torch.report.plots import new_figure, save_figure
from mia_torch.report.vulnerability import write_vulnerability_csv

CRAFTED = "<script>alert(1)</script>"
CRAFTED_ATTACK = "<img src=x onerror=alert(2)>"
CRAFTED_ID = '<a href="javascript:alert(3)">7</a>'


def _run_dir(root: Path, *, shifts: dict[str, float] | None = None, figures: bool = True) -> Path:
    """A finished run's directory from synthetic typed results: results.json, per-record CSVs, figures."""
    results, scores, keep, labels = make_results(shifts=shifts, bootstrap=50)
    root.mkdir(parents=True)
    for t in results.target_ids:
        write_vulnerability_csv(root / f"records_target{t}.csv", example_ids=np.arange(keep.shape[1]),
                                labels_member=keep[t], scores_by_attack={n: s[t] for n, s in scores.items()},
                                class_labels=labels)
    if figures:
        for stem in ("roc", "slices", *(f"target{t}_confidence" for t in results.target_ids)):
            save_figure(new_figure(2, 1), root / f"{stem}.png")
    write_json(root / "results.json", results.to_dict())
    return root


@pytest.fixture(scope="module")
def leaky(tmp_path_factory) -> Path:
    run_dir = _run_dir(tmp_path_factory.mktemp("html") / "leaky")
    write_run_html(run_dir)
    return run_dir


def test_every_number_on_the_page_is_the_one_in_results_json(leaky):
    saved = json.loads((leaky / "results.json").read_text())
    numbers = PageParts((leaky / REPORT_NAME).read_text()).numbers
    for value, key, shown in numbers:
        assert float(value) == resolve(saved, key), (key, shown)
    strongest = max(saved["attacks"], key=lambda n: (saved["attacks"][n]["pooled"]["tpr@0.01fpr"],
                                                     saved["attacks"][n]["pooled"]["auc"]))
    keys = {key for _, key, _ in numbers}
    assert {f"/attacks/{strongest}/pooled/auc", f"/attacks/{strongest}/pooled/tpr@0.01fpr",
            f"/attacks/{strongest}/pooled/clopper_pearson_ci/tpr@0.01fpr/0"} <= keys
    shown = {key: text for _, key, text in numbers}
    assert shown[f"/attacks/{strongest}/pooled/tpr@0.01fpr"] == \
        f"{100 * saved['attacks'][strongest]['pooled']['tpr@0.01fpr']:.2f}%"


@pytest.mark.parametrize("shift, verdict", [(1.5, "Yes, measurably."), (0.0, "No clear sign.")])
def test_the_answer_says_whether_the_attacks_beat_a_guess(tmp_path, shift, verdict):
    run_dir = _run_dir(tmp_path / "run", shifts={"loss": shift / 3, "lira": shift})
    html = write_run_html(run_dir).read_text()
    answer = re.search(r'<p class="verdict [a-z]+" id="study-verdict">\s*<strong>([^<]+)</strong>', html)
    assert answer is not None and answer.group(1) == verdict


def test_data_from_the_run_is_text_never_markup(tmp_path):
    run_dir = _run_dir(tmp_path / "run")
    saved = json.loads((run_dir / "results.json").read_text())
    saved["attacks"] = {CRAFTED_ATTACK if name == "lira" else name: a for name, a in saved["attacks"].items()}
    write_json(run_dir / "results.json", saved)
    path = run_dir / "records_target0.csv"
    rows = list(csv.reader(path.open()))
    rows[0][3] = CRAFTED  # a column name
    member = next(row for row in rows[1:] if row[2] == "1")  # the page lists members
    member[0] = CRAFTED_ID  # a record id
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    html = write_run_html(run_dir).read_text()
    for crafted in (CRAFTED, CRAFTED_ATTACK, CRAFTED_ID):
        assert crafted not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&lt;img src=x onerror=alert(2)&gt;" in html
    assert "&lt;a href=&#34;javascript:alert(3)&#34;&gt;7&lt;/a&gt;" in html
    tags = PageParts(html).tags
    assert [t for t, _ in tags].count("script") == 1  # the page's own
    assert not any(attrs.get("src") == "x" or "onerror" in attrs or "javascript" in (attrs.get("href") or "")
                   for _, attrs in tags)


def test_the_page_loads_nothing_from_outside_and_runs_only_its_own_script(leaky):
    html = (leaky / REPORT_NAME).read_text()
    tags = PageParts(html).tags
    for tag, attrs in tags:
        for name in ("src", "href"):
            if attrs.get(name) is not None:
                assert attrs[name].startswith(("data:image/png;base64,", "#")), (tag, attrs[name][:40])
    assert not any(tag == "link" for tag, _ in tags)
    policy = next(a["content"] for t, a in tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert "default-src 'none'" in policy and "'unsafe-inline'" not in policy
    script = re.search(r"<script>(.*)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in policy


def test_mia_report_rebuilds_the_page_written_at_the_end_of_the_run(leaky, tmp_path, capsys):
    before = (leaky / REPORT_NAME).read_text()
    assert mia_report([str(leaky)]) == 0
    assert f"wrote {leaky / REPORT_NAME}" in capsys.readouterr().out
    written = re.compile(r"Written [^<]* by mia_torch")  # the one line that differs: when
    assert written.sub("", (leaky / REPORT_NAME).read_text()) == written.sub("", before)


def test_mia_report_names_the_missing_or_broken_results_json(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert mia_report([str(empty)]) == 2
    assert f"{empty / 'results.json'} is missing" in capsys.readouterr().err
    broken = _run_dir(tmp_path / "broken")
    saved = json.loads((broken / "results.json").read_text())
    del saved["targets"]
    write_json(broken / "results.json", saved)
    assert mia_report([str(broken)]) == 2
    err = capsys.readouterr().err
    assert "results.json" in err and "targets" in err
    assert not (broken / REPORT_NAME).exists()
    assert mia_report([str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_mia_report_builds_the_page_without_figures_and_names_what_it_cannot_show(tmp_path, capsys):
    run_dir = _run_dir(tmp_path / "old", figures=False)
    (run_dir / "records_target1.csv").write_bytes(b"id,class\n\xff\xfe\x00")  # not UTF-8 text
    save_figure(new_figure(2, 1), run_dir / "new_analysis.png")  # a figure the page has no caption for
    secret = tmp_path / "secret.png"
    save_figure(new_figure(2, 1), secret)
    (run_dir / "roc.png").symlink_to(secret)  # a link out of the run directory is never embedded
    (run_dir / "slices.png").write_text("not an image")
    assert mia_report([str(run_dir)]) == 0
    err = capsys.readouterr().err
    assert f"{run_dir / 'roc.png'} cannot be read (OSError: roc.png is a link" in err
    assert f"{run_dir / 'slices.png'} is not a PNG image" in err
    for name in ("target0_confidence.png", "target1_confidence.png"):
        assert f"{run_dir / name} is not in the run directory" in err
    assert f"{run_dir / 'records_target1.csv'} cannot be read (UnicodeDecodeError" in err
    html = (run_dir / REPORT_NAME).read_text()
    assert "The figure <code>target0_confidence.png</code> is not in the run directory" in html
    assert html.count("data:image/png;base64,") == 1  # new_analysis.png only
    assert "<code>records_target1.csv</code> cannot be read" in html
    assert 'id="study-verdict"' in html and "Target 0: the training records" in html  # the rest is complete
    assert re.search(r'<img src="data:image/png;base64,[^"]+" alt="new analysis."', html)


def test_a_sweep_page_lists_every_job_and_links_its_page(tmp_path):
    from mia_torch.report.sweep import write_sweep_summary

    sweep = tmp_path / "sweep"
    for name, seed_shift in ((CRAFTED_ATTACK, 1.5), ("1", 0.5)):
        job = _run_dir(sweep / name, shifts={"loss": seed_shift}, figures=False)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(f"- train.lr={seed_shift}\n")
        write_run_html(job)
    (sweep / "2" / ".hydra").mkdir(parents=True)  # a job that did not finish
    (sweep / "2" / ".hydra" / "overrides.yaml").write_text("- train.lr=0.1\n")
    summary = write_sweep_summary(sweep)
    html = summary.html.read_text()
    assert summary.html == sweep / REPORT_NAME and CRAFTED_ATTACK not in html
    links = [attrs["href"] for tag, attrs in PageParts(html).tags if tag == "a" and not attrs["href"].startswith("#")]
    assert links == ["./1/report.html", f"./{CRAFTED_ATTACK}/report.html"]  # as attribute values: escaped in the file
    assert "no results.json (job failed or has not finished)" in html
    assert html.count("<tr>") == 1 + 3  # the header and one row per job


def test_mia_report_defaults_are_the_studys():
    from mia_torch.report import privacy_utility
    from mia_torch.report.html import cli

    assert (cli.STUDY_FPR, cli.ACCURACY_BUDGET) == (privacy_utility.STUDY_FPR, privacy_utility.ACCURACY_BUDGET)


@pytest.mark.parametrize("before, after, verdict", [
    ((0.62, 0.58), (0.51, 0.44), "Yes, as far as these attacks can tell."),
    ((0.62, 0.58), (0.60, 0.55), "No."),
    ((0.52, 0.46), (0.51, 0.44), "Cannot tell."),  # no attack saw the records even before removal
])
def test_the_forget_answer_needs_the_records_seen_before_and_unseen_after(tmp_path, before, after, verdict):
    run_dir = _run_dir(tmp_path / "run")
    saved = json.loads((run_dir / "results.json").read_text())

    def side(auc_low: tuple[float, float]) -> dict:
        auc, low = auc_low
        return {"auc": auc, "auc_ci": [low, 2 * auc - low], "verdict": "indistinguishable from never-seen" if
                low <= 0.5 <= 2 * auc - low else "distinguishable from never-seen"}

    saved["forget"] = {"method": "retrain", "target": 0, "forgotten": 40, "never_seen": 200, "retained": 160,
                       "forgotten_ids": list(range(40)), "fpr": 0.01, "still_flagged": [3],
                       "attacks": {"loss": {"before": side(before), "after": side(after)}},
                       "verdict": side(after)["verdict"], "records_csv": "forget.csv", "after_model": {},
                       "utility": {moment: {"test_acc": 0.9, "retained_acc": 1.0, "forgotten_acc": acc}
                                   for moment, acc in (("before", 1.0), ("after", 0.95))}}
    write_json(run_dir / "results.json", saved)
    html = write_run_html(run_dir).read_text()
    answer = re.search(r'<p class="verdict [a-z]+" id="forget-verdict">\s*<strong>([^<]+)</strong>', html)
    assert answer is not None and answer.group(1) == verdict
    assert "<code>forget.csv</code> is not in the run directory" in html
    for value, key, _ in PageParts(html).numbers:
        assert float(value) == resolve(saved, key), key
