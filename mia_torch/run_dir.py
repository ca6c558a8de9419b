"""A finished run's directory read as untrusted data, for ``mia-reproduce``.

Nothing read here is resolved, unpickled or built:

- ``results.json`` is parsed with :mod:`json`; its ``config`` (the resolved config the run
  recorded, what it actually used) is the config a replay reruns. No string anywhere in the
  file may be an OmegaConf interpolation (:func:`mia_torch.settings.trusted.check_plain_data`).
- ``.hydra/config.yaml`` (what Hydra saved, *before* resolution: ``data_dir: ${oc.env:...}``) is
  parsed with a YAML loader that refuses tags (``!!python/...``) and anchors, and is only
  cross-checked against the recorded config, never resolved nor rerun. Its interpolations may
  be what Hydra and users write: references (``${shard}``) and the ``oc.env``, ``now`` and
  ``hydra`` resolvers with plain arguments; any other (``oc.create``, ``oc.decode``, custom
  resolvers, escaped ``\\${...}``, nested forms) is refused, naming the key.
- every array the comparison will read is loaded with ``allow_pickle=False`` and checked against
  the config (dtype and shape) before anything is rerun (:func:`check_run_files`); so is
  ``signals.json``, whose store keys must be the store's hex digests (no path).
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from mia_torch.run_compare import flatten
from mia_torch.settings.trusted import check_plain_data, omegaconf_special

__all__ = ["RunDirError", "check_run_files", "read_json_data", "read_yaml_data", "recorded_config"]

#: Config keys that may differ between ``.hydra/config.yaml`` and the recorded config without a note.
NOT_COMPARED = ("store_dir", "progress")
#: Interpolations Hydra and users write in a saved config: a reference, or oc.env / now / hydra with plain text.
_BENIGN_INTERPOLATION = re.compile(r"\$\{(?:[A-Za-z_][\w.\[\]-]*|(?:oc\.env|now|hydra):[^${}\\]*)\}")
_LISTED = 6
#: A store key as the store writes it (:func:`mia_torch.store.digest`): nothing that could name another path.
_STORE_KEY = re.compile(r"[0-9a-f]{32}")


class RunDirError(ValueError):
    """The run directory cannot be replayed (a file missing, unreadable, or not what the run writes)."""


def read_json_data(path: Path) -> Any:
    """``path`` parsed as JSON (plain data); :class:`RunDirError` naming it otherwise."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
        raise RunDirError(f"{path} is not readable JSON: {err}") from err


def read_yaml_data(path: Path) -> Any:
    """``path`` parsed as plain YAML: tags (``!!python/object``, ``!!binary``) and anchors/aliases are refused."""
    try:
        text = path.read_text(encoding="utf-8")
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if getattr(event, "anchor", None) is not None or isinstance(event, yaml.AliasEvent):
                raise RunDirError(f"{path} line {event.start_mark.line + 1}: YAML anchors and aliases are refused "
                                  "(a run's saved config has none)")
            if getattr(event, "tag", None) is not None:
                raise RunDirError(f"{path} line {event.start_mark.line + 1}: the YAML tag {event.tag!r} is refused "
                                  "(a run's saved config is plain data, with no tags)")
        return yaml.safe_load(text)
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise RunDirError(f"{path} is not readable YAML: {err}") from err


def _check_saved_interpolations(saved: Any, path: Path) -> None:
    """Refuse strings of the saved config that hold interpolations other than benign ones, naming the keys."""
    bad = [(key, value) for key, value in flatten(saved)
           if isinstance(value, str) and "${" in _BENIGN_INTERPOLATION.sub("", value)]
    bad += [(f"{key} (a key)", key) for key, _ in flatten(saved) if "${" in key]
    if bad:
        listed = "; ".join(f"{key}: {value!r}"[:200] for key, value in bad[:_LISTED])
        raise RunDirError(
            f"{path} holds interpolations a run does not write ({listed}): only references (${{key}}) and "
            "${oc.env:...}, ${now:...}, ${hydra:...} with plain arguments are accepted there, and never resolved. "
            "Resolver calls such as oc.create, oc.decode or your own, escaped \\${...} and nested forms are refused"
        )


def recorded_config(run_dir: Path, results: Any) -> tuple[dict[str, Any], list[str]]:
    """The config to replay (``results.json``'s recorded config) and notes from the cross-check with
    ``.hydra/config.yaml``; refuses interpolations anywhere in either file."""
    results_file = run_dir / "results.json"
    if not isinstance(results, dict):
        raise RunDirError(f"{results_file} does not hold a run's results (a JSON object)")
    check_plain_data(results, source=str(results_file))
    config = results.get("config")
    if not isinstance(config, dict):
        raise RunDirError(f"{results_file}: `config` is {config!r}, not the run's recorded config (a mapping): "
                          "reproduce needs the results.json of a finished run")
    notes = [f"config: {results_file} (the resolved config the run recorded)"]
    saved_file = run_dir / ".hydra" / "config.yaml"
    if saved_file.is_file():
        saved = read_yaml_data(saved_file)
        if not isinstance(saved, dict):
            raise RunDirError(f"{saved_file} does not hold a config (a mapping)")
        _check_saved_interpolations(saved, saved_file)
        notes += _cross_check(saved, config, saved_file)
    return config, notes


