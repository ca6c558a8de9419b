"""A run directory is data: nothing in it is resolved, imported or called unless allowed (mia-reproduce).

Every case starts from a clean run directory made without training (a composed tiny config,
typed results of synthetic scores, arrays of the right shapes) that passes every check, plants
one hostile or malformed thing in it, and replays it in-process: the replay must exit 2 naming
the key or file, before anything is rerun (no rerun directory), and the marker file that the
planted code would create must not exist. If a check failed open, the rerun would start.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from omegaconf import OmegaConf

from helpers import TINY, make_config
from results_fixtures import make_results
from mia_torch import reproduce
from mia_torch.evaluation import save_scores
from mia_torch.settings import trusted
from mia_torch.settings.load import build_attack

MARKER = "MARKER"
CREATE = "{_target_: pathlib.Path.touch, _args_: ['MARKER']}"
TOUCH = {"_target_": "pathlib.Path.touch", "_args_": [MARKER]}
RESOLVER = "mia_test_touch"  # a custom resolver that creates its argument when resolved


@pytest.fixture(scope="module", autouse=True)
def touching_resolver():
    """Register a resolver that creates a file: a replay that resolved anything would leave it behind."""
    OmegaConf.register_new_resolver(RESOLVER, lambda path: Path(path).touch(), replace=True)
    yield
    OmegaConf.clear_resolver(RESOLVER)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory) -> Path:
    """A run directory as a finished tiny run leaves it (.hydra/config.yaml unresolved), made without training."""
    root = tmp_path_factory.mktemp("clean")
    cfg = make_config(root, [*TINY, "attack=[loss,lira_online]", "device=cpu"])
    config = OmegaConf.to_container(cfg, resolve=True)
    config["queries"] = ["identity", "flip"]
    results, scores, keep, labels = make_results(num_examples=400, targets=(0,), bootstrap=0,
                                                 shifts={"loss": 0.5, "lira_online": 1.0})
    results.config, results.dataset = config, {"name": "synthetic", "population": 400, "num_classes": 10}
    run = root / "run"
    (run / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")  # as Hydra saves it: data_dir: ${oc.env:...}
    (run / "results.json").write_text(json.dumps(results.to_dict()))
    np.save(run / "keep.npy", keep)
    np.save(run / "eval_mask.npy", np.ones(400, dtype=bool))
    np.save(run / "labels.npy", labels.astype(np.int64))
    np.save(run / "signals.npy", np.zeros((4, 400, 2, 10), dtype=np.float32))
    (run / "signals.json").write_text(json.dumps({  # as a run writes it (signals.npy too with save_signals=true)
        "store_dir": str(root / "store"), "num_examples": 400, "num_queries": 2, "output": {"name": "logits"},
        "signals": {str(m): f"{m:032x}" for m in range(4)}}))
    save_scores(run / "scores.npz", scores)
    return run


def _copy(clean_run: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    return run


def _edit_manifest(run: Path, change) -> None:
    data = json.loads((run / "signals.json").read_text())
    change(data)
    (run / "signals.json").write_text(json.dumps(data))


def _edit_json(run: Path, change) -> None:
    data = json.loads((run / "results.json").read_text())
    change(data)
    (run / "results.json").write_text(json.dumps(data))


def _with_marker(value, marker: Path):
    """``value`` with every MARKER replaced by the marker file's path."""
    return json.loads(json.dumps(value).replace(MARKER, str(marker)))


def _refused(run: Path, tmp_path: Path, capsys, *expected: str, allow: tuple[str, ...] = ()) -> str:
    """Replay ``run``: exit 2, each ``expected`` in the message, no rerun, no marker; returns the message."""
    argv = [str(run), "--out", str(tmp_path / "again"), *(a for t in allow for a in ("--allow-target", t))]
    code = reproduce.main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.out[-2000:] + captured.err[-2000:]
    for text in expected:
        assert text in captured.err, captured.err
    assert "Traceback" not in captured.err and "MIA_DEBUG=1" in captured.err
    assert not (tmp_path / "again").exists() and "\nreproduce " not in "\n" + captured.out  # nothing rerun
    assert not (tmp_path / "marker").exists()
    return captured.err


def test_the_clean_run_directory_passes_every_check(clean_run):
    """The control: only what each case plants makes it fail. Its saved config.yaml holds ${oc.env:...}."""
    assert "${oc.env:" in (clean_run / ".hydra" / "config.yaml").read_text()
    config, notes, _ = reproduce._checked_inputs(clean_run, ())
    assert config["attack"]["loss"]["_target_"] == "mia_torch.attacks.ThresholdAttack"
    assert not [n for n in notes if n.startswith("WARNING")]


