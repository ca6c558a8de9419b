import numpy as np
import torch

from mia_torch.store import (
    ArtifactStore,
    array_from_bytes,
    array_to_bytes,
    digest,
    state_dict_from_bytes,
    state_dict_to_bytes,
)


def test_roundtrip_and_checksum(tmp_path):
    store = ArtifactStore(tmp_path)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.save("signals", "k1", array_to_bytes(arr), {"model": 3})
    payload, meta = store.load("signals", "k1")
    np.testing.assert_array_equal(array_from_bytes(payload), arr)
    assert meta == {"model": 3}
    assert store.load("signals", "missing") is None


def test_truncated_payload_is_detected_and_moved_aside(tmp_path):
    store = ArtifactStore(tmp_path)
    state = {"w": torch.randn(10, 10)}
    folder = store.save("models", "abc", state_dict_to_bytes(state))
    data = (folder / "payload").read_bytes()
    (folder / "payload").write_bytes(data[: len(data) // 2])
    assert store.load("models", "abc") is None
    assert not store.contains("models", "abc")
    assert len(store.corrupt) == 1 and store.corrupt[0].exists()  # kept for inspection, not deleted


def test_missing_meta_means_interrupted_write(tmp_path):
    store = ArtifactStore(tmp_path)
    folder = store.save("models", "abc", b"123")
    (folder / "meta.json").unlink()
    assert store.load("models", "abc") is None


def test_state_dict_loads_weights_only(tmp_path):
    state = {"w": torch.randn(3), "b": torch.zeros(2, dtype=torch.int64)}
    back = state_dict_from_bytes(state_dict_to_bytes(state))
    assert set(back) == {"w", "b"} and torch.equal(back["w"], state["w"])


def test_digest_is_order_independent_and_sensitive():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
