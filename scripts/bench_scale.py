#!/usr/bin/env python3
"""Scale benchmark: signals -> attacks -> report at paper scale, on stored synthetic model outputs (no training).

    python scripts/bench_scale.py                       # the grid below (writes up to 12 GB under --root)
    python scripts/bench_scale.py --models 16 64 --queries 2 --classes 10   # part of it
    python scripts/bench_scale.py --configs 256:18:10 64:18:100   # chosen (M:Q:C) configurations only
    python scripts/bench_scale.py --quick               # tiny sizes: checks that the script works

For each configuration (M models, N examples, Q queries, C classes) a builder process writes M
synthetic logits artifacts ``[N, Q, C]`` (float32; float16 for C = 100) into a fresh store under
the keys a study of that config would use. Their true-class logit is ``4 * (difficulty of the
example + EFFECT * member + noise)`` over standard normal logits: a known membership effect
that per-example calibration (LiRA, RMIA) separates from the difficulty. Then, in a fresh
process per configuration, it runs the study's own stages for ``loss, lira_online,
lira_offline, rmia``:

* ``signals``: every model's stored logits reduced to the attacks' features (read once each);
* ``attacks``: every attack fitted on each target's references and the target scored;
* ``report``: metrics with bootstrap intervals (``metrics``, timed on their own), then
  ``scores.npz``, ``results.json``, the per-record CSVs, figures and TensorBoard;

and prints the wall time and the peak RSS of each stage (the process's high-water mark,
reset at the start of each stage through ``/proc/self/clear_refs``), then the growth ratios
(M = 64 -> 256 at the same N, Q, C), every model as a target against one target, and, where
the dense ``[M, N, Q, C]`` array fits, the streaming path against the dense in-memory one
(the served logits of every model stacked in memory, every attack refitted from scratch
on each target's references' logits). Each store is deleted when its configurations are done.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

ATTACKS = "[loss,lira_online,lira_offline,rmia]"
#: LiRA's 18 views: mirror x the 9 shifts by at most one pixel.
QUERY_SETS = {
    2: ["identity", "flip"],
    18: [f"{flip}shift_{dx}_{dy}" for flip in ("", "flip_") for dx in (-1, 0, 1) for dy in (-1, 0, 1)],
}
EFFECT = 0.5  # members' lift of the true-class logit, in units of the per-model noise
#: Largest dense float32 array [M, N, Q, C] the dense in-memory comparison is run for.
DENSE_LIMIT_BYTES = 1.1e9


# ------------------------------------------------------------------ one process


def _peak_reset() -> None:
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")  # resets the peak RSS (VmHWM) to the current RSS


def _peak_gb() -> float:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def _stage(record: dict[str, Any], name: str) -> Iterator[None]:
    """Wall time, CPU time (every thread of the process) and peak RSS of the ``with`` block."""
    _peak_reset()
    start, cpu = time.perf_counter(), _cpu_s()
    yield
    record[name] = {"s": round(time.perf_counter() - start, 2), "cpu_s": round(_cpu_s() - cpu, 2),
                    "peak_gb": round(_peak_gb(), 3)}
    print(f"  {name}: {record[name]['s']:.1f} s ({record[name]['cpu_s']:.1f} s CPU), peak RSS "
          f"{record[name]['peak_gb']:.2f} GB", file=sys.stderr, flush=True)


def compose(spec: dict[str, Any], targets: str) -> Any:
    """The study config of one configuration."""
    from hydra import compose as hydra_compose, initialize_config_dir

    from mia_torch.settings.schemas import register_configs

    queries = ",".join(QUERY_SETS[spec["queries"]])
    overrides = [
        "dataset=synthetic", f"dataset.num_examples={spec['examples']}", "dataset.num_test=200",
        f"dataset.num_classes={spec['classes']}", "model=mlp", f"num_models={spec['models']}",
        f"target_ids={targets}", f"queries=[{queries}]", f"signals_dtype={spec['dtype']}", f"attack={ATTACKS}",
        "sanity_check=false", "progress=false", f"bootstrap={spec['bootstrap']}", f"store_dir={spec['store']}",
    ]
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        return hydra_compose("config", overrides=overrides)


def build_store(spec: dict[str, Any]) -> None:
    """Write the synthetic logits of every model into the store (skipping those already there)."""
    import numpy as np

    from mia_torch.pipeline import prepare
    from mia_torch.stages.context import key_of, signal_key
    from mia_torch.store import array_to_bytes

    ctx = prepare(compose(spec, "[0]"), Path(spec["store"]) / "builder")
    n, q, c = spec["examples"], spec["queries"], spec["classes"]
    labels = ctx.data.y.cpu().numpy()
    difficulty = np.random.default_rng([spec["seed"], 0]).normal(0.0, 1.0, n).astype(np.float32)
    dtype = np.float16 if spec["dtype"] == "float16" else np.float32
    for m in range(spec["models"]):
        key = signal_key(ctx.settings, key_of(ctx, m))
        if ctx.store.contains("signals", key):
            continue
        rng = np.random.default_rng([spec["seed"], 1, m])
        z = rng.standard_normal((n, q, c), dtype=np.float32)
        lift = difficulty[:, None] + EFFECT * ctx.splits.keep[m][:, None] + rng.standard_normal((n, q), dtype=np.float32)
        z[np.arange(n)[:, None], np.arange(q)[None, :], labels[:, None]] += 4.0 * lift
        array = z.astype(dtype)
        del z
        ctx.store.save("signals", key, array_to_bytes(array), {"model": m, "shape": list(array.shape)})


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run the stages of one configuration; wall time and peak RSS of each."""
    import mia_torch.stages.report as report_module
    from mia_torch.pipeline import prepare
    from mia_torch.stages.attack_runs import feature_table
    from mia_torch.stages.attacks import attack_stage
    from mia_torch.stages.signals import record_signals, signals_stage

    cfg = compose(spec, spec["targets"])
    run_dir = Path(spec["store"]) / f"run_{spec['targets']}"
    record: dict[str, Any] = {}
    started = time.time()
    ctx = prepare(cfg, run_dir)
    s = ctx.settings
    with _stage(record, "signals"):
        source = signals_stage(ctx)
        record_signals(ctx, source)
        table = feature_table(ctx.splits, source, ctx.attacks, device=s.device)
    with _stage(record, "attacks"):
        outputs = attack_stage(ctx, table, source)
        del table  # as in a study: the report reads the scores, not the features
    parts: dict[str, dict[str, float]] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapped(*a: Any, **k: Any) -> Any:
            start, cpu = time.perf_counter(), _cpu_s()
            try:
                return fn(*a, **k)
            finally:
                parts[name] = {"s": round(time.perf_counter() - start, 2), "cpu_s": round(_cpu_s() - cpu, 2)}
        return wrapped

    report_module.evaluate_attacks = timed("metrics", report_module.evaluate_attacks)  # incl. bootstrap
    report_module.write_run_report = timed("writing", report_module.write_run_report)
    with _stage(record, "report"):
        results = report_module.report_study(
            ctx, cfg, started, model_metrics=[{"model": m} for m in range(s.num_models)],
            target_metrics={t: {} for t in s.target_ids},
            target_logits=source.query_view(report_module.identity_query(s)), outputs=outputs,
            keep=ctx.splits.keep, eval_mask=ctx.splits.eval_mask)
    record["report"] |= {f"{name}_{unit}": value for name, part in parts.items() for unit, value in part.items()}
    record["auc"] = {name: round(a.pooled.auc, 4) for name, a in results.attacks.items()}
    return record


