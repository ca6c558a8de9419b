"""Rerun a finished run from its saved config and check that it reproduces.

Usage (``scripts/reproduce.py`` is the same command):
    mia-reproduce <run_dir> [--out DIR] [--store-dir DIR] [--atol X] [--exact] [--allow-target T ...]

The config comes from ``<run_dir>/.hydra/config.yaml`` (what Hydra saved; without it,
from the resolved config recorded in ``results.json``). Interpolations are resolved as
in the original job (``${hydra:...}`` from ``.hydra/hydra.yaml``); a value that now
resolves differently from what ``results.json`` recorded (e.g. one read from an
environment variable) is reported and the recorded value is used.

The rerun goes to ``<run_dir>/reproduce_<timestamp>/`` (or ``--out``) with a fresh,
empty artifact store (``<out>/store``) unless ``--store-dir`` is given, so every model
is retrained and every signal recomputed: reusing the original store would only
re-read the original models. Then the two runs are compared:

- always exactly: the keep matrix, evaluation mask and labels (seeded host code);
- both runs on CPU (or ``--exact``): signals, every attack's scores per target and all
  metrics of ``results.json`` (attacks, targets, models) must be bitwise equal. This
  assumes the same software versions and the same number of CPU threads;
- a run on CUDA: GPU training is not bitwise reproducible (atomic adds in convolution
  backward passes, cuDNN algorithm choice, bf16 autocast), so retrained models differ
  slightly and so do their signals and scores. Then the check is on what a study
  reports: each attack's pooled AUC and the targets' train/test accuracy must agree
  within ``--atol`` (default 0.01); the largest differences of the signals, the scores
  and the scores after rank normalisation (ranks scaled to [0, 1]) are printed, not
  checked.

Prints the software versions of both runs (warning about each difference), one line per
check and a final ``MATCH`` or ``MISMATCH``; writes the same as JSON to
``<out>/reproduce_report.json``. Exit status: 0 on MATCH, 1 on MISMATCH, 2 when the run
cannot be reproduced (missing files, invalid config, a failing rerun).

A run directory is untrusted input: before anything is built, every ``_target_`` of
its config must name a class defined in mia_torch (:mod:`mia_torch.config_safety`);
others are refused (exit status 2) unless allowed one by one with
``--allow-target <dotted.path>``, e.g. ``--allow-target my_pkg.models.MyNet`` for a
run that used your own model.

The Hydra-native alternative reruns the saved config without the comparison:
    mia-run --config-path <abs run_dir>/.hydra --config-name config \\
        hydra.run.dir=<new dir> store_dir=<fresh store>
(key overrides work; config-group choices such as ``model=...`` do not, since the saved
config is already composed; without ``store_dir=`` the default store's models are reused.)
It trusts the directory completely: Hydra itself builds the ``hydra.callbacks`` of that
config before mia_torch sees it, so use it only on runs you made yourself.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf

from mia_torch.config_safety import UnsafeConfigError, check_targets
from mia_torch.report.types import RunResults

#: Default tolerance on pooled AUC and target accuracy when a run used CUDA.
DEFAULT_ATOL = 0.01
#: Config keys that may differ between the runs without changing any number.
NOT_COMPARED = ("store_dir", "progress")
#: Arrays of a run directory compared exactly whatever the device.
HOST_ARRAYS = ("keep.npy", "eval_mask.npy", "labels.npy")


@dataclass
class Check:
    """One comparison: ``status`` is ``match``, ``mismatch``, ``info`` (not gated) or ``skipped``."""

    name: str
    status: str
    detail: str


class ReproduceError(Exception):
    """The run cannot be reproduced (missing files, unresolvable config)."""


# ---------------------------------------------------------------- config


def _flatten(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for key, value in node.items():
            yield from _flatten(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _flatten(value, f"{prefix}[{i}]")
    else:
        yield prefix, node


@contextlib.contextmanager
def _hydra_context(run_dir: Path) -> Iterator[None]:
    """Hydra's resolvers, with ``${hydra:...}`` read from the original job's ``.hydra/hydra.yaml``.

    Hydra's own resolvers are registered again on exit, so importing this module and
    calling :func:`reproduce` in a process that also runs Hydra leaves no trace.
    """
    from hydra.core.utils import setup_globals

    setup_globals()
    hydra_file = run_dir / ".hydra" / "hydra.yaml"
    try:
        if hydra_file.is_file():
            hydra_node = OmegaConf.load(hydra_file).get("hydra")
            OmegaConf.register_new_resolver("hydra", lambda path: OmegaConf.select(hydra_node, path), replace=True)
        yield
    finally:
        setup_globals()


def load_run_config(run_dir: Path, recorded: Mapping[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    """The run's resolved config and notes about where values came from."""
    notes: list[str] = []
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        try:
            with _hydra_context(run_dir):
                config = OmegaConf.to_container(OmegaConf.load(saved), resolve=True)
        except Exception as err:  # noqa: BLE001
            raise ReproduceError(f"cannot resolve {saved}: {err}") from err
        notes.append(f"config: {saved}")
    elif recorded is not None:
        config = dict(recorded)
        notes.append(f"config: {run_dir / 'results.json'} (no .hydra/config.yaml; using the recorded config)")
    else:
        raise ReproduceError(f"{run_dir} has neither .hydra/config.yaml nor a results.json config")
    assert isinstance(config, dict)
    if recorded is not None:
        now, then = dict(_flatten(config)), dict(_flatten(recorded))
        differ = [k for k in sorted(set(now) | set(then))
                  if k.split(".")[0].split("[")[0] not in NOT_COMPARED and now.get(k) != then.get(k)]
        for key in differ:
            notes.append(f"WARNING: config {key} resolves to {now.get(key)!r} here but the run recorded "
                         f"{then.get(key)!r}")
        if differ:
            notes.append("using the config recorded in results.json (what the run actually used)")
            config = {k: v for k, v in recorded.items()}
    return config, notes


