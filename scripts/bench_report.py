#!/usr/bin/env python
"""Measure report.html of a finished run: time to write it (fresh process and warm), its size, and opening it
offline in headless Chromium (load time, requests), side by side.

Usage: python scripts/bench_report.py outputs/runs/<date>/<time> [--repeat 5]
The page is rewritten in place (as `mia-report RUN_DIR` would). Chromium is optional (skipped with a note).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_FRESH = ("import sys, time; t = time.perf_counter(); from mia_torch.report.html import write_run_html; "
          "u = time.perf_counter(); write_run_html(sys.argv[1]); print(u - t, time.perf_counter() - u)")


def _fresh_seconds(run_dir: Path) -> tuple[float, float]:
    """In a new process: seconds to import the writer, then to write the first page (templates compiled).

    A run pays only the second at its end (it has imported everything by then); ``mia-report`` pays both.
    """
    out = subprocess.run([sys.executable, "-c", _FRESH, str(run_dir)], capture_output=True, text=True, check=True)
    imported, written = map(float, out.stdout.split()[-2:])
    return imported, written


def _open_offline(page_path: Path) -> tuple[float, list[str], int] | None:
    """Seconds to load the page from its file URL with networking off, the URLs it asked for, figures drawn."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from report_pages import browser_missing, open_browser

    if browser_missing():
        print(f"browser: skipped ({browser_missing()})")
        return None
    with open_browser() as browser:
        context = browser.new_context(offline=True)
        page = context.new_page()
        requests: list[str] = []
        page.on("request", lambda request: requests.append(request.url))
        start = time.perf_counter()
        page.goto(page_path.as_uri(), wait_until="load")
        seconds = time.perf_counter() - start
        drawn = page.eval_on_selector_all("figure img", "imgs => imgs.filter(i => i.naturalWidth > 0).length")
        context.close()
    return seconds, requests, drawn


def main(argv: list[str] | None = None) -> int:
    """Write the page ``--repeat`` times each way and print the measurements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    from mia_torch.report.html import REPORT_NAME, write_run_html

    fresh = [_fresh_seconds(args.run_dir) for _ in range(args.repeat)]
    imports, first = [i for i, _ in fresh], [w for _, w in fresh]
    warm = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        path = write_run_html(args.run_dir)
        warm.append(time.perf_counter() - start)
    size = path.stat().st_size
    figures = sum(p.stat().st_size for p in args.run_dir.glob("*.png"))
    print(f"write {REPORT_NAME}: first page of a process (templates compiled) median {statistics.median(first):.2f} s "
          f"(max {max(first):.2f}), later pages median {statistics.median(warm):.2f} s, over {args.repeat}; importing "
          f"the writer into a fresh interpreter (mia-report only) median {statistics.median(imports):.2f} s")
    print(f"size: {size / 1e6:.2f} MB ({size} bytes; the run's PNG figures are {figures / 1e6:.2f} MB before base64)")
    opened = _open_offline(path)
    if opened is not None:
        seconds, requests, drawn = opened
        others = [u for u in requests if not u.startswith(("file:", "data:"))]
        print(f"offline in Chromium: loaded in {seconds:.2f} s, {len(requests)} request(s) "
              f"({len(others)} outside the file and its data URIs), {drawn} figure(s) drawn")
    return 0


if __name__ == "__main__":
    sys.exit(main())