PAYLOADS = {
    "oc.create": "${oc.create:" + CREATE + "}",
    "escaped oc.create": "\\${oc.create:" + CREATE + "}",
    "oc.decode": '${oc.decode:"' + CREATE + '"}',
    "oc.env": "${oc.env:HOME}",
    "oc.select nesting oc.create": "${oc.select:nowhere,${oc.create:" + CREATE + "}}",
    "oc.dict.values": "${oc.dict.values:attack}",
    "oc.dict.keys": "${oc.dict.keys:attack}",
    "custom resolver": "${" + RESOLVER + ":MARKER}",
    "node reference": "${attack.lira_online}",
    "embedded in text": "mia_torch.attacks.${oc.create:" + CREATE + "}",
    "escaped and nested": "\\${oc.select:x,\\${" + RESOLVER + ":MARKER}}",
    "missing marker": "???",
}
#: Interpolations Hydra and users write: accepted in .hydra/config.yaml (and never resolved) but not in results.json.
BENIGN_IN_SAVED_CONFIG = {"oc.env", "node reference", "missing marker"}


@pytest.mark.parametrize("with_saved_config", [False, True], ids=["alone", "beside .hydra/config.yaml"])
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_interpolations_in_results_json_are_refused_naming_the_key(clean_run, tmp_path, capsys, name,
                                                                   with_saved_config):
    run = _copy(clean_run, tmp_path)
    if not with_saved_config:
        shutil.rmtree(run / ".hydra")
    payload = _with_marker(PAYLOADS[name], tmp_path / "marker")
    _edit_json(run, lambda data: data["config"]["attack"].__setitem__("loss", payload))
    _refused(run, tmp_path, capsys, "config.attack.loss", "never resolved")


def test_an_interpolation_as_a_key_or_deep_in_a_list_is_refused(clean_run, tmp_path, capsys):
    run = _copy(clean_run, tmp_path)
    payload = _with_marker(PAYLOADS["oc.create"], tmp_path / "marker")
    _edit_json(run, lambda data: data["config"]["model"].__setitem__(payload, 1))
    _refused(run, tmp_path, capsys, "config.model.${oc.create:")
    run = _copy(clean_run, tmp_path / "list")
    _edit_json(run, lambda data: data["config"]["model"]["hidden_sizes"].append({"x": [payload]}))
    _refused(run, tmp_path / "list", capsys, "config.model.hidden_sizes[2].x[0]")


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_interpolations_in_the_saved_config_are_refused_or_never_resolved(clean_run, tmp_path, capsys, name):
    """Hostile forms are refused naming the key; those Hydra writes are accepted as text and never resolved:
    the recorded config is what is replayed."""
    run = _copy(clean_run, tmp_path)
    saved = yaml.safe_load((run / ".hydra" / "config.yaml").read_text())
    saved["attack"]["loss"] = _with_marker(PAYLOADS[name], tmp_path / "marker")
    (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump(saved))
    if name in BENIGN_IN_SAVED_CONFIG:
        config, _, _ = reproduce._checked_inputs(run, ())
        assert config["attack"]["loss"]["_target_"] == "mia_torch.attacks.ThresholdAttack"
        assert not (tmp_path / "marker").exists()
    else:
        _refused(run, tmp_path, capsys, "config.yaml", "attack.loss", "never resolved")


@pytest.mark.parametrize("text, expected", [
    ("attack:\n  loss: !!python/object/apply:pathlib.Path.touch ['MARKER']\n", "tag"),
    ("attack:\n  loss: !!python/name:os.system\n", "tag"),
    ("attack:\n  loss: !!binary aGVsbG8=\n", "tag"),
    ("attack:\n  loss: &a {statistic: loss}\n  lira: *a\n", "anchors"),
    ("attack: [unclosed\n", "not readable YAML"),
])
def test_yaml_tags_and_anchors_in_the_saved_config_are_refused(clean_run, tmp_path, capsys, text, expected):
    run = _copy(clean_run, tmp_path)
    (run / ".hydra" / "config.yaml").write_text(text.replace(MARKER, str(tmp_path / "marker")))
    _refused(run, tmp_path, capsys, ".hydra/config.yaml", expected)