# ---------------------------------------------------------------- comparison


def _device_is_cuda(config: Mapping[str, Any], versions: Mapping[str, Any] | None) -> bool:
    device = str(config.get("device", "auto"))
    if device == "auto":
        return bool((versions or {}).get("cuda"))
    return device.startswith("cuda")


def _max_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest |a - b| (NaN in both counts as equal, NaN in one as infinite)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    diff = np.abs(a64 - b64)
    diff[np.isnan(a64) & np.isnan(b64)] = 0.0
    diff[np.isnan(diff)] = np.inf
    return float(diff.max()) if diff.size else 0.0


def _rank01(values: np.ndarray) -> np.ndarray:
    from mia_torch.metrics.roc import average_ranks

    values = np.asarray(values, dtype=np.float64).ravel()
    return (average_ranks(values) - 1.0) / max(1, values.size - 1)


def _compare_arrays(name: str, a: np.ndarray, b: np.ndarray, *, exact: bool, ranks: bool = False) -> list[Check]:
    if a.shape != b.shape or (exact and a.dtype != b.dtype):
        return [Check(name, "mismatch", f"shape/dtype {a.shape} {a.dtype} vs {b.shape} {b.dtype}")]
    equal = np.array_equal(a, b, equal_nan=bool(np.issubdtype(a.dtype, np.floating)))
    if equal:
        return [Check(name, "match", f"identical {a.shape}")]
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        return [Check(name, "mismatch", f"{int(np.count_nonzero(a != b))} of {a.size} entries differ")]
    detail = f"max abs diff {_max_abs_diff(a, b):.3g}, {int(np.count_nonzero(a != b))} of {a.size} values differ"
    if ranks:
        detail += f"; rank-normalised max abs diff {_max_abs_diff(_rank01(a), _rank01(b)):.3g}"
    return [Check(name, "mismatch" if exact else "info", detail)]


def _load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)


def compare_arrays(original: Path, new: Path, *, exact: bool) -> list[Check]:
    """Keep matrix, mask, labels (always exact); signals and scores (exact or reported)."""
    from mia_torch.evaluation import load_scores

    checks: list[Check] = []
    for name in (*HOST_ARRAYS, "signals.npy"):
        a_path, b_path = original / name, new / name
        if not a_path.is_file() and not b_path.is_file():
            checks.append(Check(name, "skipped", "in neither run"))
        elif not a_path.is_file() or not b_path.is_file():
            checks.append(Check(name, "mismatch", f"missing in the {'original' if not a_path.is_file() else 'rerun'}"))
        else:
            checks += _compare_arrays(name, _load_array(a_path), _load_array(b_path),
                                      exact=exact or name in HOST_ARRAYS)
    a_path, b_path = original / "scores.npz", new / "scores.npz"
    if not (a_path.is_file() and b_path.is_file()):
        checks.append(Check("scores.npz", "mismatch", "missing in the " + ("original" if not a_path.is_file()
                                                                            else "rerun")))
        return checks
    a_scores, b_scores = load_scores(a_path), load_scores(b_path)
    a_keys = {(n, t) for n, per in a_scores.items() for t in per}
    b_keys = {(n, t) for n, per in b_scores.items() for t in per}
    for name, target in sorted(a_keys ^ b_keys):
        where = "rerun" if (name, target) in a_keys else "original"
        checks.append(Check(f"scores {name}/target_{target}", "mismatch", f"missing in the {where}"))
    for name, target in sorted(a_keys & b_keys):
        checks += _compare_arrays(f"scores {name}/target_{target}", a_scores[name][target], b_scores[name][target],
                                  exact=exact, ranks=True)
    return checks


