"""Validate a composed experiment config before any work starts."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from mia_torch.data.augment import parse_queries
from mia_torch.data.splits import THREAT_MODELS
from mia_torch.signals.collect import SIGNAL_DTYPES
from mia_torch.signals.output import ServedOutput
from mia_torch.training.config import TrainConfig
from mia_torch.training.ensemble import STRATEGIES

STAGES = ("all", "train")


@dataclass(frozen=True)
class Settings:
    """The validated, plain-Python view of the top-level experiment keys."""

    seed: int
    device: torch.device
    num_threads: int | None
    data_dir: Path
    download: bool
    store_dir: Path
    num_models: int
    target_ids: tuple[int, ...]
    threat_model: str
    queries: tuple[str, ...]
    signals_dtype: torch.dtype
    signal_batch_size: int
    fpr_targets: tuple[float, ...]
    bootstrap: int
    progress: bool
    sanity_check: bool
    stage: str
    shard: int
    num_shards: int
    parallel_models: int
    parallel_strategy: str
    train: TrainConfig
    dataset: dict[str, Any]
    model: dict[str, Any]
    attacks: dict[str, dict[str, Any]]
    output: ServedOutput = ServedOutput()


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} but CUDA is not available here: use device=cpu or device=auto")
    return device


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}")


def load_settings(cfg: DictConfig) -> Settings:
    """Check every top-level value and group, naming the offending key on error."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    for group in ("dataset", "model", "train", "attack"):
        if not isinstance(c.get(group), dict):
            raise ValueError(f"config group `{group}` is missing: pick one, e.g. {group}=<option>")
    _require(isinstance(c["num_models"], int) and c["num_models"] >= 2, "num_models", c["num_models"], "an integer >= 2")
    targets = c["target_ids"] if isinstance(c["target_ids"], list) else [c["target_ids"]]
    _require(
        all(isinstance(t, int) and 0 <= t < c["num_models"] for t in targets) and len(targets) > 0,
        "target_ids", c["target_ids"], f"a non-empty list of model indices in [0, num_models={c['num_models']})",
    )
    _require(c["threat_model"] in THREAT_MODELS, "threat_model", c["threat_model"], f"one of {THREAT_MODELS}")
    _require(c["signals_dtype"] in SIGNAL_DTYPES, "signals_dtype", c["signals_dtype"], f"one of {tuple(SIGNAL_DTYPES)}")
    fprs = c["fpr_targets"]
    _require(isinstance(fprs, list) and all(isinstance(f, (int, float)) and 0 < f < 1 for f in fprs),
             "fpr_targets", fprs, "a list of numbers in (0, 1)")
    _require(isinstance(c["bootstrap"], int) and c["bootstrap"] >= 0, "bootstrap", c["bootstrap"], "an integer >= 0")
    _require(isinstance(c["signal_batch_size"], int) and c["signal_batch_size"] >= 1,
             "signal_batch_size", c["signal_batch_size"], "an integer >= 1")
    _require(c["stage"] in STAGES, "stage", c["stage"], f"one of {STAGES}")
    _require(isinstance(c["num_shards"], int) and c["num_shards"] >= 1, "num_shards", c["num_shards"], "an integer >= 1")
    _require(isinstance(c["shard"], int) and 0 <= c["shard"] < c["num_shards"],
             "shard", c["shard"], f"an integer in [0, num_shards={c['num_shards']})")
    _require(isinstance(c["parallel_models"], int) and c["parallel_models"] >= 1, "parallel_models",
             c["parallel_models"], "an integer >= 1")
    _require(c["parallel_strategy"] in STRATEGIES, "parallel_strategy", c["parallel_strategy"], f"one of {STRATEGIES}")
    threads = c["num_threads"]
    _require(threads is None or (isinstance(threads, int) and threads >= 1), "num_threads", threads,
             "null or an integer >= 1")
    if not c["attack"] and c["stage"] == "all":
        raise ValueError("attack is empty: choose attacks, e.g. attack=[loss,lira_online]")
    return Settings(
        seed=int(c["seed"]),
        device=resolve_device(str(c["device"])),
        num_threads=threads,
        data_dir=Path(c["data_dir"]).expanduser(),
        download=bool(c["download"]),
        store_dir=Path(c["store_dir"]).expanduser(),
        num_models=c["num_models"],
        target_ids=tuple(targets),
        threat_model=c["threat_model"],
        queries=tuple(parse_queries(c["queries"])),
        signals_dtype=SIGNAL_DTYPES[c["signals_dtype"]],
        signal_batch_size=c["signal_batch_size"],
        fpr_targets=tuple(float(f) for f in fprs),
        bootstrap=c["bootstrap"],
        progress=bool(c["progress"]),
        sanity_check=bool(c["sanity_check"]),
        stage=c["stage"],
        shard=c["shard"],
        num_shards=c["num_shards"],
        parallel_models=c["parallel_models"],
        parallel_strategy=c["parallel_strategy"],
        train=TrainConfig.from_mapping(c["train"]),
        dataset=c["dataset"],
        model=c["model"],
        attacks=c["attack"],
        output=ServedOutput.from_config(c.get("output")),
    )
