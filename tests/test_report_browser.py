"""The report.html of a study, an audit and a forget check, opened in a real browser (headless Chromium).

Three tiny runs share one store (the audit and the forget check reuse the study's models). The
pages' numbers are checked against results.json with and without a browser; the browser tests
skip, with the reason, where Chromium or its Python driver is missing (docs/tests.md
says how to install them). Each browser test saves screenshots (the top of the page) under its
tmp dir.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from helpers import TINY, run_experiment
from report_pages import PageParts, browser_missing, open_browser, resolve
from mia_torch.report.html import REPORT_NAME
from mia_torch.report.html.cli import main as mia_report

ATTACKS = "attack=[loss,lira_offline,rmia]"
KINDS = ("study", "audit", "forget")
NARROW = 400
CRAFTED_COLUMN = "<script>alert(1)</script>"
CRAFTED_ID = "<img src=x onerror=alert(2)>"

needs_browser = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """A study, an audit of its target with its members known, and a forget check, sharing one store."""
    root = tmp_path_factory.mktemp("report_runs")
    study = run_experiment(root, [*TINY, ATTACKS], name="study")
    members = root / "members.npy"
    np.save(members, np.flatnonzero(np.load(root / "study" / "keep.npy")[0]))
    run_experiment(root, [*TINY, ATTACKS, f"audit.checkpoint={study.targets[0].checkpoint}",
                          f"audit.members={members}"], name="audit")
    run_experiment(root, [*TINY, ATTACKS, "forget.method=retrain", "forget.count=40"], name="forget")
    return {kind: root / kind for kind in KINDS}


@pytest.fixture(scope="module")
def browser():
    with open_browser() as chromium:
        yield chromium


#: Numbers each page must show in its answer (JSON pointers into results.json); ``{a}``: every attack.
HEADLINE = {
    "study": ["/attacks/{strongest}/pooled/auc", "/attacks/{strongest}/pooled/tpr@0.01fpr",
              "/attacks/{strongest}/pooled/clopper_pearson_ci/tpr@0.01fpr/0"],
    "audit": ["/audit/flagged", "/audit/candidates", "/audit/fpr"],
    "forget": ["/forget/attacks/{a}/before/auc", "/forget/attacks/{a}/after/auc", "/forget/attacks/{a}/after/auc_ci/0",
               "/forget/forgotten"],
}


def _headline(kind: str, saved: dict) -> set[str]:
    pooled = {n: a["pooled"] for n, a in saved["attacks"].items()}
    strongest = max(pooled, key=lambda n: (pooled[n]["tpr@0.01fpr"], pooled[n]["auc"]))
    keys = set()
    for key in HEADLINE[kind]:
        names = saved["forget"]["attacks"] if "{a}" in key else [None]
        keys |= {key.format(strongest=strongest, a=name) for name in names}
    return keys


@pytest.mark.parametrize("kind", KINDS)
def test_each_number_on_the_page_is_the_one_in_results_json(runs, kind):
    saved = json.loads((runs[kind] / "results.json").read_text())
    numbers = PageParts((runs[kind] / REPORT_NAME).read_text()).numbers
    for value, key, shown in numbers:
        assert float(value) == resolve(saved, key), (key, shown)
    assert _headline(kind, saved) <= {key for _, key, _ in numbers}


def _open(browser, path: Path, *, width: int = 1000, scripts: bool = True):
    """A page showing ``path`` from its file URL with networking off; console errors and requests recorded."""
    context = browser.new_context(offline=True, viewport={"width": width, "height": 900}, java_script_enabled=scripts)
    page = context.new_page()
    page.problems, page.requests = [], []
    page.on("console", lambda message: page.problems.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: page.problems.append(str(error)))
    page.on("dialog", lambda dialog: (page.problems.append(f"dialog {dialog.message}"), dialog.dismiss()))
    page.on("request", lambda request: page.requests.append(request.url))
    page.goto(path.as_uri(), wait_until="load")
    return page


@needs_browser
@pytest.mark.parametrize("kind", KINDS)
def test_the_page_opens_offline_with_every_figure_drawn_and_the_headline_exact(runs, browser, kind, tmp_path):
    run_dir = runs[kind]
    saved = json.loads((run_dir / "results.json").read_text())
    page = _open(browser, run_dir / REPORT_NAME)
    page.screenshot(path=tmp_path / f"{kind}.png")
    assert page.problems == []
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    figures = page.eval_on_selector_all("figure img", "imgs => imgs.map(i => [i.naturalWidth, "
                                        "i.getBoundingClientRect().width, i.getBoundingClientRect().height])")
    assert len(figures) == len(list(run_dir.glob("*.png"))) == 4  # roc, confidence, exposed records, slices
    assert all(natural > 0 and width > 0 and height > 0 for natural, width, height in figures), figures
    shown = page.eval_on_selector_all("section.answer data[data-key]",
                                      "items => items.map(d => [d.value, d.dataset.key, d.textContent])")
    assert shown and all(float(value) == resolve(saved, key) for value, key, _ in shown), shown
    page.context.close()


@needs_browser
@pytest.mark.parametrize("kind", KINDS)
def test_the_page_reads_at_400_pixels_and_without_scripts(runs, browser, kind, tmp_path):
    path = runs[kind] / REPORT_NAME
    narrow = _open(browser, path, width=NARROW)
    narrow.screenshot(path=tmp_path / f"{kind}_{NARROW}.png")
    assert narrow.problems == []
    assert narrow.evaluate("document.documentElement.scrollWidth") <= NARROW  # no sideways scrolling of the page
    blocks = "figure img, .scroll, .verdict, p, li, dd, h1, h2"  # a wide table scrolls inside its .scroll box
    assert max(narrow.eval_on_selector_all(blocks, "xs => xs.map(x => x.getBoundingClientRect().right)")) <= NARROW
    assert float(narrow.evaluate("getComputedStyle(document.body).fontSize")[:-2]) >= 14
    assert narrow.eval_on_selector("section.answer .verdict", "v => v.getBoundingClientRect().top") < 2 * 900
    counts = "() => [document.querySelectorAll('tbody tr').length, document.querySelectorAll('data').length]"
    static = _open(browser, path, scripts=False)
    assert static.problems == [] and static.evaluate(counts) == narrow.evaluate(counts)
    assert static.query_selector_all(".table-tools") == [] and narrow.query_selector_all(".table-tools")
    narrow.context.close()
    static.context.close()


@needs_browser
def test_the_records_table_can_be_searched_by_id_and_sorted(runs, browser):
    page = _open(browser, runs["audit"] / REPORT_NAME)
    table = "table.records"
    ids = page.eval_on_selector_all(f"{table} tbody tr td:first-child", "cells => cells.map(c => c.textContent)")
    page.fill("input[type=search]", ids[-1])
    visible = page.eval_on_selector_all(f"{table} tbody tr:not([hidden]) td:first-child",
                                        "cells => cells.map(c => c.textContent)")
    assert ids[-1] in visible and len(visible) < len(ids)
    page.fill("input[type=search]", "")
    page.click(f"{table} thead th:first-child button")
    ascending = page.eval_on_selector_all(f"{table} tbody tr td:first-child", "cells => cells.map(c => +c.textContent)")
    assert ascending == sorted(ascending) and page.get_attribute(f"{table} thead th:first-child", "aria-sort") == \
        "ascending"
    assert page.problems == []
    page.context.close()


@needs_browser
def test_a_crafted_column_name_and_record_id_render_as_text(runs, browser, tmp_path):
    run_dir = tmp_path / "crafted"
    shutil.copytree(runs["audit"], run_dir)
    rows = list(csv.reader((run_dir / "records.csv").open()))
    rows[0][3] = CRAFTED_COLUMN
    rows[1][0] = CRAFTED_ID
    with (run_dir / "records.csv").open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    assert mia_report([str(run_dir)]) == 0
    page = _open(browser, run_dir / REPORT_NAME)
    page.screenshot(path=tmp_path / "crafted.png")
    assert page.problems == []  # no alert, no blocked inline script
    headers = page.eval_on_selector_all("table.records thead th", "ths => ths.map(t => t.textContent)")
    cells = page.eval_on_selector_all("table.records tbody td:first-child", "tds => tds.map(t => t.textContent)")
    assert CRAFTED_COLUMN in headers and CRAFTED_ID in cells
    assert page.evaluate("document.scripts.length") == 1 and page.query_selector("img[src=x]") is None
    page.context.close()