def _numbers(node: Any, prefix: str) -> dict[str, float]:
    out = {}
    for key, value in _flatten(node, prefix):
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = float(value)
    return out


def _gated(results: RunResults) -> dict[str, float | None]:
    """What a study reports, compared within ``atol`` on CUDA: pooled AUCs and target accuracies."""
    out: dict[str, float | None] = {f"attacks.{n}.pooled.auc": a.pooled.auc for n, a in results.attacks.items()}
    for target, info in results.targets.items():
        out[f"targets.{target}.train_acc"] = info.train_acc
        out[f"targets.{target}.test_acc"] = info.test_acc
    return out


def compare_metrics(original: RunResults, new: RunResults, *, exact: bool, atol: float) -> list[Check]:
    """Metrics of results.json: all exactly, or pooled AUC and target accuracies within ``atol``."""
    checks: list[Check] = []
    sections = ("attacks", "targets", "models", "dataset") if exact else ("attacks", "targets")
    a_dict, b_dict = original.to_dict(), new.to_dict()
    a = {k: v for s in sections for k, v in _numbers(a_dict.get(s), s).items()}
    b = {k: v for s in sections for k, v in _numbers(b_dict.get(s), s).items()}
    if exact:
        differ = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k)
                        and not (isinstance(a.get(k), float) and isinstance(b.get(k), float)
                                 and math.isnan(a[k]) and math.isnan(b[k])))
        if not differ:
            checks.append(Check("results.json metrics", "match", f"{len(a)} values identical"))
        for key in differ:
            checks.append(Check(f"metric {key}", "mismatch", f"{a.get(key)!r} vs {b.get(key)!r}"))
        return checks

    gated_a, gated_b = _gated(original), _gated(new)
    for key in sorted(set(gated_a) | set(gated_b)):
        if key not in gated_a or key not in gated_b:
            where = "rerun" if key in gated_a else "original"
            checks.append(Check(f"metric {key}", "mismatch", f"missing in the {where}"))
            continue
        x, y = gated_a[key], gated_b[key]
        if x is None or y is None:
            checks.append(Check(f"metric {key}", "match" if x == y else "mismatch", f"{x!r} vs {y!r}"))
            continue
        diff = abs(x - y)
        checks.append(Check(f"metric {key}", "match" if diff <= atol else "mismatch",
                            f"{x:.4f} vs {y:.4f} (|diff| {diff:.2g}, atol {atol:g})"))
    others = [k for k in set(a) & set(b) if k not in gated_a and isinstance(a[k], float) and isinstance(b[k], float)]
    if others:
        worst = max(others, key=lambda k: abs(a[k] - b[k]))
        checks.append(Check("other metrics", "info", f"largest difference {worst}: {a[worst]!r} vs {b[worst]!r}"))
    return checks


def version_warnings(original: Mapping[str, Any] | None, new: Mapping[str, Any] | None) -> tuple[list[str], list[str]]:
    """Aligned lines of both runs' versions, and one warning per differing entry."""
    original, new = dict(original or {}), dict(new or {})
    keys = list(dict.fromkeys([*original, *new]))
    width = max([len(k) for k in keys] + [8])
    lines = [f"  {'':<{width}}  {'original':<28}  rerun"]
    warnings = []
    for key in keys:
        a, b = original.get(key), new.get(key)
        lines.append(f"  {key:<{width}}  {str(a):<28}  {b}")
        if a != b:
            warnings.append(f"WARNING: {key} differs ({a} vs {b}): numbers may differ for that reason alone")
    return lines, warnings


# ---------------------------------------------------------------- main


def read_results(path: Path, raw: Any = None) -> RunResults:
    """A finished run's ``results.json`` (or its already-read JSON ``raw``) as :class:`RunResults`;
    ``ReproduceError`` when it is not one."""
    from mia_torch.report.results import read_json

    try:
        return RunResults.from_dict(read_json(path) if raw is None else raw, path=str(path))
    except (OSError, ValueError) as err:
        raise ReproduceError(f"{path} is not a finished run's results: {err}") from err


def _count_models(store: Path) -> int:
    return sum(1 for p in (store / "models").glob("*/meta.json")) if (store / "models").is_dir() else 0


