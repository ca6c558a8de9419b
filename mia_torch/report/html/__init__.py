"""``report.html``: one self-contained page per run, audit, forget check, sweep and privacy-utility study.

The page answers the run's question first, in plain words with the exact figures beside them,
then shows the evidence (figures, metrics with intervals, threat model, fitted knobs, accuracies,
DP ε, provenance). It is rendered from the typed results and the files already in the directory
(Jinja2 templates, autoescaped), never recomputed; ``mia-report DIR`` rebuilds it.

Names are imported on use (from :mod:`~mia_torch.report.html.page`), so that ``mia-report --help``
does not load the metrics.
"""
import importlib
from typing import Any

__all__ = ["REPORT_NAME", "ReportInputError", "build_run_page", "finish_run_html", "write_run_html"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module(f"{__name__}.page"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
