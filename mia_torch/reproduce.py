"""Rerun a finished run from its saved config and check that it reproduces.

Usage:
    mia-reproduce <run_dir> [--out DIR] [--store-dir DIR] [--atol X] [--exact] [--allow-target T ...]

The config is the resolved config the run recorded in ``results.json`` (what it actually
used). Everything in a run directory is read as data (:mod:`mia_torch.run_dir`): JSON with
:mod:`json`, ``.hydra/config.yaml`` with a YAML loader that refuses tags, and no interpolation
is ever resolved. ``.hydra/config.yaml`` holds the config *before* resolution (e.g.
``data_dir: ${oc.env:MIA_DATA_DIR,data}``), so resolving it again here could give other values
or, in a crafted directory, build and call code; it is only cross-checked against the recorded
config (a differing plain value is reported, the recorded one replayed).

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

A run directory is untrusted input. Before anything is rerun: any string in ``results.json``
that OmegaConf would resolve (``${...}``, escaped or nested) is refused, naming its key; every
``_target_`` of the config must name a class of a buildable kind defined in mia_torch
(:mod:`mia_torch.settings.trusted`), others are refused unless allowed one by one with
``--allow-target <dotted.path>`` (e.g. ``--allow-target my_pkg.models.MyNet`` for a run that
used your own model), and the rerun builds under that same policy; the config's values are
validated; and every file the comparison reads is checked (``np.load`` without pickle, dtypes
and shapes against the config). Any refusal exits with status 2 naming the key or file
(``MIA_DEBUG=1`` shows the traceback).

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
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from mia_torch.refusal import debugging, message_of, status_of
from mia_torch.report.types import RunResults
from mia_torch.run_compare import compare_arrays, compare_metrics, version_warnings
from mia_torch.run_dir import check_run_files, read_json_data, recorded_config
from mia_torch.settings.trusted import TargetPolicy, check_targets, policy_in_effect

#: Default tolerance on pooled AUC and target accuracy when a run used CUDA.
DEFAULT_ATOL = 0.01
PROG = "mia-reproduce"


class ReproduceError(ValueError):
    """The run cannot be reproduced (missing files, invalid config, a failing rerun)."""


def _device_is_cuda(config: Mapping[str, Any], versions: Mapping[str, Any] | None) -> bool:
    device = str(config.get("device", "auto"))
    if device == "auto":
        return bool((versions or {}).get("cuda"))
    return device.startswith("cuda")


# ---------------------------------------------------------------- main


def read_results(path: Path, raw: Any = None) -> RunResults:
    """A finished run's ``results.json`` (or its already-read JSON ``raw``) as :class:`RunResults`;
    ``ReproduceError`` when it is not one."""
    try:
        return RunResults.from_dict(read_json_data(path) if raw is None else raw, path=str(path))
    except (OSError, ValueError) as err:
        raise ReproduceError(f"{path} is not a finished run's results: {err}") from err


def _count_models(store: Path) -> int:
    return sum(1 for p in (store / "models").glob("*/meta.json")) if (store / "models").is_dir() else 0


def _checked_inputs(run_dir: Path, allow_targets: Sequence[str]) -> tuple[dict[str, Any], list[str], RunResults]:
    """The config to replay, notes about it and the original results, after every check on the run directory:
    plain data, permitted ``_target_``s, valid values, and the files the comparison reads."""
    from mia_torch.settings.load import load_settings

    results_file = run_dir / "results.json"
    if not results_file.is_file():
        raise ReproduceError(f"{results_file} is missing: reproduce needs a finished run (stage=all)")
    raw = read_json_data(results_file)
    config, notes = recorded_config(run_dir, raw)
    check_targets(config, allowed=allow_targets, source=f"the config of {run_dir}")
    original = read_results(results_file, raw)
    try:
        settings = load_settings(OmegaConf.create(config))
    except ValueError as err:
        raise ReproduceError(f"the config recorded in {results_file} is not valid here: {message_of(err)}") from err
    check_run_files(run_dir, num_models=settings.num_models, queries=len(settings.queries),
                    targets=set(settings.target_ids), attacks=set(settings.attacks),
                    population=(original.dataset or {}).get("population"))
    return config, notes, original


def reproduce(run_dir: Path, *, out: Path | None, store_dir: Path | None, atol: float, exact: bool,
              allow_targets: Sequence[str] = ()) -> int:
    """Rerun ``run_dir`` into ``out`` and compare; returns the exit status.

    ``allow_targets`` are ``_target_`` strings outside mia_torch that the config may build.
    Everything read from ``run_dir`` is checked before anything is built or rerun, and the
    rerun builds under the same policy (:class:`~mia_torch.settings.trusted.TargetPolicy`).
    """
    from mia_torch.report.json_file import write_json

    config, notes, original = _checked_inputs(run_dir, allow_targets)
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
    from mia_torch.settings.load import resolve_device

    cfg: DictConfig = OmegaConf.create(config)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ReproduceError(f"cannot create the rerun directory {out} (--out): {err}") from err
    OmegaConf.save(cfg, out / "reproduce_config.yaml")
    policy = TargetPolicy.replay(allow_targets, source=f"the config of {run_dir}")
    try:
        with policy_in_effect(policy):
            run(cfg, run_dir=out)
        new = read_results(out / "results.json")
    except Exception as err:  # noqa: BLE001 - reported as "cannot reproduce"
        if debugging():
            raise
        raise ReproduceError(f"the rerun failed: {type(err).__name__}: {message_of(err)}") from err

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
    """Command-line entry point (``mia-reproduce``); returns the exit status (0 match, 1 mismatch, 2 error).

    Any error, a refusal of the run directory or a failure of the rerun, exits with 2 and one
    message (the traceback with ``MIA_DEBUG=1``): 1 always means MISMATCH.
    """
    parser = argparse.ArgumentParser(prog=PROG, description="Rerun a finished run from its saved config and compare.")
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
    return status_of(PROG, lambda: reproduce(args.run_dir, out=args.out, store_dir=args.store_dir, atol=args.atol,
                                             exact=args.exact, allow_targets=args.allow_target),
                     refusals=(Exception,))


def cli() -> None:
    """``mia-reproduce``: exit with :func:`main`'s status."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
