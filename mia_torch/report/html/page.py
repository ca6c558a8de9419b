"""A run's ``report.html``: built from ``results.json`` and the files beside it, never recomputed.

:func:`write_run_html` is called at the end of every run (study, audit, forget check) and by
``mia-report RUN_DIR``; both read the run directory, so a rebuilt page equals the one written at the
end of the run. ``results.json`` is required (:class:`ReportInputError` names what is wrong with
it); a figure or per-record CSV that is missing or unreadable is named on the page instead of failing it.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from mia_torch.report.html.files import Figure, RecordTable, read_records, run_figures
from mia_torch.report.html.per_record import AuditAnswer, ForgetAnswer, audit_answer, forget_answer
from mia_torch.report.html.render import render_page, write_page
from mia_torch.report.html.sections import Section, shown_sections
from mia_torch.report.html.study import PrivacyFigures, StudyAnswer, privacy_figures, study_answer
from mia_torch.report.html.words import AttackWords, attack_words, threat_words
from mia_torch.report.types import RunResults

__all__ = ["MAX_ROWS", "REPORT_NAME", "ReportInputError", "RunPage", "build_run_page", "finish_run_html",
           "write_run_html"]

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: Most rows of a per-record table on the page (the CSV beside it holds them all).
MAX_ROWS = {"study": 100, "audit": 2000, "forget": 2000}


class ReportInputError(ValueError):
    """The run directory lacks what the page needs (the message names the file and what to do)."""


@dataclass
class RunPage:
    """Everything the run's templates read: the typed results and what the page derives from them."""

    title: str
    run_dir: Path
    results: RunResults
    study: StudyAnswer | None
    audit: AuditAnswer | None
    forget: ForgetAnswer | None
    privacy: PrivacyFigures
    attacks: list[AttackWords]
    threat: list[tuple[str, str]]
    figures: list[Figure] = field(default_factory=list)
    tables: list[tuple[str, RecordTable]] = field(default_factory=list)
    sections: list[Section] = field(default_factory=list)

    @property
    def fprs(self) -> list[float]:
        """Every FPR target some attack measured, largest first."""
        return sorted({f for a in self.results.attacks.values() for f in a.pooled.tpr}, reverse=True)

    @property
    def precision_columns(self) -> list[tuple[float, float]]:
        """Every (membership prior, FPR target) some attack's precision was measured at: FPR, then prior, largest first."""
        pairs = {(p.prior, p.fpr_target) for a in self.results.attacks.values() for p in a.precision}
        return sorted(pairs, key=lambda pair: (-pair[1], -pair[0]))

    @property
    def problems(self) -> list[str]:
        """The files the page would show but cannot, each with why (``roc.png is not in the run directory``)."""
        return [f"{f.file} {f.problem}" for f in self.figures if f.problem] + \
            [f"{t.file} {t.problem}" for _, t in self.tables if t.problem]


def read_results(run_dir: Path) -> RunResults:
    """``run_dir/results.json`` as :class:`RunResults`; :class:`ReportInputError` naming the file otherwise."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise ReportInputError(f"{path} is missing: the page is built from a finished run's results.json "
                               "(a run that stopped early, or a stage=train shard, has none); rerun the run")
    try:
        with open(path, encoding="utf-8") as handle:
            return RunResults.from_dict(json.load(handle), path=str(path))
    except (OSError, ValueError, TypeError, KeyError) as err:  # JSONDecodeError is a ValueError
        raise ReportInputError(f"{path} cannot be read: {err}") from err


def _tables(run_dir: Path, page: RunPage) -> list[tuple[str, RecordTable]]:
    """The per-record tables: the audit's or forget check's records, else each target's most exposed members."""
    if page.audit is not None:
        table = read_records(run_dir / page.audit.records_csv, limit=MAX_ROWS["audit"], order_by="p_gaussian",
                             order="most likely training records first (smallest p_gaussian)")
        return [("Every record asked about", table)]
    if page.forget is not None:
        table = read_records(run_dir / page.forget.records_csv, limit=MAX_ROWS["forget"], order_by="p_gaussian_after",
                             order="most likely still remembered first (smallest p_gaussian_after)")
        return [("Every removed record, before and after removal", table)]
    if page.study is None:
        return []
    attack = page.study.attack
    column = f"{attack}_score"
    return [(f"Target {t}: the training records {attack} flags most",
             read_records(run_dir / f"records_target{t}.csv", limit=MAX_ROWS["study"], order_by=column, descending=True,
                          keep=lambda row: row.get("member") == "1", order=f"members only, highest {column} first",
                          first=("id", "class", "member", column, f"{attack}_rank_pct")))
            for t in page.results.target_ids]


def _title(page: RunPage) -> str:
    dataset = page.results.dataset.get("name", "a dataset")
    if page.audit is not None:
        asked = page.audit.candidates
        return f"Membership audit: {asked} {'record' if asked == 1 else 'records'} asked about ({dataset})"
    if page.forget is not None:
        return f"Forget check: {page.forget.forgotten} records removed by {page.forget.method} ({dataset})"
    if page.results.dp_audit is not None:
        return f"One-run privacy audit: {page.results.dp_audit.canaries} canaries ({dataset})"
    return f"Membership inference study on {dataset}"


def build_run_page(run_dir: str | Path) -> RunPage:
    """Read the run directory into a :class:`RunPage` (raises :class:`ReportInputError`)."""
    run_dir = Path(run_dir)
    results = read_results(run_dir)
    try:
        audit, forget = audit_answer(results), forget_answer(results)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise ReportInputError(f"{run_dir / 'results.json'}: its audit or forget entry is malformed ({err})") from err
    config = results.config
    attack_configs = config.get("attack") if isinstance(config.get("attack"), dict) else {}
    page = RunPage(title="", run_dir=run_dir, results=results, study=study_answer(results), audit=audit,
                   forget=forget, privacy=privacy_figures(results),
                   attacks=[attack_words(name, attack_configs.get(name)) for name in attack_configs],
                   threat=threat_words(config))
    page.title = _title(page)
    page.figures = run_figures(run_dir, results.target_ids, has_attacks=bool(results.attacks))
    page.tables = _tables(run_dir, page)
    page.sections = shown_sections(page)
    return page


def render_run_page(page: RunPage) -> str:
    """The page's HTML."""
    return render_page("run.html.j2", page=page, results=page.results, title=page.title)


def write_run_html(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` from the finished run's files; returns its path."""
    page = build_run_page(run_dir)
    return write_page(Path(run_dir) / REPORT_NAME, render_run_page(page))


def finish_run_html(run_dir: str | Path) -> Path | None:
    """:func:`write_run_html` at the end of a run, whose results are complete by then: a failure is logged and
    printed with the command that retries it, never raised (it would turn a finished run into a failed one)."""
    try:
        return write_run_html(run_dir)
    except Exception as err:  # noqa: BLE001 - the run is done; report.html can be rebuilt
        log.exception("report.html of %s failed", run_dir)
        print(f"report.html of {run_dir} failed: {err}; rebuild it with `mia-report {run_dir}`", flush=True)
        return None
