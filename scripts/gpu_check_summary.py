#!/usr/bin/env python3
"""Summarise a ``scripts/gpu_check.sh`` run: ``summary.json`` and ``summary.md``, and print the table.

    python scripts/gpu_check_summary.py --work WORK_DIR --out OUT_DIR [--smoke]

Reads what the stages left in the work folder, each piece optional (a stage that
failed or ran out of time simply has no numbers): ``stages.tsv`` (stage, exit status,
seconds, limit), ``env.json``, ``tests.xml`` (pytest's JUnit report),
``bench_<model>.json`` (``scripts/bench.py``), ``study/results.json`` and
``study_timings.json``. The issue's performance targets are checked where their
numbers exist (not in a smoke run, whose sizes are meaningless). Needs only the
standard library, so it runs even where the check's own imports failed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

STAGE_ORDER = ("env", "tests", "data", "study", "bench_cifar_cnn", "bench_resnet18")
STUDY_ATTACKS = ("loss", "lira_online", "lira_offline", "rmia")
TPR_KEYS = (("tpr@0.01fpr", "TPR@1%FPR"), ("tpr@0.001fpr", "TPR@0.1%FPR"))
TIMEOUT_CODES = ("124", "137")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def stage_table(work: Path) -> list[dict[str, Any]]:
    """One row per stage: status ``ok``, ``failed (exit N)``, ``timeout`` or ``skipped (...)``."""
    rows = []
    try:
        lines = (work / "stages.tsv").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split("\t")
        if len(parts) != 4:
            continue
        name, code, seconds, limit = parts
        if code == "0":
            status = "ok"
        elif code in TIMEOUT_CODES:
            status = "timeout"
        elif code.startswith("skipped"):
            status = code
        else:
            status = f"failed (exit {code})"
        rows.append({"stage": name, "status": status, "seconds": float(seconds or 0), "limit_s": int(limit or 0)})
    return rows


def test_results(path: Path) -> dict[str, Any] | None:
    """Counts and failing test ids from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failures = []
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            failures.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            failures.append(name)
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts | {"failures": failures}


def _row(rows: list[dict[str, Any]], prefix: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["name"].startswith(prefix)), None)


def _ratio(a: dict[str, Any] | None, b: dict[str, Any] | None) -> float | None:
    if a is None or b is None or not b.get("img_per_s"):
        return None
    return a["img_per_s"] / b["img_per_s"]


def bench_summary(path: Path) -> dict[str, Any] | None:
    """The bench rows plus the ratios the targets use."""
    report = _load_json(path)
    if not isinstance(report, dict) or "train" not in report:
        return None
    train, signals = report["train"], report["signals"]
    best_train = max((r for r in train if not r["name"].startswith("naive")), key=lambda r: r["img_per_s"], default=None)
    best_signals = max(
        (r for r in signals if not r["name"].startswith("naive")), key=lambda r: r["img_per_s"], default=None
    )
    return {
        "machine": report.get("machine"),
        "config": report.get("config"),
        "flops_per_image": report.get("flops_per_image"),
        "train": train,
        "signals": signals,
        "ratios": {
            "train_best_vs_naive": _ratio(best_train, _row(train, "naive")),
            "train_best_row": best_train and best_train["name"],
            "train_model_vs_naive": _ratio(_row(train, "train_model"), _row(train, "naive")),
            "vmap_vs_loop": _ratio(_row(train, "train_models[vmap]"), _row(train, "train_models[loop]")),
            "signals_best_vs_naive": _ratio(best_signals, _row(signals, "naive")),
            "signals_best_row": best_signals and best_signals["name"],
        },
    }


def study_summary(work: Path) -> dict[str, Any] | None:
    """Timings, accuracies and the headline attack metrics of the study."""
    timings = _load_json(work / "study_timings.json") or {}
    results = _load_json(work / "study" / "results.json")
    if not isinstance(results, dict):
        return {"timings": timings, "complete": False} if timings else None
    targets = results.get("targets", {})
    models = results.get("models", [])
    target_acc = [t["test_acc"] for t in targets.values() if "test_acc" in t]
    model_acc = [m["test_acc"] for m in models if isinstance(m, dict) and "test_acc" in m]
    attacks = {}
    for name, entry in results.get("attacks", {}).items():
        pooled = entry.get("pooled", {})
        attacks[name] = {"auc": pooled.get("auc"), **{k: pooled.get(k) for k, _ in TPR_KEYS}}
        if entry.get("sanity"):  # null when the run had sanity_check=false
            attacks[name]["sanity_ok"] = entry["sanity"].get("chance_in_ci")
    config = results.get("config", {})
    return {
        "complete": True,
        "timings": timings,
        "train_plus_signals_s": (timings["train_s"] + timings["signals_s"])
        if "train_s" in timings and "signals_s" in timings else None,
        "num_models": len(models),
        "target_ids": results.get("target_ids"),
        "population": results.get("dataset", {}).get("population"),
        "epochs": config.get("train", {}).get("epochs"),
        "queries": config.get("queries"),
        "mean_target_test_acc": sum(target_acc) / len(target_acc) if target_acc else None,
        "mean_model_test_acc": sum(model_acc) / len(model_acc) if model_acc else None,
        "attacks": attacks,
        "versions": results.get("versions"),
    }