def _cross_check(saved: dict[str, Any], recorded: dict[str, Any], saved_file: Path) -> list[str]:
    """A note for every plain value of the saved config that the recorded config does not hold."""
    then = dict(flatten(recorded))
    notes = []
    for key, value in flatten(saved):
        top = key.split(".")[0].split("[")[0]
        if value is None or omegaconf_special(value) or top in NOT_COMPARED or then.get(key, value) == value:
            continue
        notes.append(f"WARNING: {saved_file.name} has {key}={value!r} but the run recorded {then.get(key)!r}: "
                     "the recorded value is replayed")
    return notes


# ---------------------------------------------------------------- arrays


def _npy(path: Path) -> np.ndarray:
    """The header-checked, memory-mapped array of ``path`` (no pickle; a truncated file fails here)."""
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise RunDirError(f"{path} is not a readable .npy array of numbers ({err}): it cannot be compared") from err


def _expect(path: Path, array: np.ndarray, *, kinds: str, shape: tuple[int | None, ...], what: str) -> None:
    """Refuse ``array`` unless its dtype kind is in ``kinds`` and its shape fits ``shape`` (None: any size)."""
    fits = array.ndim == len(shape) and all(want is None or got == want for got, want in zip(array.shape, shape))
    if array.dtype.kind not in kinds or not fits:
        wanted = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
        raise RunDirError(f"{path} holds a {array.dtype} array of shape {list(array.shape)}, but this run writes "
                          f"{what} {wanted}: it was not written by this run; cannot compare")


def _check_manifest(path: Path, *, num_models: int, queries: int, population: int | None) -> None:
    """Refuse a ``signals.json`` that is not the manifest this run writes (see :mod:`mia_torch.signals.manifest`)."""
    from mia_torch.signals.output import ServedOutput

    record = read_json_data(path)
    if not isinstance(record, dict):
        raise RunDirError(f"{path} does not hold a signals manifest (a JSON object): cannot compare")
    signals, problems = record.get("signals"), []
    if not isinstance(record.get("store_dir"), str):
        problems.append(f"store_dir is {record.get('store_dir')!r}, not a directory")
    if population is not None and record.get("num_examples") != population:
        problems.append(f"num_examples is {record.get('num_examples')!r}, not the population {population}")
    if record.get("num_queries") != queries:
        problems.append(f"num_queries is {record.get('num_queries')!r}, not the config's {queries}")
    try:
        ServedOutput.from_config(record.get("output"))
    except (TypeError, ValueError, AttributeError) as err:
        problems.append(f"output {record.get('output')!r} is not a served output ({err})")
    if not isinstance(signals, dict) or not signals:
        problems.append("signals is not a non-empty mapping of model -> store key")
    else:
        bad = [m for m, key in signals.items() if not (m.isdigit() and int(m) < num_models and isinstance(key, str)
                                                        and _STORE_KEY.fullmatch(key))]
        if bad:
            problems.append(f"signals holds {len(bad)} entr{'y' if len(bad) == 1 else 'ies'} that are no model in "
                            f"[0, {num_models}) with a store key (32 hex digits), e.g. {bad[0]!r}: "
                            f"{str(signals[bad[0]])[:80]!r}")
    if problems:
        raise RunDirError(f"{path} is not the signals manifest this run writes: {'; '.join(problems)}: "
                          "cannot compare")


def _check_scores(path: Path, *, attacks: set[str], targets: set[int], population: int) -> None:
    try:
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                attack, _, target = name.rpartition("/target_")
                if attack not in attacks or not target.isdigit() or int(target) not in targets:
                    raise RunDirError(f"{path} holds {name!r}, which is no '<attack>/target_<t>' of this run's "
                                      f"attacks {sorted(attacks)} and targets {sorted(targets)}")
                _expect(path, archive[name], kinds="f", shape=(population,), what=f"as {name} float scores")
    except RunDirError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise RunDirError(f"{path} is not a readable .npz of score arrays ({err}): it cannot be compared") from err


def check_run_files(run_dir: Path, *, num_models: int, queries: int, targets: set[int], attacks: set[str],
                    population: Any) -> None:
    """Check every array the comparison reads, before anything is rerun; :class:`RunDirError` names the file.

    ``keep.npy`` and ``scores.npz`` must exist; ``eval_mask.npy``, ``labels.npy``,
    ``signals.npy`` and ``signals.json`` are checked when present. ``population`` is the recorded population size
    (``results.json`` ``dataset.population``), or None to take it from ``keep.npy``.
    """
    for required in ("keep.npy", "scores.npz"):
        if not (run_dir / required).is_file():
            raise RunDirError(f"{run_dir / required} is missing: every finished run writes it, so there is nothing "
                              "to compare the rerun with")
    keep = _npy(run_dir / "keep.npy")
    if not (isinstance(population, int) and not isinstance(population, bool) and population > 0):
        population = keep.shape[-1] if keep.ndim == 2 else None
    _expect(run_dir / "keep.npy", keep, kinds="b", shape=(num_models, population), what="a bool keep matrix")
    specs = {"eval_mask.npy": ("b", (population,), "a bool mask"), "labels.npy": ("iu", (population,), "int labels"),
             "signals.npy": ("f", (None, population, queries, None), "float signals")}
    for name, (kinds, shape, what) in specs.items():
        if (run_dir / name).is_file():
            _expect(run_dir / name, _npy(run_dir / name), kinds=kinds, shape=shape, what=what)
    if (run_dir / "signals.json").is_file():
        _check_manifest(run_dir / "signals.json", num_models=num_models, queries=queries, population=population)
    _check_scores(run_dir / "scores.npz", attacks=attacks, targets=targets, population=population)