def reproduce(run_dir: Path, *, out: Path | None, store_dir: Path | None, atol: float, exact: bool,
              allow_targets: Sequence[str] = ()) -> int:
    """Rerun ``run_dir`` into ``out`` and compare; returns the exit status.

    ``allow_targets`` are ``_target_`` strings outside mia_torch that the config may build.
    The config is checked for unsafe ``_target_``s before anything else is read or built.
    """
    from mia_torch.report.results import read_json, write_json

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise ReproduceError(f"{results_file} is missing: reproduce needs a finished run (stage=all)")
    try:
        raw = read_json(results_file)
    except (OSError, ValueError) as err:
        raise ReproduceError(f"{results_file} is not readable JSON: {err}") from err
    if not isinstance(raw, dict):
        raise ReproduceError(f"{results_file} does not hold a run's results (a JSON object)")
    config, notes = load_run_config(run_dir, raw.get("config"))
    try:
        check_targets(config, allowed=allow_targets, source=f"the config of {run_dir}")
    except UnsafeConfigError as err:
        raise ReproduceError(str(err)) from err
    original = read_results(results_file, raw)
    out = out or run_dir / f"reproduce_{time.strftime('%Y%m%d-%H%M%S')}"
    if out.exists() and any(out.iterdir()):
        raise ReproduceError(f"{out} exists and is not empty: choose another --out")
    store = store_dir or out / "store"
    config["store_dir"] = str(store)
    print(f"reproduce {run_dir}\n  into {out}", flush=True)
    for note in notes:
        print(f"  {note}")
    reused = _count_models(store)
    print(f"  store {store}: " + (f"holds {reused} model(s) already: those are reused, not retrained" if reused
                                   else "empty: every model is retrained"), flush=True)

    from mia_torch.pipeline import run
    from mia_torch.settings import resolve_device

    cfg: DictConfig = OmegaConf.create(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReproduceError(f"cannot create the rerun directory {out} (--out): {err}") from err
    OmegaConf.save(cfg, out / "reproduce_config.yaml")
    try:
        run(cfg, run_dir=out)
        new = read_results(out / "results.json")
    except Exception as err:  # noqa: BLE001 - reported as "cannot reproduce"
        raise ReproduceError(f"the rerun failed: {type(err).__name__}: {err}") from err

    cuda = _device_is_cuda(original.config or config, original.versions) or (
        resolve_device(str(config.get("device", "auto"))).type == "cuda")
    exact = exact or not cuda
    mode = ("exact: every array and metric must be bitwise equal" if exact else
            f"tolerance (a run used CUDA): pooled AUC and target accuracies within atol={atol:g}; "
            "signal and score differences are reported")
    version_lines, warnings = version_warnings(original.versions, new.versions)
    checks = compare_arrays(run_dir, out, exact=exact) + compare_metrics(original, new, exact=exact, atol=atol)
    failed = [c for c in checks if c.status == "mismatch"]
    print("\nversions:\n" + "\n".join(version_lines))
    for warning in warnings:
        print(warning)
    print(f"\ncomparison ({mode}):")
    for check in checks:
        print(f"  {check.status.upper():<9} {check.name}: {check.detail}")
    verdict = "MATCH" if not failed else "MISMATCH"
    if failed:
        print(f"\nMISMATCH: {len(failed)} of {len(checks)} checks differ: "
              + ", ".join(c.name for c in failed[:8]) + (" ..." if len(failed) > 8 else ""))
    else:
        print(f"\nMATCH: the rerun reproduces {run_dir} ({len(checks)} checks)")
    write_json(out / "reproduce_report.json", {
        "verdict": verdict, "run_dir": str(run_dir), "rerun_dir": str(out), "mode": "exact" if exact else "tolerance",
        "atol": atol, "checks": [asdict(c) for c in checks], "version_warnings": warnings,
        "versions": {"original": original.versions, "rerun": new.versions},
    })
    return 0 if not failed else 1


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``mia-reproduce``); returns the exit status (0 match, 1 mismatch, 2 error)."""
    parser = argparse.ArgumentParser(description="Rerun a finished run from its saved config and compare.")
    parser.add_argument("run_dir", type=Path, help="a finished run's output directory (holds results.json)")
    parser.add_argument("--out", type=Path, default=None, help="rerun directory (default <run_dir>/reproduce_<time>)")
    parser.add_argument("--store-dir", type=Path, default=None,
                        help="artifact store of the rerun (default: a fresh one in the rerun directory)")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"CUDA runs: tolerance on pooled AUC and target accuracy (default {DEFAULT_ATOL})")
    parser.add_argument("--exact", action="store_true", help="require bitwise equality even when a run used CUDA")
    parser.add_argument("--allow-target", action="append", default=[], metavar="DOTTED.PATH",
                        help="let the saved config build this _target_ outside mia_torch (repeatable; only for "
                             "run directories and code you trust)")
    args = parser.parse_args(argv)
    if not args.atol >= 0:
        parser.error("--atol must be >= 0")
    try:
        return reproduce(args.run_dir, out=args.out, store_dir=args.store_dir, atol=args.atol, exact=args.exact,
                         allow_targets=args.allow_target)
    except ReproduceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def cli() -> None:
    """``mia-reproduce``: exit with :func:`main`'s status."""
    sys.exit(main())
