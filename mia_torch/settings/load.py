"""Validate a composed experiment config, and the run's environment, before any work starts."""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
from omegaconf import DictConfig, OmegaConf

from mia_torch.attacks.base import Attack
from mia_torch.audit.config import AuditConfig
from mia_torch.data.queries import parse_queries
from mia_torch.data.loader import DatasetLoader
from mia_torch.data.splits import THREAT_MODELS, twin
from mia_torch.dp_audit.config import DpAuditConfig
from mia_torch.forget.config import ForgetConfig
from mia_torch.metrics.precision import DEFAULT_PRIORS, check_priors
from mia_torch.settings import trusted
from mia_torch.settings.limits import check_requested_population
from mia_torch.signals.collect import SIGNAL_DTYPES
from mia_torch.signals.output import ServedOutput
from mia_torch.training.config import AUGMENT_ALIASES, TrainConfig
from mia_torch.training.defense import Defense, NoDefense
from mia_torch.training.dp import DPSGD
from mia_torch.training.stacking import STRATEGIES

STAGES = ("all", "train", "attack", "report")
#: How each target's attack knobs are chosen (see :mod:`mia_torch.stages.attack_runs`).
CALIBRATIONS = ("auto", "per_target", "halves")
#: The package that ships the Hydra configs (``configs/`` of a checkout, linked as ``mia_torch/conf``).
CONFIG_PACKAGE = "mia_torch.conf"
#: Device types that run computations (``meta`` and the like hold no data).
COMPUTE_DEVICES = ("cpu", "cuda", "mps", "xpu")
#: Primary keys a config may lack (a run recorded before they existed): each then takes its default.
ADDED_KEYS = frozenset({"allow_large", "dp_audit", "priors"})


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
    defense: Defense
    dataset: DatasetLoader
    model: dict[str, Any]
    attacks: dict[str, dict[str, Any]]
    output: ServedOutput = ServedOutput()
    audit: AuditConfig = AuditConfig()
    forget: ForgetConfig = ForgetConfig()
    save_signals: bool = False
    calibration: str = "per_target"
    allow_large: bool = False
    dp_audit: DpAuditConfig = DpAuditConfig()
    priors: tuple[float, ...] = DEFAULT_PRIORS


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when present; a device that is absent or does not compute is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"device={name!r} is not a device: use auto, cpu, cuda or cuda:N") from err
    if device.type not in COMPUTE_DEVICES:
        raise ValueError(f"device={name!r} is not a compute device: use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available here: use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name!r} but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu" and not _backend_available(device.type):
        raise ValueError(f"device={name!r} is not available here: use device=cpu or device=auto")
    return device


def _backend_available(device_type: str) -> bool:
    if device_type == "mps":
        return torch.backends.mps.is_available()
    module = getattr(torch, device_type, None)
    return bool(module is not None and module.is_available())


@functools.lru_cache(maxsize=1)
def shipped_keys() -> tuple[frozenset[str], frozenset[str]]:
    """The primary config's own top-level keys, and the config groups that ship (``configs/<group>/``)."""
    root = importlib.resources.files(CONFIG_PACKAGE)
    primary = OmegaConf.create((root / "config.yaml").read_text())
    groups = {entry.name for entry in root.iterdir()
              if entry.is_dir() and entry.name.isidentifier() and not entry.name.startswith("_")}
    return frozenset(set(primary) - {"defaults", "hydra"}), frozenset(groups - {"hydra"})


def shipped_options(group: str) -> tuple[str, ...]:
    """The options that ship in config group ``group`` (``configs/<group>/*.yaml``), sorted."""
    folder = importlib.resources.files(CONFIG_PACKAGE) / group
    if not folder.is_dir():
        return ()
    return tuple(sorted(entry.name[:-5] for entry in folder.iterdir() if entry.name.endswith(".yaml")))


def _with_shipped_target(node: Any, group: str) -> Any:
    """Config group ``group``'s ``node``, with the ``_target_`` of the shipped option it names when it has none:
    a run recorded before ``dataset`` and ``defense`` named their ``_target_`` still replays as it ran."""
    if not isinstance(node, dict) or "_target_" in node or node.get("name") not in shipped_options(group):
        return node
    shipped = OmegaConf.create((importlib.resources.files(CONFIG_PACKAGE) / group / f"{node['name']}.yaml").read_text())
    return {"_target_": shipped["_target_"], **node}


def unknown_keys_message(unknown: list[str], known: Iterable[str], *, parent: str = "") -> str:
    """``unknown key(s) ...; did you mean ...? Valid keys: ...`` for keys of config node ``parent`` (top level: "")."""
    known = sorted(str(k) for k in known)
    full = [f"{parent}.{key}" if parent else key for key in unknown]
    close = [f"{parent}.{match}" if parent else match
             for key in unknown for match in difflib.get_close_matches(key, known, n=1)]
    where = f"key(s) {', '.join(full)}" if parent else f"top-level key(s) {', '.join(full)}"
    return (f"unknown {where}: no config defines it" + (f"; did you mean {', '.join(close)}?" if close else "")
            + f" Valid keys{f' of {parent}' if parent else ''}: {', '.join(known)}")


def check_top_level_keys(config: dict[str, Any]) -> None:
    """Refuse top-level keys no shipped config defines (e.g. ``+num_modles=3``) and missing primary keys."""
    primary, groups = shipped_keys()
    unknown = sorted(set(config) - (primary | groups))
    if unknown:
        raise ValueError(unknown_keys_message(unknown, primary | groups))
    missing = sorted(primary - set(config) - ADDED_KEYS)
    if missing:
        raise ValueError(f"config key(s) {', '.join(missing)} missing: a config must define every key of "
                         f"configs/config.yaml")


def check_writable(directory: Path, *, key: str) -> None:
    """Create ``directory`` if needed and write a probe file there, naming config ``key`` on failure."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=directory, prefix=".write-probe-"):
            pass
    except OSError as err:
        reason = err.strerror or str(err)
        raise ValueError(f"{key}={str(directory)!r} is not a writable directory ({reason}): "
                         f"point {key} at a directory you can write to") from err


def build_attack(name: str, attack_cfg: Any) -> Attack:
    """Build ``attack.<name>`` through the guarded builder (:func:`mia_torch.settings.trusted.build`), naming the
    key if it has no ``_target_``, cannot be built, or is not an :class:`Attack`."""
    return trusted.build(attack_cfg, kind="attack", key=f"attack.{name}")


def check_attacks(settings: "Settings") -> dict[str, Attack]:
    """Build every configured attack (naming ``attack.<name>`` on error) and check it suits the threat model."""
    attacks = {name: build_attack(name, cfg) for name, cfg in settings.attacks.items()}
    if not settings.output.serves_scores:
        for name, attack in attacks.items():
            if attack.needs_scores:
                raise ValueError(
                    f"attack {name} needs the model's scores but {settings.output.describe()} serves only the "
                    "predicted label: use label-only attacks (attack=[gap,label_only]) or another output"
                )
    _check_references(settings, attacks)
    if settings.threat_model == "disjoint":
        online = [name for name, attack in attacks.items() if attack.needs_in_references]
        if online:
            raise ValueError(
                f"threat_model=disjoint cannot run attack(s) {', '.join(online)}: they need reference models "
                f"trained on the target's candidates (IN references), which a disjoint attacker does not have. "
                f"Use offline attacks (e.g. lira_offline, rmia) or threat_model=shared"
            )
    return attacks


def fewest_references(settings: "Settings") -> int:
    """The fewest reference models any target gets: all models but it and its twin (shared), the shadows (disjoint)."""
    m = settings.num_models
    if settings.threat_model == "disjoint":
        return m - len(settings.target_ids)
    return min(m - 1 - (twin(t, m) is not None) for t in settings.target_ids)


def _check_references(settings: "Settings", attacks: dict[str, Attack]) -> None:
    """Attacks that need reference models need a target with at least one (quantile and threshold attacks need none)."""
    needing = [name for name, attack in attacks.items() if attack.requires_references]
    if needing and fewest_references(settings) < 1:
        raise ValueError(
            f"attack(s) {', '.join(needing)} need reference models, but num_models={settings.num_models} leaves a "
            "target none (its twin, trained on the other half, is never a reference): set num_models >= 3, or use "
            "attacks that need no reference model, e.g. attack=[quantile,loss]"
        )


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ValueError(f"{key}={value!r} is invalid: expected {expected}")


def load_settings(cfg: DictConfig) -> Settings:
    """Check every top-level value and group, naming the offending key on error."""
    c = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(c, dict)
    check_top_level_keys(c)
    for group in ("dataset", "model", "train", "attack"):
        if not isinstance(c.get(group), dict):
            raise ValueError(f"config group `{group}` is missing: pick one, e.g. {group}=<option>")
    _require(isinstance(c["num_models"], int) and c["num_models"] >= 1, "num_models", c["num_models"], "an integer >= 1")
    targets = _targets(c["target_ids"], c["num_models"])
    _require(c["threat_model"] in THREAT_MODELS, "threat_model", c["threat_model"], f"one of {THREAT_MODELS}")
    if c["target_ids"] == "all" and c["threat_model"] == "disjoint":
        raise ValueError("target_ids=all needs threat_model=shared: with threat_model=disjoint the shadow models "
                         "are the models that are not targets, so some must be left out (e.g. target_ids=[0,1,2,3])")
    save_signals, calibration = c.get("save_signals", False), c.get("calibration", "auto")
    _require(isinstance(save_signals, bool), "save_signals", save_signals, "true or false")
    _require(calibration in CALIBRATIONS, "calibration", calibration, f"one of {CALIBRATIONS}")
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
    _require(isinstance(c["seed"], int) and not isinstance(c["seed"], bool) and c["seed"] >= 0, "seed",
             c["seed"], "an integer >= 0")
    for key in ("download", "progress", "sanity_check"):
        _require(isinstance(c[key], bool), key, c[key], "true or false")
    allow_large = c.get("allow_large", False)  # runs recorded before the key existed: off
    _require(isinstance(allow_large, bool), "allow_large", allow_large, "true or false")
    for key in ("data_dir", "store_dir"):
        _require(isinstance(c[key], str) and c[key] != "", key, c[key], "a directory path")
    threads = c["num_threads"]
    _require(threads is None or (isinstance(threads, int) and threads >= 1), "num_threads", threads,
             "null or an integer >= 1")
    if not c["attack"] and c["stage"] != "train":
        raise ValueError("attack is empty: choose attacks, e.g. attack=[loss,lira_online]")
    # options reach the loader as plain values; a nested _target_ (dataset.encoder) is the loader's to resolve
    dataset = trusted.build(_with_shipped_target(c["dataset"], "dataset"), kind="dataset", key="dataset",
                            _recursive_=False, _convert_="all")
    kind = dataset.kind
    queries = tuple(parse_queries(c["queries"], kind=kind))
    check_requested_population(c, queries=len(queries))
    train = TrainConfig.from_mapping(c["train"])
    if kind == "tabular":
        _check_no_image_augmentation(train, dataset.name)
    defense = NoDefense() if c.get("defense") is None else trusted.build(  # runs saved before the group existed
        _with_shipped_target(c["defense"], "defense"), kind="defense", key="defense")
    defense.check_training(train)
    audit, forget = AuditConfig.from_mapping(c.get("audit")), ForgetConfig.from_mapping(c.get("forget"))
    _check_single_target_mode(audit, forget, targets=targets, threat_model=c["threat_model"], stage=c["stage"])
    dp_audit = DpAuditConfig.from_mapping(c.get("dp_audit"))
    dp_audit.check_run(attacks=list(c["attack"]), private=isinstance(defense, DPSGD),
                       defense_delta=defense.delta if isinstance(defense, DPSGD) else None, data_kind=kind,
                       dataset=dataset.name, target_ids=targets, stage=c["stage"],
                       other_mode="audit.checkpoint" if audit.enabled else "forget.method" if forget.enabled else None)
    return Settings(
        seed=c["seed"],
        device=resolve_device(str(c["device"])),
        num_threads=threads,
        data_dir=Path(c["data_dir"]).expanduser(),
        download=c["download"],
        store_dir=Path(c["store_dir"]).expanduser(),
        num_models=c["num_models"],
        target_ids=tuple(targets),
        threat_model=c["threat_model"],
        queries=queries,
        signals_dtype=SIGNAL_DTYPES[c["signals_dtype"]],
        signal_batch_size=c["signal_batch_size"],
        fpr_targets=tuple(float(f) for f in fprs),
        bootstrap=c["bootstrap"],
        progress=c["progress"],
        sanity_check=c["sanity_check"],
        stage=c["stage"],
        shard=c["shard"],
        num_shards=c["num_shards"],
        parallel_models=c["parallel_models"],
        parallel_strategy=c["parallel_strategy"],
        train=train,
        defense=defense,
        dataset=dataset,
        model=c["model"],
        attacks=c["attack"],
        output=ServedOutput.from_config(c.get("output")),
        audit=audit,
        forget=forget,
        save_signals=save_signals,
        calibration=_calibration(calibration, all_targets=c["target_ids"] == "all", threat_model=c["threat_model"]),
        allow_large=allow_large,
        dp_audit=dp_audit,
        priors=check_priors(c.get("priors", list(DEFAULT_PRIORS))),
    )


def _targets(value: Any, num_models: int) -> list[int]:
    """``target_ids``: a list of model indices, one index, or ``all`` (every model)."""
    if value == "all":
        return list(range(num_models))
    targets = value if isinstance(value, list) else [value]
    _require(
        all(isinstance(t, int) and not isinstance(t, bool) and 0 <= t < num_models for t in targets)
        and len(targets) > 0,
        "target_ids", value, f"all, or a non-empty list of model indices in [0, num_models={num_models})",
    )
    return targets


def _calibration(value: str, *, all_targets: bool, threat_model: str) -> str:
    """The calibration in effect: ``auto`` is ``halves`` for ``target_ids=all`` and ``per_target`` otherwise; with
    ``threat_model=disjoint`` every target has the same references, so knobs are chosen once on them."""
    if threat_model == "disjoint":
        return "per_target"
    if value == "auto":
        return "halves" if all_targets else "per_target"
    return value


def _check_single_target_mode(audit: AuditConfig, forget: ForgetConfig, *, targets: list[int], threat_model: str,
                              stage: str) -> None:
    """An audit and a forget check each ask about one model, against references from the shared population."""
    if audit.enabled and forget.enabled:
        raise ValueError(f"{audit.key} and forget.method are two different runs: set one of them")
    mode = audit.key if audit.enabled else "forget.method" if forget.enabled else None
    if mode is None:
        return
    if len(targets) != 1:
        raise ValueError(f"{mode} asks about one model: target_ids={targets} must name exactly one model slot "
                         "(its seed and its references' slots), e.g. target_ids=[0]")
    if threat_model != "shared":
        raise ValueError(f"{mode} needs threat_model=shared: references are trained on random halves of the "
                         "population the records come from")
    if stage != "all":
        raise ValueError(f"{mode} runs every stage: stage={stage!r} is for sharding a study's training and attacks; "
                         "train the references in shards with a plain study config first if needed")


def _check_no_image_augmentation(train: TrainConfig, dataset: str) -> None:
    """Random crops, flips and cutout are image augmentations: refuse them on tabular data (mixup is fine)."""
    for key, off in (("crop_padding", 0), ("flip", "false"), ("cutout", 0)):
        value = getattr(train.augment, key)
        if value:
            also = f" (also spelled train.{key})" if key in AUGMENT_ALIASES else ""
            raise ValueError(
                f"train.augment.{key}={value!r}{also} is an image augmentation, but dataset {dataset!r} is "
                f"tabular: set train.augment.{key}={off}"
            )
