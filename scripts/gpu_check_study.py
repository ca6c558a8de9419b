#!/usr/bin/env python3
"""Run one mia_torch experiment and time its stages (the study step of ``scripts/gpu_check.sh``).

    python scripts/gpu_check_study.py --run-dir DIR --timings timings.json -- experiment=cifar10_fast ...

Composes ``configs/config.yaml`` with the given Hydra overrides and runs the pipeline
into ``--run-dir`` (``results.json`` and the rest of the run's report land there), timing
training, signal collection and the attacks separately: each stage function of
:mod:`mia_torch.pipeline` is wrapped with a timer (CUDA synchronised), and every group of
models trained together is logged as it finishes, so a run cut short still shows its
pace. ``--timings`` gets the seconds per stage, the total, and the peak GPU memory; it is
rewritten after every stage.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Pipeline functions timed as stages: (key in the timings file, function name); the signals stage is
#: collecting the logits and reducing them to the attacks' features.
STAGES = (("train_s", "train_stage"), ("signals_s", "signals_stage"), ("signals_s", "feature_table"),
          ("attacks_s", "attack_stage"))

log = logging.getLogger("gpu_check.study")


def _sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StageTimer:
    """Wraps pipeline functions to add up their wall time; writes the totals as JSON after each call."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()
        self.extra: dict[str, Any] = {}

    def wrap(self, key: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)
        def timed(*args: Any, **kwargs: Any) -> Any:
            _sync()
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                _sync()
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - start
                log.info("%s: %.1f s so far", key, self.seconds[key])
                self.write()

        return timed

    def write(self) -> None:
        if self.path is None:
            return
        import torch

        record: dict[str, Any] = {k: round(v, 2) for k, v in self.seconds.items()}
        record["elapsed_s"] = round(time.perf_counter() - self.started, 2)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            record["cuda_max_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        record |= self.extra
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=2))
        tmp.replace(self.path)


def _log_groups(fn: Callable[..., Any], timer: StageTimer) -> Callable[..., Any]:
    """Log (and record in the timings) each group of models as it finishes training: the pace, even if cut short."""

    @functools.wraps(fn)
    def logged(ctx: Any, indices: list[int]) -> Any:
        _sync()
        start = time.perf_counter()
        out = fn(ctx, indices)
        _sync()
        seconds = time.perf_counter() - start
        log.info("trained models %s in %.1f s (%.2f s per model)", list(indices), seconds, seconds / max(1, len(indices)))
        timer.extra["models_trained_so_far"] = timer.extra.get("models_trained_so_far", 0) + len(indices)
        timer.extra["training_groups_s"] = round(timer.extra.get("training_groups_s", 0.0) + seconds, 2)
        timer.write()
        return out

    return logged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run-dir", type=Path, required=True, help="where the run's results.json and report go")
    parser.add_argument("--timings", type=Path, default=None, help="write the stage timings here (JSON)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. experiment=cifar10_fast")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")

    from hydra import compose, initialize_config_dir

    from mia_torch import pipeline
    from mia_torch.settings.schemas import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    timer = StageTimer(args.timings)
    for key, name in STAGES:
        if hasattr(pipeline, name):
            setattr(pipeline, name, timer.wrap(key, getattr(pipeline, name)))
        else:
            log.warning("mia_torch.pipeline has no %s: %s is not timed", name, key)
    from mia_torch.stages import train as train_module

    train_module.train_group = _log_groups(train_module.train_group, timer)
    results = pipeline.run(cfg, run_dir=args.run_dir)
    timer.extra |= {
        "total_s": results.seconds,
        "trained_models": len(results.trained_models),
        "reused_models": len(results.reused_models),
    }
    timer.write()
    log.info("study done in %.1f s: %s", time.perf_counter() - timer.started, timer.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