TARGETS = [  # (case, where in the config, the node planted there, the key of the refused _target_)
    ("a callable", ("attack", "loss"), TOUCH, "attack.loss._target_"),
    ("_partial_", ("attack", "loss"), {**TOUCH, "_partial_": True}, "attack.loss._target_"),
    ("_args_", ("attack", "loss"), {"_target_": "mia_torch.attacks.ThresholdAttack", "_args_": [TOUCH]},
     "attack.loss._args_[0]._target_"),
    ("a nested config", ("attack", "loss"), {"_target_": "mia_torch.attacks.ThresholdAttack", "statistic": TOUCH},
     "attack.loss.statistic._target_"),
    ("a list in the model", ("model", "hidden_sizes"), [256, TOUCH], "model.hidden_sizes[1]._target_"),
    ("shutil.copyfile", ("attack", "loss"), {"_target_": "shutil.copyfile", "_args_": ["results.json", MARKER]},
     "attack.loss._target_"),
    ("a function in mia_torch", ("attack", "loss"),
     {"_target_": "mia_torch.atomic.atomic_write_bytes", "_args_": [MARKER, "eA=="]}, "attack.loss._target_"),
    ("a mia_torch class of no buildable kind", ("attack", "loss"),
     {"_target_": "mia_torch.store.ArtifactStore", "_args_": [MARKER]}, "attack.loss._target_"),
    ("the audit preprocess", ("audit", "preprocess"), TOUCH, "audit.preprocess._target_"),
]


@pytest.mark.parametrize("where, node, key", [t[1:] for t in TARGETS], ids=[t[0] for t in TARGETS])
def test_foreign_targets_anywhere_in_the_config_are_refused(clean_run, tmp_path, capsys, where, node, key):
    run = _copy(clean_run, tmp_path)
    planted = _with_marker(node, tmp_path / "marker")

    def plant(data):
        parent = data["config"]
        for part in where[:-1]:
            parent = parent[part]
        parent[where[-1]] = planted
    _edit_json(run, plant)
    target = dict(trusted.find_targets({where[-1]: planted}, ".".join(where[:-1])))[key]
    _refused(run, tmp_path, capsys, f"{key}: {target!r}", f"--allow-target {target}")


# ---------------------------------------------------------------- malformed files


def _save_object_array(path: Path) -> None:
    np.save(path, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)


def _object_scores(path: Path) -> None:
    np.savez(path, **{"loss/target_0": np.array([{"a": 1}], dtype=object)})


FILES = [
    ("config is a string", lambda run: _edit_json(run, lambda d: d.__setitem__("config", "oops")),
     "`config` is 'oops'"),
    ("results.json not JSON", lambda run: (run / "results.json").write_text("{oops"), "results.json is not readable"),
    ("invalid config value", lambda run: _edit_json(run, lambda d: d["config"].__setitem__("num_models", "many")),
     "num_models='many'"),
    ("truncated signals", lambda run: (run / "signals.npy").write_bytes((run / "signals.npy").read_bytes()[:999]),
     "signals.npy"),
    ("object array in signals", lambda run: _save_object_array(run / "signals.npy"), "signals.npy"),
    ("manifest not JSON", lambda run: (run / "signals.json").write_text('{"signals": '), "signals.json"),
    ("manifest key with a path", lambda run: _edit_manifest(run, lambda d: d["signals"].__setitem__("1", "../x")),
     "signals.json is not the signals manifest this run writes"),
    ("manifest of other queries", lambda run: _edit_manifest(run, lambda d: d.__setitem__("num_queries", 3)),
     "num_queries is 3"),
    ("object array in keep", lambda run: _save_object_array(run / "keep.npy"), "keep.npy"),
    ("object array in scores", lambda run: _object_scores(run / "scores.npz"), "scores.npz"),
    ("keep of another shape", lambda run: np.save(run / "keep.npy", np.zeros((3, 400), bool)), "keep.npy"),
    ("float labels", lambda run: np.save(run / "labels.npy", np.zeros(400)), "labels.npy"),
    ("scores of an unknown attack", lambda run: save_scores(run / "scores.npz", {"nope": {0: np.zeros(400)}}),
     "'nope/target_0'"),
    ("scores of another length", lambda run: save_scores(run / "scores.npz", {"loss": {0: np.zeros(9)}}),
     "scores.npz"),
    ("no scores", lambda run: (run / "scores.npz").unlink(), "scores.npz is missing"),
    ("scores not an archive", lambda run: (run / "scores.npz").write_bytes(b"PK\x03\x04oops"), "scores.npz"),
]


@pytest.mark.parametrize("name, damage, expected", FILES, ids=[f[0] for f in FILES])
def test_bad_files_are_refused_before_anything_is_rerun(clean_run, tmp_path, capsys, name, damage, expected):
    run = _copy(clean_run, tmp_path)
    damage(run)
    _refused(run, tmp_path, capsys, expected)


def test_the_debug_switch_shows_the_exception(clean_run, tmp_path, monkeypatch):
    run = _copy(clean_run, tmp_path)
    (run / "scores.npz").unlink()
    monkeypatch.setenv("MIA_DEBUG", "1")
    with pytest.raises(ValueError, match="scores.npz is missing"):
        reproduce.main([str(run), "--out", str(tmp_path / "again")])


