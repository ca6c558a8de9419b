"""``report.html``: one self-contained page per run, audit, forget check, sweep and privacy-utility study.

The page answers the run's question first, in plain words with the exact figures beside them,
then shows the evidence (figures, metrics with intervals, threat model, fitted knobs, accuracies,
DP ε, provenance). It is rendered from the typed results and the files already in the directory
(Jinja2 templates, autoescaped), never recomputed; ``mia-report DIR`` rebuilds it.
"""
from mia_torch.report.html.page import REPORT_NAME, ReportInputError, build_run_page, finish_run_html, write_run_html

__all__ = ["REPORT_NAME", "ReportInputError", "build_run_page", "finish_run_html", "write_run_html"]
