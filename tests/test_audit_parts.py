"""Audit building blocks: checkpoint loading (and refusal), preprocessing, record ids, p-values, the answer's counts."""
from __future__ import annotations

import json
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from scipy.stats import norm

from helpers import OutMargin
from mia_torch.attacks import QuantileAttack, ReferenceFeatures, ThresholdAttack
from mia_torch.attacks.base import ReferenceSignals
from mia_torch.audit.checkpoint import CheckpointError, ExportedModel, load_checkpoint_model
from mia_torch.audit.evidence import EVIDENCE_FEATURES, record_evidence, verdicts
from mia_torch.audit.ids import read_ids
from mia_torch.audit.preprocess import preprocess_dataset, unit_range
from mia_torch.audit.summary import false_flag_lines
from mia_torch.data.datasets import Dataset
from mia_torch.models import MLP, SmallCNN
from mia_torch.report.check_results import AuditResult
from mia_torch.stages.attack_runs import fitted_copy


def _cnn() -> SmallCNN:
    torch.manual_seed(0)
    return SmallCNN(input_shape=(1, 8, 8), num_classes=10, width=4, hidden=8).eval()


class _Payload:
    """Unpickling this would create ``marker``: the test checks that it never happens."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def test_state_dict_checkpoint_loads_into_the_configured_architecture(tmp_path):
    model = _cnn()
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    loaded = load_checkpoint_model(path, _cnn)
    x = torch.randn(5, 1, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_mismatching_checkpoint_lists_the_keys(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(MLP(input_shape=(1, 8, 8), num_classes=10, hidden_sizes=(16,)).state_dict(), path)
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: features\.0\.weight.*not in the model: "
                                              r"net\.1\.weight"):
        load_checkpoint_model(path, _cnn)
    wide = SmallCNN(input_shape=(1, 8, 8), num_classes=10, width=6, hidden=8)
    torch.save(wide.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape mismatch: features\.0\.weight: checkpoint \(6, 1, 3, 3\)"):
        load_checkpoint_model(path, _cnn)


def test_pickled_payload_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"features.0.weight": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="pickled Python objects"):
        load_checkpoint_model(path, _cnn)
    assert not marker.exists()


def test_not_a_checkpoint_and_missing_file_name_the_key(tmp_path):
    path = tmp_path / "noise.pt"
    path.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="audit.checkpoint"):
        load_checkpoint_model(path, _cnn)
    with pytest.raises(CheckpointError, match="audit.checkpoint=.*does not exist"):
        load_checkpoint_model(tmp_path / "absent.pt", _cnn)


@pytest.mark.parametrize("dynamic", [True, False])
def test_exported_program_is_queried_in_any_batch_size(tmp_path, dynamic):
    model = _cnn()
    x = torch.randn(4, 1, 8, 8)
    shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic else None
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (x,), dynamic_shapes=shapes), path)
    loaded = load_checkpoint_model(path, _cnn)
    assert isinstance(loaded, ExportedModel) and (loaded.batch_size is None) == dynamic
    loaded.eval()  # a no-op: exported programs fix their mode at export
    queries = torch.randn(11, 1, 8, 8)
    torch.testing.assert_close(loaded(queries), model(queries), rtol=1e-5, atol=1e-5)


def _rewrite(src: pathlib.Path, dst: pathlib.Path, edit) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, edit(item.filename, zin.read(item.filename)))
        extra = edit(None, None)
        if extra:
            zout.writestr(*extra)


def test_exported_program_with_pickled_parts_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(_cnn(), (torch.randn(2, 1, 8, 8),)), src)
    buf = tmp_path / "payload.bin"
    torch.save(_Payload(marker), buf)

    def pickled_weight(name, data):
        if name is None:
            return None
        if name.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        return buf.read_bytes() if name.endswith("weights/weight_0") else data

    def opaque_constant(name, data):
        if name is None:
            return ("m/data/constants/opaque_obj_0", buf.read_bytes())
        return data

    for edit in (pickled_weight, opaque_constant):
        dst = tmp_path / f"{edit.__name__}.pt2"
        _rewrite(src, dst, edit)
        with pytest.raises(CheckpointError, match="audit.checkpoint"):
            load_checkpoint_model(dst, _cnn)
        assert not marker.exists()


def _images() -> Dataset:
    gen = torch.Generator().manual_seed(0)
    x01 = torch.rand(6, 3, 4, 4, generator=gen)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    view = (torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1))
    x = (x01 - view[0]) / view[1]
    y = torch.arange(6) % 2
    return Dataset(name="t", x=x, y=y, x_test=x[:2], y_test=y[:2], num_classes=2, mean=mean, std=std)


def test_preprocess_maps_unit_range_images_as_stated():
    data = _images()
    x01 = unit_range(data, data.x)
    assert float(x01.min()) >= 0 and float(x01.max()) <= 1
    assert preprocess_dataset(data, "dataset") is data
    torch.testing.assert_close(preprocess_dataset(data, "none").x, x01)
    custom = preprocess_dataset(data, {"mean": [0.5], "std": [0.5]})
    torch.testing.assert_close(custom.x, (x01 - 0.5) / 0.5)
    called = preprocess_dataset(data, {"_target_": "torch.mul", "other": 2.0})
    torch.testing.assert_close(called.x_test, 2.0 * x01[:2])


@pytest.mark.parametrize("spec, key", [
    ({"mean": [0.5, 0.5], "std": [0.5]}, "audit.preprocess.mean"),
    ({"mean": [0.5], "std": [0.0]}, "audit.preprocess.std"),
    ({"mean": [0.5], "std": [0.5], "scale": 2}, "audit.preprocess.scale"),
    ({"_target_": "no_such_module.fn"}, "audit.preprocess._target_"),
    ("zscore", "audit.preprocess"),
])
def test_bad_preprocess_names_the_key(spec, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        preprocess_dataset(_images(), spec)


def test_read_ids_from_lists_and_files(tmp_path):
    assert read_ids([5, 1, 3], key="audit.candidates", population_size=10).tolist() == [1, 3, 5]
    assert read_ids(7, key="audit.candidates", population_size=10).tolist() == [7]
    np.save(tmp_path / "ids.npy", np.array([2, 4]))
    (tmp_path / "ids.txt").write_text("8\n0, 9\n")
    assert read_ids(str(tmp_path / "ids.npy"), key="k", population_size=10).tolist() == [2, 4]
    assert read_ids("ids.txt", key="k", population_size=10, data_dir=tmp_path).tolist() == [0, 8, 9]
    for bad, pattern in (([1, 10], "outside"), ([1, 1], "repeated"), ([1.5], "integers"), (["a"], "integers"),
                         ([], "empty"), (str(tmp_path / "nope.txt"), "no such file")):
        with pytest.raises(ValueError, match=rf"audit\.members.*{pattern}"):
            read_ids(bad, key="audit.members", population_size=10)


def _logits_for_phi(phi: torch.Tensor) -> torch.Tensor:
    """Two-class logits whose true class (0) has logit-scaled confidence ``phi``."""
    return torch.stack([phi, torch.zeros_like(phi)], dim=-1)


def test_p_values_are_calibrated_for_non_members_and_small_for_shifted_members():
    gen = torch.Generator().manual_seed(0)
    r, n, q = 64, 2000, 2
    mu = torch.randn(n, generator=gen, dtype=torch.float64)  # per-record difficulty
    keep = torch.rand(r, n, generator=gen) < 0.5
    shift = 3.0
    noise = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    phi_refs = mu[None, :, None] + shift * keep[..., None] + noise(r, n, 1) + 0.1 * noise(r, n, q)
    labels = torch.zeros(n, dtype=torch.long)
    ref = ReferenceSignals(logits=_logits_for_phi(phi_refs), keep=keep, labels=labels)
    member = torch.rand(n, generator=gen) < 0.5
    phi_target = mu[:, None] + shift * member[:, None] + noise(n, 1) + 0.1 * noise(n, q)
    ev = record_evidence(_logits_for_phi(phi_target), labels, ref, online=True)
    out = ~member.numpy()
    # Under the null the p-values are (at most) uniform: few non-members fall below 5%.
    assert np.mean(ev.p_gaussian[out] <= 0.05) < 0.08
    assert np.mean(ev.p_rank[out] <= 0.05) < 0.08
    # Members shifted by 3 sigma mostly reach p <= 5%.
    assert np.mean(ev.p_gaussian[~out] <= 0.05) > 0.7
    assert ev.p_rank.min() >= 1 / (1 + ev.num_out.max())
    assert np.all(verdicts(ev.p_gaussian, 0.05)[ev.p_gaussian <= 0.05] == "member")
    assert np.corrcoef(ev.log_lr, member.numpy())[0, 1] > 0.5
    # The Gaussian p-value is the normal tail of the standardized distance.
    np.testing.assert_allclose(ev.p_gaussian, norm.sf(ev.z))


def test_evidence_from_the_references_among_a_larger_table_counts_their_ranks():
    """The forget check's route: φ of four references among the six models of a feature table, each reference's
    φ large enough that the ranks are counted one reference at a time."""
    gen = torch.Generator().manual_seed(1)
    b, n, q = 6, 20_000, 60
    keep = torch.rand(b, n, generator=gen) < 0.5
    phi = torch.randn(b, n, q, generator=gen, dtype=torch.float64) + keep[..., None]
    labels = torch.zeros(n, dtype=torch.long)
    table = ReferenceFeatures.from_signals(ReferenceSignals(_logits_for_phi(phi), keep, labels), EVIDENCE_FEATURES)
    refs = torch.tensor([0, 2, 3, 5])
    phi_target = torch.randn(n, q, generator=gen, dtype=torch.float64)
    ev = record_evidence(_logits_for_phi(phi_target), labels, table.subset(refs), online=False)
    out = ~keep[refs]
    at_least = ((phi[refs].mean(-1) >= phi_target.mean(-1)) & out).sum(0)
    np.testing.assert_array_equal(ev.p_rank, ((1 + at_least) / (1 + out.sum(0))).numpy())
    np.testing.assert_array_equal(ev.num_out, out.sum(0).numpy())
    np.testing.assert_allclose(ev.phi, phi_target.mean(-1).numpy(), rtol=1e-12)


def test_only_an_attack_whose_fit_reads_logits_gets_the_references_logits():
    gen = torch.Generator().manual_seed(2)
    keep = torch.rand(3, 50, generator=gen) < 0.5
    labels = torch.randint(0, 4, (50,), generator=gen)
    reference = ReferenceSignals(torch.randn(3, 50, 2, 4, generator=gen), keep, labels)
    calls = []

    def logits() -> ReferenceSignals:
        calls.append(len(calls))
        return reference

    loss = ThresholdAttack("loss")
    features = ReferenceFeatures.from_signals(reference, loss.required_features())
    fitted = fitted_copy(loss, features, logits)
    assert fitted.threshold == loss.fit(reference).threshold and calls == []  # a feature attack: its features
    assert fitted_copy(QuantileAttack(), None, logits) is not None and calls == []  # no fit of its own: nothing
    margin = fitted_copy(OutMargin(), None, logits)
    assert calls == [0]  # read once, for the attack that fits on logits
    torch.testing.assert_close(margin.mean_out, OutMargin().fit(reference).mean_out, equal_nan=True)


def _answer(candidates: int, flagged: int, expected: dict[str, float]) -> AuditResult:
    return AuditResult(preprocess="dataset", references=[1, 2], online=False, skipped_attacks={}, fpr=0.01,
                       candidates=candidates, flagged=flagged, records_csv="records.csv", expected_false_flags=expected)


def test_the_audit_answer_derives_the_share_of_members_among_its_flags_once_for_every_writer():
    audit = _answer(1000, 12, {"0.5": 5.0, "0.1": 9.0, "0.01": 15.0})
    assert audit.flagged_members == {"0.5": 1 - 5 / 12, "0.1": 0.25, "0.01": 0.0}  # more expected than flagged: 0
    assert audit.expected_by_chance == pytest.approx(10.0)  # no member: 1% of the 1000 candidates
    saved = audit.to_dict()
    assert saved["flagged_members"] == audit.flagged_members and saved["expected_by_chance"] == audit.expected_by_chance
    assert AuditResult.from_dict(json.loads(json.dumps(saved))) == audit
    assert _answer(1000, 0, {"0.5": 5.0}).flagged_members == {}  # nothing flagged: no share
    audit.flagged_members = {"0.5": 0.61, "0.1": 0.32, "0.01": 0.03}  # the summary prints the field, computes nothing
    assert "of the 12 flagged, about 61%, 32%, 3% are members" in "\n".join(false_flag_lines(audit))
