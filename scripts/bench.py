#!/usr/bin/env python
"""Throughput of shadow-model training and signal collection: common research loop vs mia_torch.

One run, one dataset and architecture, several ways to do the same work:

training (``--epochs`` over ``--num-train`` images, SGD, batch ``--batch-size``):

- ``naive``: the common research loop: a ``Dataset`` applying a per-item random crop and
  flip (``torchvision.transforms.v2``) in a ``DataLoader`` (``--num-workers``), fp32,
  ``loss.item()`` every step for logging;
- ``train_model``: mia_torch's device-resident trainer (one model);
- ``train_models[<strategy>]``: ``--num-models`` models at once (``--strategies``).

signals (``--queries`` views of every training image):

- ``naive``: ``DataLoader`` batches of 256, fp32, one query at a time, logits to the host;
- ``collect_logits``: mia_torch's batched collection (all views in one forward pass);
- ``collect_logits_many[<strategy>]``: ``--num-models`` models at once.

Prints the machine, a side-by-side table (img/s, models/min, ratio to the naive loop,
achieved TFLOP/s) and writes the same numbers as JSON (``--out``). TFLOP/s is the
model's FLOPs per image (counted once with ``torch.utils.flop_counter.FlopCounterMode``:
forward + backward for training rows, forward for signal rows) times img/s; a training
row's time also covers its final train/test evaluation, so its TFLOP/s is a slight
underestimate. A ``train_models``/``collect_logits_many`` row that fell back from vmap
to one model at a time is flagged (``fell_back`` in the JSON, ``*`` in the table).
Synthetic data is generated (class prototypes plus noise, so the models do learn
something), or ``--dataset digits`` uses scikit-learn's bundled 8x8 digits;
``--model-args`` passes model options (e.g. narrower widths for a quick run).

The naive loops are in ``bench_naive.py``; data, models, FLOPs and machine details in
``bench_workload.py``.

Example: ``.venv/bin/python scripts/bench.py --out bench.json`` (about 1-2 min on a
2-core CPU); on a GPU: ``--dataset synthetic-cifar --model resnet18 --num-train 20000``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_naive import naive_signals, naive_train, timed  # noqa: E402
from bench_workload import DATASETS, MODELS, count_flops, machine, make_data  # noqa: E402

from mia_torch.atomic import atomic_open  # noqa: E402
from mia_torch.data.augment import AugmentConfig  # noqa: E402
from mia_torch.signals.collect import collect_logits  # noqa: E402
from mia_torch.signals.collect_many import collect_logits_many  # noqa: E402
from mia_torch.training.config import TrainConfig  # noqa: E402
from mia_torch.training.ensemble import train_models  # noqa: E402
from mia_torch.training.trainer import evaluate, train_model  # noqa: E402

#: A timed job: returns ``(seconds, (models, test accuracy or None))``.
Job = Callable[[], tuple[float, tuple[int, float | None]]]


class _FallbackWatch(logging.Handler):
    """Counts mia_torch's warnings that a vmap ensemble ran one model at a time instead."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "one at a time" in record.getMessage():
            self.count += 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line (see ``--help``), with the device-dependent defaults filled in."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=sorted(MODELS), default="small_cnn")
    p.add_argument(
        "--model-args", type=json.loads, default={}, help='model options as JSON, e.g. \'{"widths": [16, 32, 32]}\''
    )
    p.add_argument("--dataset", choices=sorted(DATASETS), default="synthetic-mnist")
    p.add_argument("--num-train", type=int, default=2048)
    p.add_argument("--num-test", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-models", type=int, default=2, help="models trained / queried together")
    p.add_argument(
        "--strategies",
        default=None,
        help="comma-separated train_models / collect_logits_many strategies among auto, vmap, loop "
        "(default: auto on CPU, loop,vmap on CUDA)",
    )
    p.add_argument("--queries", default="identity,flip")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--num-workers", type=int, default=None, help="naive DataLoader workers (default 2 CPU / 8 CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--compile", action="store_true", help="torch.compile in mia_torch's trainer")
    p.add_argument("--skip-naive", action="store_true", help="skip the reference loops")
    p.add_argument("--repeats", type=int, default=2, help="time each row this many times, report the fastest")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = p.parse_args(argv)
    if not isinstance(args.model_args, dict):
        p.error("--model-args must be a JSON object, e.g. '{\"width\": 8}'")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = args.device == "cuda"
    if args.num_workers is None:
        args.num_workers = 8 if cuda else 2
    if args.strategies is None:
        args.strategies = "loop,vmap" if cuda else "auto"
    return args


def measure(jobs: Sequence[tuple[str, Job]], *, kind: str, repeats: int, images_per_model: int,
            flops: dict[str, float] | None, fallbacks: _FallbackWatch) -> list[dict[str, object]]:
    """Each job's fastest of ``repeats`` runs as a table row (img/s, TFLOP/s, fell back to a loop).

    Repeats go round-robin over the rows, so a burst of load from elsewhere hits one repeat
    of several rows rather than every repeat of one row.
    """
    timings: dict[str, list[tuple[float, tuple[int, float | None]]]] = {name: [] for name, _ in jobs}
    fell_back = {name: False for name, _ in jobs}
    for _ in range(repeats):
        for name, run in jobs:
            before = fallbacks.count
            timings[name].append(run())
            fell_back[name] |= fallbacks.count > before
    per_image = None if flops is None else flops["train" if kind == "train" else "forward"]
    rows = []
    for name, _ in jobs:
        seconds, (models, acc) = min(timings[name], key=lambda r: r[0])
        images = models * images_per_model
        row = {"name": name, "seconds": seconds, "models": models, "img_per_s": images / seconds,
               "tflops": None if per_image is None else per_image * images / seconds / 1e12,
               "fell_back": fell_back[name]}
        if kind == "train":
            row |= {"models_per_min": 60.0 * models / seconds, "test_acc": acc}
        rows.append(row)
    base = rows[0]["img_per_s"] if rows and rows[0]["name"].startswith("naive") else None
    for row in rows:
        row["vs_naive"] = row["img_per_s"] / base if base else None
    return rows


def print_tables(train_rows: list[dict[str, object]], signal_rows: list[dict[str, object]]) -> None:
    """The side-by-side tables; ``*`` marks a row that fell back from vmap."""

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    def name_of(r):
        return r["name"] + (" *" if r["fell_back"] else "")

    def ratio(r):
        return fmt(r["vs_naive"], ">7.2f") + "x" if r["vs_naive"] else "       -"

    print(
        f"\n{'training':<32} {'seconds':>8} {'img/s':>9} {'models/min':>10} {'vs naive':>8} {'TFLOP/s':>8} "
        f"{'test acc':>8}"
    )
    for r in train_rows:
        print(
            f"{name_of(r):<32} {r['seconds']:>8.2f} {r['img_per_s']:>9.0f} {r['models_per_min']:>10.2f} "
            f"{ratio(r):>8} {fmt(r['tflops'], '>8.2f')} {fmt(r['test_acc'], '>8.3f')}"
        )
    print(f"\n{'signals':<32} {'seconds':>8} {'img/s':>9} {'vs naive':>8} {'TFLOP/s':>8}")
    for r in signal_rows:
        print(f"{name_of(r):<32} {r['seconds']:>8.2f} {r['img_per_s']:>9.0f} {ratio(r):>8} {fmt(r['tflops'], '>8.2f')}")
    if any(r["fell_back"] for r in train_rows + signal_rows):
        print("* fell back from vmap to one model at a time (see the warning above)")


def main(argv: list[str] | None = None) -> dict[str, object]:
    """Run the benchmark, print the tables, write ``--out``; returns the JSON report."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    fallbacks = _FallbackWatch()
    logging.getLogger("mia_torch").addHandler(fallbacks)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    num_workers = args.num_workers
    strategies = [s.strip() for s in args.strategies.split(",") if s.strip()]
    queries = [q.strip() for q in args.queries.split(",") if q.strip()]
    info = machine(device)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()))

    x, y, x_test, y_test = make_data(args.dataset, args.num_train, args.num_test, args.seed)
    shape = tuple(x.shape[1:])
    padding = 4 if min(shape[1:]) >= 32 else (2 if min(shape[1:]) >= 16 else 1)
    cfg = TrainConfig(
        epochs=args.epochs, batch_size=args.batch_size, augment=AugmentConfig(crop_padding=padding, flip=True),
        compile=args.compile,
    )
    torch.manual_seed(args.seed)
    proto = MODELS[args.model](input_shape=shape, num_classes=10, **args.model_args)
    flops = count_flops(proto, shape)
    fresh = [copy.deepcopy(proto) for _ in range(args.num_models)]
    xd, yd, xtd, ytd = (t.to(device) for t in (x, y, x_test, y_test))
    n = len(x)
    print(
        f"workload: {args.model} on {args.dataset} {shape}, {n} train images, {args.epochs} epochs, "
        f"batch {args.batch_size}, crop padding {padding} + flip, {args.num_models} models, "
        f"{len(queries)} queries, naive loader workers {num_workers}"
    )
    if flops is not None:
        print(f"FLOPs per image: forward {flops['forward'] / 1e6:.1f} M, forward + backward {flops['train'] / 1e6:.1f} M")

    # warm-up: first-call costs (kernel selection, allocator) stay out of every row
    # (with --repeats >= 2 the fastest run never includes them at all)
    warm = copy.deepcopy(proto)
    few = min(n, 2 * args.batch_size)
    train_model(warm, xd, yd, torch.arange(few, device=device), dataclasses.replace(cfg, epochs=1), seed=0)
    collect_logits(warm, xd[:few], queries, batch_size=few)

    member = torch.arange(n, device=device)
    trained: dict[str, list[nn.Module]] = {}

    def naive_run() -> tuple[float, tuple[int, float | None]]:
        m = copy.deepcopy(proto)
        seconds = naive_train(m, x, y, x_test, y_test, cfg, device=device, num_workers=num_workers, seed=args.seed)
        return seconds, (1, evaluate(m, xtd, ytd)[1])

    def project_run() -> tuple[float, tuple[int, float | None]]:
        m = copy.deepcopy(proto)
        seconds, result = timed(
            lambda: train_model(m, xd, yd, member, cfg, seed=args.seed, x_test=xtd, y_test=ytd), device
        )
        trained["train_model"] = [m]
        return seconds, (1, result.metrics["test_acc"])

    def ensemble_run(strategy: str) -> Job:
        def run() -> tuple[float, tuple[int, float | None]]:
            models = [copy.deepcopy(m) for m in fresh]
            seconds, results = timed(
                lambda: train_models(models, xd, yd, [member] * len(models), cfg, seeds=list(range(len(models))),
                                     x_test=xtd, y_test=ytd, strategy=strategy),
                device,
            )
            trained["ensemble"] = models
            return seconds, (len(models), sum(r.metrics["test_acc"] for r in results) / len(results))

        return run

    def signals_run(name: str) -> Job:
        def run() -> tuple[float, tuple[int, float | None]]:
            model = trained["train_model"][0]
            if name == "naive":
                return naive_signals(model, x, queries, device=device, num_workers=num_workers), (1, None)
            if name == "collect_logits":
                return timed(lambda: collect_logits(model, xd, queries, batch_size=2048), device)[0], (1, None)
            models = trained.get("ensemble", [model])
            seconds, _ = timed(
                lambda: collect_logits_many(models, xd, queries, batch_size=2048, strategy=name), device
            )
            return seconds, (len(models), None)

        return run

    train_jobs = ([("naive (DataLoader)", naive_run)] if not args.skip_naive else []) + [("train_model", project_run)]
    train_jobs += [(f"train_models[{s}] x{args.num_models}", ensemble_run(s)) for s in strategies]
    signal_jobs = ([("naive (DataLoader)", signals_run("naive"))] if not args.skip_naive else []) + [
        ("collect_logits", signals_run("collect_logits"))
    ]
    signal_jobs += [(f"collect_logits_many[{s}] x{args.num_models}", signals_run(s)) for s in strategies]

    common = {"repeats": args.repeats, "flops": flops, "fallbacks": fallbacks}
    train_rows = measure(train_jobs, kind="train", images_per_model=n * args.epochs, **common)
    signal_rows = measure(signal_jobs, kind="signals", images_per_model=n * len(queries), **common)
    print_tables(train_rows, signal_rows)
    if hasattr(os, "getloadavg"):
        info["load_avg_1min_at_end"] = round(os.getloadavg()[0], 2)
        start_load, end_load = info["load_avg_1min_at_start"], info["load_avg_1min_at_end"]
        print(f"\nload average (1 min) at start {start_load}, at end {end_load} (contention skews every row)")
    report = {
        "machine": info,
        "flops_per_image": flops,
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        | {"crop_padding": padding},
        "train": train_rows,
        "signals": signal_rows,
    }
    if args.out is not None:
        with atomic_open(args.out) as f:
            f.write(json.dumps(report, indent=2))
        print(f"wrote {args.out}")
    logging.getLogger("mia_torch").removeHandler(fallbacks)
    return report


if __name__ == "__main__":
    main()
