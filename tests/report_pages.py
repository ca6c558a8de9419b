"""Reading report.html in tests: its numbers (``<data value data-key>``), its tags, and a headless Chromium."""

from __future__ import annotations

import contextlib
import os
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Iterator

#: Where the system's Chromium may be (Debian's `chromium`; MIA_CHROMIUM names another).
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
#: Flags that let Chromium run headless in a container without network or first-run work.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class PageParts(HTMLParser):
    """The page's ``<data>`` numbers (value, JSON pointer, shown text) and every start tag with its attributes."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.numbers: list[tuple[str, str, str]] = []
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self._open: dict[str, str | None] | None = None
        self._text: list[str] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag == "data":
            self._open, self._text = dict(attrs), []

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "data" and self._open is not None:
            self.numbers.append((self._open.get("value") or "", self._open.get("data-key") or "", "".join(self._text)))
            self._open = None


def resolve(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 ``pointer`` in a JSON ``document``."""
    value = document
    for part in pointer.split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


def chromium() -> str | None:
    """The system's Chromium executable, or None."""
    named = os.environ.get("MIA_CHROMIUM")
    if named:
        return named if Path(named).is_file() else None
    return next((path for path in map(shutil.which, CHROMIUM_NAMES) if path), None)


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None when they can)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the Python driver is missing: pip install playwright (the dev extra)"
    if chromium() is None:
        return "Chromium is missing: apt-get install -y chromium (see docs/tests.md)"
    return None


@contextlib.contextmanager
def open_browser() -> Iterator[Any]:
    """The system's headless Chromium driven by Playwright (a fresh temporary profile each launch), closed on exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
