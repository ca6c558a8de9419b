"""The Jinja2 environment of the HTML report: templates shipped with the package, autoescaping on.

Every value from a run (attack names, CSV column names, record ids, file names) reaches the page
through a template variable, so it is escaped; nothing is assembled into HTML by hand. The page's
style sheet and its small optional script are package files inserted verbatim, and the page's
Content-Security-Policy allows exactly those two (by hash), images from data URIs, and nothing
else: no request ever leaves the page.
"""
from __future__ import annotations

import base64
import datetime
import hashlib
import math
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from mia_torch.atomic import atomic_open
from mia_torch.metrics.roc import tpr_key
from mia_torch.report.table import format_number, format_percent

__all__ = ["environment", "json_pointer", "render_page", "write_page"]

_PACKAGE = "mia_torch.report.html"


def json_pointer(*parts: Any) -> str:
    """The RFC 6901 pointer to ``parts`` in ``results.json`` (``/attacks/loss/pooled/auc``)."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def _percent(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else format_percent(float(value), digits)


def _number(value: float | None, fmt: str = ".3f") -> str:
    return "—" if value is None else format_number(float(value), fmt)


def _exact(value: float | int | None) -> str:
    """The shortest text that reads back as exactly ``value`` (Python's and JavaScript's float parsing)."""
    if value is None:
        return ""
    if isinstance(value, float) and not math.isfinite(value):
        return "Infinity" if value > 0 else ("-Infinity" if value < 0 else "NaN")
    return repr(value)


def _duration(seconds: float | None) -> str:
    """``seconds`` as a person reads a duration: ``42.1 s``, ``30 min 22 s``, ``2 h 5 min``."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    if seconds < 60:
        return f"{seconds:.1f}\u00a0s"
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}\u00a0min {secs}\u00a0s" if minutes < 60 else f"{minutes // 60}\u00a0h {minutes % 60}\u00a0min"


def _fpr_words(fpr: float) -> str:
    """``1%`` for 0.01, ``0.1%`` for 0.001: an FPR as a person writes it."""
    return f"{100 * float(fpr):g}%"


def _yaml(value: Any) -> str:
    """``value`` (a config section) as YAML, as Hydra writes it."""
    import yaml

    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True, default_flow_style=False).rstrip()


def _infinite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isinf(value)


def _nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


@cache
def environment() -> Environment:
    """The report's Jinja2 environment (autoescaped, strict about undefined names)."""
    env = Environment(loader=PackageLoader(_PACKAGE, "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters.update(percent=_percent, number=_number, exact=_exact, fpr=_fpr_words, yaml=_yaml,
                       duration=_duration)
    env.tests.update(infinite=_infinite, nan=_nan)
    env.globals.update(pointer=json_pointer, tpr_key=tpr_key)
    return env


@cache
def _asset(name: str) -> tuple[Markup, str]:
    """A package file inserted verbatim (``report.css``, ``table.js``) and its CSP source (``'sha256-…'``)."""
    text = resources.files(_PACKAGE).joinpath("templates", name).read_text(encoding="utf-8")
    digest = base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii")
    return Markup(text), f"'sha256-{digest}'"


def render_page(template: str, **context: Any) -> str:
    """Render ``template`` with the page's style and script (and their CSP hashes), the time it is ``written``
    and ``context``."""
    style, style_hash = _asset("report.css")
    script, script_hash = _asset("table.js")
    context.setdefault("written", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"))
    return environment().get_template(template).render(
        style=style, style_hash=style_hash, script=script, script_hash=script_hash, **context)


def write_page(path: Path, html: str) -> Path:
    """Write ``html`` to ``path`` atomically (a reader never sees half a page)."""
    with atomic_open(path, "w") as handle:
        handle.write(html)
    return path