# ---------------------------------------------------------------- the guard at the point of building


def test_the_guard_checks_the_exact_node_it_builds(tmp_path):
    """What reaches hydra.utils.instantiate: nested targets, interpolations (even in a trusted run, since Hydra
    would resolve them again), and a mia_torch class of the wrong kind; nothing is called."""
    marker = str(tmp_path / "marker")
    replay = trusted.TargetPolicy.replay(source="a test")
    nested = {"_target_": "mia_torch.attacks.ThresholdAttack", "_args_": [{**TOUCH, "_args_": [marker]}]}
    with pytest.raises(trusted.UnsafeConfigError, match=r"attack\.x\._args_\[0\]\._target_"):
        trusted.build(nested, kind="attack", key="attack.x", policy=replay)
    for policy in (trusted.TRUSTED, replay):
        with pytest.raises(trusted.UnsafeConfigError, match=r"attack\.x.*statistic"):
            trusted.build({"_target_": "mia_torch.attacks.ThresholdAttack",
                           "statistic": "${oc.create:" + CREATE.replace(MARKER, marker) + "}"},
                          kind="attack", key="attack.x", policy=policy)
    unresolved = OmegaConf.create({"_target_": "mia_torch.attacks.ThresholdAttack",
                                   "statistic": "${" + RESOLVER + ":" + marker + "}"})
    with pytest.raises(trusted.UnsafeConfigError):
        trusted.build(unresolved, kind="attack", key="attack.x", policy=replay)  # refused, never resolved
    with pytest.raises(trusted.UnsafeConfigError, match=r"model\._target_"):
        trusted.build({"_target_": "mia_torch.attacks.LiRA"}, kind="model", key="model", policy=replay)
    assert not Path(marker).exists()


def test_a_replay_policy_in_effect_reaches_every_builder():
    """build_attack, build_model and the audit preprocess all go through the guard: under a replay policy a
    foreign target is refused there; allowed by name, it is built (and judged by its kind)."""
    from mia_torch.audit.preprocess import preprocess_dataset
    from mia_torch.data import Dataset
    from mia_torch.training.build import build_model

    x = torch.rand(4, 1, 2, 2)
    data = Dataset(name="t", x=x, y=torch.arange(4) % 2, x_test=x, y_test=torch.arange(4) % 2, num_classes=2)
    calls = {
        "attack.x": lambda: build_attack("x", {"_target_": "collections.OrderedDict"}),
        "model": lambda: build_model({"_target_": "torch.nn.Flatten"}, input_shape=(1, 2, 2), num_classes=2, seed=0),
        "audit.preprocess": lambda: preprocess_dataset(data, {"_target_": "torch.mul", "other": 2.0}),
    }
    with trusted.policy_in_effect(trusted.TargetPolicy.replay(source="a test")):
        for key, call in calls.items():
            with pytest.raises(trusted.UnsafeConfigError, match=key.replace(".", r"\.") + r"\._target_"):
                call()
    assert trusted.active_policy() is trusted.TRUSTED
    allowed = ["collections.OrderedDict", "torch.nn.Flatten", "torch.mul"]
    with trusted.policy_in_effect(trusted.TargetPolicy.replay(allowed, source="a test")):
        with pytest.raises(ValueError, match="which is not an Attack"):
            calls["attack.x"]()
        assert isinstance(calls["model"](), torch.nn.Flatten)
        torch.testing.assert_close(calls["audit.preprocess"]().x, 2 * x)


def test_a_kind_can_accept_functions_defined_in_mia_torch(monkeypatch):
    """A kind whose mia_torch members are functions (e.g. registered loaders) names them with ``accepts``: a replay
    takes those and still refuses every other function of the package."""
    monkeypatch.setitem(trusted.KINDS, "curve", trusted.Kind("curve", None, "a function", "name a ROC function",
                                                             accepts=f"{__name__}:_is_roc_curve"))
    replay = trusted.TargetPolicy.replay(source="a test")
    found = trusted.resolve_target({"_target_": "mia_torch.metrics.roc.roc_curve"}, kind="curve", key="k",
                                   policy=replay)
    assert found.__name__ == "roc_curve"
    with pytest.raises(trusted.UnsafeConfigError, match=r"k\._target_: 'mia_torch\.atomic\.atomic_write_bytes'"):
        trusted.resolve_target({"_target_": "mia_torch.atomic.atomic_write_bytes"}, kind="curve", key="k",
                               policy=replay)


def _is_roc_curve(obj) -> bool:
    return getattr(obj, "__name__", "") == "roc_curve"