def targets(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 12's targets, each with its measured value and whether it is met (None: not measured)."""
    bench = summary.get("bench", {})
    study = summary.get("study") or {}
    lira = (study.get("attacks") or {}).get("lira_online", {})

    def ratio(model: str, key: str) -> float | None:
        return ((bench.get(model) or {}).get("ratios") or {}).get(key)

    checks = [
        ("ResNet-18 training vs naive loop (best row)", ratio("resnet18", "train_best_vs_naive"), ">=", 5.0, "x"),
        ("ResNet-18 signals vs naive loop (best row)", ratio("resnet18", "signals_best_vs_naive"), ">=", 10.0, "x"),
        ("cifar_cnn train_models vmap vs loop", ratio("cifar_cnn", "vmap_vs_loop"), ">=", 2.0, "x"),
        ("study training + signals (s)", study.get("train_plus_signals_s"), "<=", 45.0, "s"),
        ("study mean test accuracy, all models", study.get("mean_model_test_acc"), ">=", 0.88, ""),
        ("LiRA online AUC (pooled)", lira.get("auc"), ">=", 0.71, ""),
        ("LiRA online TPR@0.1%FPR (pooled)", lira.get("tpr@0.001fpr"), ">=", 0.06, ""),
    ]
    out = []
    for what, value, op, goal, unit in checks:
        met = None if value is None else (value >= goal if op == ">=" else value <= goal)
        out.append({"target": what, "measured": value, "goal": f"{op} {goal:g}{unit}", "met": met})
    return out


def _f(value: Any, spec: str = ".3f", suffix: str = "") -> str:
    return "-" if value is None else f"{format(value, spec)}{suffix}"


def _pct(value: Any, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}%"


def markdown(summary: dict[str, Any]) -> str:
    """The human-readable summary."""
    env = summary.get("environment") or {}
    lines = [
        f"# GPU check ({summary['mode']}) — {env.get('gpu') or 'no GPU'} — {summary['date']}",
        "",
        f"torch {env.get('torch', '?')}, CUDA {env.get('cuda') or '-'}, cuDNN {env.get('cudnn') or '-'}, "
        f"Python {env.get('python', '?')}, commit {summary.get('commit') or '?'}",
        "",
        "## Stages",
        "",
        "| stage | status | seconds | limit (s) |",
        "| --- | --- | ---: | ---: |",
    ]
    lines += [f"| {r['stage']} | {r['status']} | {r['seconds']:.1f} | {r['limit_s']} |" for r in summary["stages"]]
    tests = summary.get("tests")
    lines += ["", "## GPU tests (`pytest -m gpu`)", ""]
    if tests is None:
        lines.append("no test report (see tests.log)")
    else:
        lines.append(
            f"{tests['passed']} passed, {tests['failed']} failed, {tests['errors']} errors, {tests['skipped']} skipped"
            + ("; tracebacks in tests.log" if tests["failures"] else "")
        )
        lines += [f"- FAILED {name}" for name in tests["failures"]]
    for model, bench in (summary.get("bench") or {}).items():
        lines += ["", f"## Benchmark: {model}", ""]
        if bench is None:
            lines.append("no results (see bench.log)")
            continue
        cfg, flops = bench.get("config") or {}, bench.get("flops_per_image")
        lines.append(
            f"{cfg.get('dataset')} {cfg.get('num_train')} images x {cfg.get('epochs')} epochs, batch "
            f"{cfg.get('batch_size')}, {cfg.get('num_models')} models together, device {cfg.get('device')}"
            + (f"; FLOPs/image forward {flops['forward'] / 1e6:.1f} M, forward+backward {flops['train'] / 1e6:.1f} M"
               if flops else "")
        )
        lines += ["", "| training | img/s | vs naive | TFLOP/s | test acc |", "| --- | ---: | ---: | ---: | ---: |"]
        for r in bench["train"]:
            flag = " (fell back to loop)" if r.get("fell_back") else ""
            lines.append(f"| {r['name']}{flag} | {r['img_per_s']:.0f} | {_f(r.get('vs_naive'), '.2f', 'x')} | "
                         f"{_f(r.get('tflops'), '.2f')} | {_f(r.get('test_acc'))} |")
        lines += ["", "| signals | img/s | vs naive | TFLOP/s |", "| --- | ---: | ---: | ---: |"]
        for r in bench["signals"]:
            flag = " (fell back to loop)" if r.get("fell_back") else ""
            lines.append(f"| {r['name']}{flag} | {r['img_per_s']:.0f} | {_f(r.get('vs_naive'), '.2f', 'x')} | "
                         f"{_f(r.get('tflops'), '.2f')} |")
    study = summary.get("study")
    lines += ["", "## CIFAR-10 study (`experiment=cifar10_fast`)", ""]
    if not study:
        lines.append("no results (see study.log)")
    else:
        t = study.get("timings", {})
        lines.append(
            f"training {_f(t.get('train_s'), '.1f')} s, signals {_f(t.get('signals_s'), '.1f')} s, attacks "
            f"{_f(t.get('attacks_s'), '.1f')} s, whole run {_f(t.get('total_s') or t.get('elapsed_s'), '.1f')} s; "
            f"peak GPU memory {_f(t.get('cuda_max_memory_gib'), '.1f')} GiB"
            + (f"; {t['trained_models']} models trained, {t['reused_models']} reused from the store"
               if "trained_models" in t else "")
        )
    if study and study.get("complete"):
        lines += [
            f"{study['num_models']} models, targets {study['target_ids']}, population {study['population']}, "
            f"{study['epochs']} epochs, queries {study['queries']}; mean test accuracy: targets "
            f"{_pct(study['mean_target_test_acc'])}, all models {_pct(study['mean_model_test_acc'])}",
            "",
            "| attack | AUC | TPR@1%FPR | TPR@0.1%FPR | sanity |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        order = {name: i for i, name in enumerate(STUDY_ATTACKS)}
        for name in sorted(study["attacks"], key=lambda n: (order.get(n, len(order)), n)):
            a = study["attacks"][name]
            sanity = {True: "ok", False: "FAILED", None: "-"}[a.get("sanity_ok")]
            lines.append(f"| {name} | {_f(a['auc'])} | {_pct(a['tpr@0.01fpr'], 2)} | {_pct(a['tpr@0.001fpr'], 2)} "
                         f"| {sanity} |")
    elif study:
        t = study.get("timings", {})
        lines.append(
            f"the study did not finish: {t.get('models_trained_so_far', 0)} models trained in "
            f"{_f(t.get('training_groups_s'), '.1f')} s before it stopped (its pace in study.log)"
        )
    lines += ["", "## Targets (issue 12)", ""]
    if summary["mode"] == "smoke":
        lines.append("not checked in a smoke run (tiny sizes on CPU)")
    else:
        lines += ["| target | measured | goal | met |", "| --- | ---: | --- | --- |"]
        for t in summary["targets"]:
            met = {True: "yes", False: "NO", None: "not measured"}[t["met"]]
            lines.append(f"| {t['target']} | {_f(t['measured'], '.3f')} | {t['goal']} | {met} |")
    return "\n".join(lines) + "\n"


def summarize(work: Path, *, smoke: bool) -> dict[str, Any]:
    """Everything the stages left in ``work``, as one dict."""
    summary: dict[str, Any] = {
        "mode": "smoke" if smoke else "gpu",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": (work / "commit.txt").read_text().strip() if (work / "commit.txt").is_file() else None,
        "environment": _load_json(work / "env.json"),
        "stages": stage_table(work),
        "tests": test_results(work / "tests.xml"),
        "bench": {
            model: bench_summary(work / f"bench_{model}.json")
            for model in ("cifar_cnn", "resnet18")
            if (work / f"bench_{model}.json").exists() or any(r["stage"] == f"bench_{model}" for r in stage_table(work))
        },
        "study": study_summary(work),
    }
    summary["targets"] = [] if smoke else targets(summary)
    summary["all_ok"] = bool(summary["stages"]) and all(r["status"] == "ok" for r in summary["stages"])
    return summary


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, required=True, help="the work folder the stages wrote to")
    parser.add_argument("--out", type=Path, required=True, help="where summary.json and summary.md go")
    parser.add_argument("--smoke", action="store_true", help="a smoke run: do not check the targets")
    parser.add_argument("--quiet", action="store_true", help="write the files without printing the table")
    args = parser.parse_args(argv)
    summary = summarize(args.work, smoke=args.smoke)
    text = markdown(summary)
    args.out.mkdir(parents=True, exist_ok=True)
    _write(args.out / "summary.json", json.dumps(summary, indent=2, default=str))
    _write(args.out / "summary.md", text)
    if not args.quiet:
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