def measure_dense(spec: dict[str, Any]) -> dict[str, Any]:
    """The dense in-memory path: every model's served logits stacked, every attack refitted per target."""
    import copy

    import torch

    from mia_torch.pipeline import prepare
    from mia_torch.stages.attacks import reference_signals, score_attacks
    from mia_torch.stages.signals import signals_stage

    ctx = prepare(compose(spec, spec["targets"]), Path(spec["store"]) / "run_dense")
    s = ctx.settings
    record: dict[str, Any] = {}
    with _stage(record, "signals"):
        logits = torch.from_numpy(signals_stage(ctx).dense()).float()
    with _stage(record, "attacks"):
        labels = ctx.data.y
        for target in s.target_ids:
            refs = list(ctx.splits.reference_ids[target])
            reference = reference_signals(ctx, logits[refs], refs)
            fitted = {name: copy.deepcopy(attack).fit(reference) for name, attack in ctx.attacks.items()}
            score_attacks(fitted, logits[target], labels)
    return record


# ------------------------------------------------------------------ the grid


def _child(mode: str, spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any] | None:
    """Run ``mode`` for ``spec`` in a fresh Python process; its JSON record (None on failure or past ``timeout`` s)."""
    try:
        proc = subprocess.run([sys.executable, __file__, "--child", mode, json.dumps(spec)], capture_output=True,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"  {mode} stopped after --child-timeout {timeout:g} s", file=sys.stderr)
        return None
    sys.stderr.write(proc.stderr[-3000:] if proc.returncode else "".join(
        line + "\n" for line in proc.stderr.splitlines() if line.startswith("  ")))
    if proc.returncode:
        print(f"  {mode} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


def configurations(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The (M, Q, C) grid, or the ``--configs`` asked for; a store of more than ``--max-store-gb`` is skipped
    (said so)."""
    out = []
    grid = [(m, q, c) for c in args.classes for q in args.queries for m in args.models]
    for m, q, c in [tuple(int(v) for v in text.split(":")) for text in args.configs] if args.configs else grid:
        dtype = "float16" if c >= 100 else "float32"
        size_gb = m * args.examples * q * c * (2 if dtype == "float16" else 4) / 1e9
        spec = {"models": m, "examples": args.examples, "queries": q, "classes": c, "dtype": dtype,
                "bootstrap": args.bootstrap, "seed": 0, "store_gb": round(size_gb, 2),
                "store": str(Path(args.root) / f"M{m}_Q{q}_C{c}")}
        if size_gb > args.max_store_gb:
            print(f"skipped M={m} Q={q} C={c}: its store would hold {size_gb:.1f} GB "
                  f"(> --max-store-gb {args.max_store_gb:g})", file=sys.stderr)
            continue
        out.append(spec)
    return out


def _ratio(a: float | None, b: float | None) -> str:
    return "-" if not a or not b else f"{a / b:.2f}x"


def _cell(record: dict[str, Any] | None) -> str:
    """``wall s (CPU s) / peak GB`` of one stage."""
    if not record:
        return "-"
    return f"{record['s']:.1f} ({record['cpu_s']:.1f}) / {record['peak_gb']:.2f}"


def report(rows: list[dict[str, Any]]) -> str:
    """The table of every configuration (wall seconds, CPU seconds in parentheses, peak RSS in GB), then the
    ratios (of CPU time, which another process's load on the machine does not inflate, and of peak RSS)."""
    lines = ["| M | N | Q | C | logits GB | targets | path | signals | attacks | report; of which metrics, writing |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        report_cell = _cell(r.get("report"))
        if r.get("report"):
            report_cell += (f"; metrics {r['report']['metrics_s']:.1f} ({r['report']['metrics_cpu_s']:.1f}), "
                            f"writing {r['report']['writing_s']:.1f} ({r['report']['writing_cpu_s']:.1f})")
        lines.append(f"| {r['models']} | {r['examples']} | {r['queries']} | {r['classes']} | {r['store_gb']} | "
                     f"{r['targets']} | {r['path']} | {_cell(r.get('signals'))} | {_cell(r.get('attacks'))} | "
                     f"{report_cell} |")
    lines.append("")
    by = {(r["models"], r["queries"], r["classes"], r["targets"], r["path"]): r for r in rows}
    for (m, q, c, t, p), r in sorted(by.items()):
        peak = max(r[k]["peak_gb"] for k in ("signals", "attacks", "report") if r.get(k))
        if t == "[0]" and p == "streaming":
            lines.append(f"M={m} Q={q} C={c}: peak RSS of signals -> attacks -> report {peak:.2f} GB")
        if m == 256 and t == "[0]" and p == "streaming" and (64, q, c, t, p) in by:
            small = by[(64, q, c, t, p)]
            lines.append(f"growth M 64 -> 256 (Q={q}, C={c}): attack stage CPU time "
                         f"{_ratio(r['attacks']['cpu_s'], small['attacks']['cpu_s'])} (wall "
                         f"{_ratio(r['attacks']['s'], small['attacks']['s'])}), peak RSS "
                         f"{_ratio(r['attacks']['peak_gb'], small['attacks']['peak_gb'])}")
        if t == "all" and (m, q, c, "[0]", p) in by:
            one = by[(m, q, c, "[0]", p)]
            lines.append(f"all {m} targets vs one (Q={q}, C={c}): attack stage CPU time "
                         f"{_ratio(r['attacks']['cpu_s'], one['attacks']['cpu_s'])} (wall "
                         f"{r['attacks']['s']:.1f} s vs {one['attacks']['s']:.1f} s); metrics "
                         f"{r['report']['metrics_s']:.1f} s vs {one['report']['metrics_s']:.1f} s")
        if p == "dense" and (m, q, c, t, "streaming") in by:
            new = by[(m, q, c, t, "streaming")]
            cpu = (new["signals"]["cpu_s"] + new["attacks"]["cpu_s"], r["signals"]["cpu_s"] + r["attacks"]["cpu_s"])
            peaks = (max(new["signals"]["peak_gb"], new["attacks"]["peak_gb"]),
                     max(r["signals"]["peak_gb"], r["attacks"]["peak_gb"]))
            lines.append(f"streaming vs dense in memory (M={m}, Q={q}, C={c}): signals + attacks CPU time "
                         f"{_ratio(*cpu)}, peak RSS {_ratio(*peaks)}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--queries", type=int, nargs="+", default=[2, 18], choices=sorted(QUERY_SETS))
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--examples", type=int, default=50_000)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--all-targets", type=int, nargs="*", default=[256],
                        help="M values also run with target_ids=all (at Q = 2, C = 10)")
    parser.add_argument("--configs", nargs="+", metavar="M:Q:C",
                        help="run these (models:queries:classes) instead of the grid, e.g. 256:18:10 64:18:100")
    parser.add_argument("--max-store-gb", type=float, default=12.0)
    parser.add_argument("--child-timeout", type=float, default=None, help="seconds per measured run")
    parser.add_argument("--root", default="/tmp/mia_bench_scale", help="stores go here (deleted when done)")
    parser.add_argument("--keep", action="store_true", help="keep the stores")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: check that the script works")
    parser.add_argument("--out", default="outputs/bench_scale.json")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, spec = args.child[0], json.loads(args.child[1])
        record = {"build": build_store, "streaming": measure, "dense": measure_dense}[mode](spec)
        print(json.dumps(record or {}))
        return
    if args.quick:
        args.models, args.queries, args.classes, args.examples = [4, 8], [2], [10], 2000
        args.all_targets, args.bootstrap = [8], 20
    rows = []
    for spec in configurations(args):
        label = f"M={spec['models']} N={spec['examples']} Q={spec['queries']} C={spec['classes']} ({spec['store_gb']} GB)"
        print(f"{label}: building the store", file=sys.stderr, flush=True)
        if _child("build", spec) is None:
            continue
        runs = [("[0]", "streaming")]
        if spec["models"] in args.all_targets and spec["queries"] == 2 and spec["classes"] == 10:
            runs.append(("all", "streaming"))
        if spec["models"] * spec["examples"] * spec["queries"] * spec["classes"] * 4 <= DENSE_LIMIT_BYTES:
            runs.append(("[0]", "dense"))
        for targets, path in runs:
            print(f"{label}: {path}, target_ids={targets}", file=sys.stderr, flush=True)
            record = _child(path, {**spec, "targets": targets}, timeout=args.child_timeout)
            if record is not None:
                rows.append({**spec, "targets": "all" if targets == "all" else "[0]", "path": path, **record})
        if not args.keep:
            shutil.rmtree(spec["store"], ignore_errors=True)
    table = report(rows)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
