"""The artifact store: checksums, decoding checks, quarantine, atomic publication, umask."""

import hashlib
import io
import json
import os
import stat
import time

import numpy as np
import pytest
import torch

from mia_torch.atomic import atomic_write_bytes
from mia_torch.store import (
    ArtifactStore,
    array_from_bytes,
    array_to_bytes,
    digest,
    state_dict_from_bytes,
    state_dict_to_bytes,
)


class _Planted:
    """A pickle that would create a file when unpickled (it must never be)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant(store: ArtifactStore, kind: str, key: str, payload: bytes) -> None:
    """Replace an artifact's payload and fix its checksum: only decoding can catch it."""
    folder = store.root / kind / key
    (folder / "payload").write_bytes(payload)
    record = json.loads((folder / "meta.json").read_text())
    record.update(sha256=hashlib.sha256(payload).hexdigest(), size=len(payload))
    (folder / "meta.json").write_text(json.dumps(record))


def test_roundtrip_and_checksum(tmp_path):
    store = ArtifactStore(tmp_path)
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    store.save("signals", "k1", array_to_bytes(arr), {"model": 3})
    payload, meta = store.load("signals", "k1")
    np.testing.assert_array_equal(array_from_bytes(payload), arr)
    assert meta == {"model": 3}
    value, _ = store.load("signals", "k1", decode=array_from_bytes)
    np.testing.assert_array_equal(value, arr)
    assert store.load("signals", "missing") is None
    assert store.corrupt == []


def test_truncated_payload_is_detected_and_moved_aside(tmp_path):
    store = ArtifactStore(tmp_path)
    state = {"w": torch.randn(10, 10)}
    folder = store.save("models", "abc", state_dict_to_bytes(state))
    data = (folder / "payload").read_bytes()
    (folder / "payload").write_bytes(data[: len(data) // 2])
    assert store.load("models", "abc") is None
    assert not store.contains("models", "abc")
    assert len(store.corrupt) == 1 and store.corrupt[0].exists()  # kept for inspection, not deleted


@pytest.mark.parametrize("missing", ["meta.json", "payload"])
def test_incomplete_artifact_is_listed_and_moved_aside(tmp_path, missing):
    store = ArtifactStore(tmp_path)
    folder = store.save("models", "abc", b"123")
    (folder / missing).unlink()
    assert store.load("models", "abc") is None
    assert not folder.exists()
    [aside] = store.corrupt
    assert aside.parent == folder.parent and aside.name.startswith("abc.corrupt-")
    assert (aside / ({"meta.json", "payload"} - {missing}).pop()).is_file()  # what was there is kept


def test_checkpoint_failing_weights_only_is_corrupt_and_never_unpickled(tmp_path):
    store = ArtifactStore(tmp_path / "store")
    store.save("models", "abc", state_dict_to_bytes({"w": torch.zeros(2)}))
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "planted": _Planted(tmp_path / "pwned")}, buf)
    _plant(store, "models", "abc", buf.getvalue())
    assert store.load("models", "abc") is not None  # the checksum alone cannot tell
    assert store.load("models", "abc", decode=state_dict_from_bytes) is None
    assert not (tmp_path / "pwned").exists()
    assert len(store.corrupt) == 1 and not store.contains("models", "abc")


def test_array_needing_pickle_is_corrupt(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("signals", "k", array_to_bytes(np.zeros(3)))
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}, None], dtype=object), allow_pickle=True)
    _plant(store, "signals", "k", buf.getvalue())
    assert store.load("signals", "k", decode=array_from_bytes) is None
    assert len(store.corrupt) == 1


def test_decoders_reject_payloads_of_the_wrong_kind():
    with pytest.raises(ValueError, match="state dict"):
        state_dict_from_bytes(_torch_bytes([torch.zeros(1)]))
    buf = io.BytesIO()
    np.savez(buf, a=np.zeros(2))
    with pytest.raises(ValueError, match="one .npy array"):
        array_from_bytes(buf.getvalue())


def _torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_quarantine_of_an_artifact_already_moved_aside_is_not_an_error(tmp_path):
    first, second = ArtifactStore(tmp_path), ArtifactStore(tmp_path)
    folder = first.save("models", "abc", b"123")
    (folder / "meta.json").unlink()
    seen = os.stat(folder)  # the second process has read it too
    assert first.load("models", "abc") is None
    assert second.quarantine("models", "abc", reason="test", seen=seen) is None
    assert second.quarantine("models", "abc", reason="test") is None
    assert len(first.corrupt) == 1 and second.corrupt == []


def test_quarantine_spares_an_artifact_rebuilt_since_it_was_read(tmp_path):
    first, second = ArtifactStore(tmp_path), ArtifactStore(tmp_path)
    folder = first.save("models", "abc", b"123")
    (folder / "meta.json").unlink()
    seen = os.stat(folder)
    first.load("models", "abc")  # moved aside...
    first.save("models", "abc", b"456")  # ... and rebuilt
    assert second.quarantine("models", "abc", reason="stale read", seen=seen) is None
    assert second.load("models", "abc")[0] == b"456"


def test_first_publication_wins_and_leaves_no_staging_folders(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("models", "abc", b"first", {"by": 1})
    store.save("models", "abc", b"second", {"by": 2})
    assert store.load("models", "abc") == (b"first", {"by": 1})
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["abc"]
    assert list((tmp_path / ".staging").iterdir()) == []


def test_staging_left_by_a_killed_writer_is_removed_after_a_day(tmp_path):
    old, fresh = tmp_path / ".staging" / "models-a-1", tmp_path / ".staging" / "models-b-2"
    for folder in (old, fresh):
        folder.mkdir(parents=True)
        (folder / "payload").write_bytes(b"half")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    ArtifactStore(tmp_path)
    assert not old.exists() and fresh.exists()  # a fresh one may belong to a writer still running


def test_publishing_over_a_corrupt_artifact_moves_it_aside(tmp_path):
    store = ArtifactStore(tmp_path)
    (tmp_path / "models" / "abc").mkdir(parents=True)
    (tmp_path / "models" / "abc" / "payload").write_bytes(b"left by a crash")
    store.save("models", "abc", b"new", {"by": 2})
    assert store.load("models", "abc") == (b"new", {"by": 2})
    assert len(store.corrupt) == 1 and (store.corrupt[0] / "payload").read_bytes() == b"left by a crash"


def test_files_and_folders_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        store = ArtifactStore(tmp_path / "store")
        folder = store.save("models", "abc", b"123")
        lease = store.lease("models", "other")
        with lease:
            lock_mode = stat.S_IMODE(os.stat(lease.lock_file).st_mode)
        written = atomic_write_bytes(tmp_path / "out" / "results.json", b"{}")
    finally:
        os.umask(old)
    for path in (folder / "payload", folder / "meta.json", written):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o664, path
    for path in (store.root, folder.parent, folder, written.parent):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o775, path
    assert lock_mode & 0o440 == 0o440  # the group can read who holds a lock


def test_state_dict_loads_weights_only(tmp_path):
    state = {"w": torch.randn(3), "b": torch.zeros(2, dtype=torch.int64)}
    back = state_dict_from_bytes(state_dict_to_bytes(state))
    assert set(back) == {"w", "b"} and torch.equal(back["w"], state["w"])


def test_digest_is_order_independent_and_sensitive():
    assert digest({"a": 1, "b": [1, 2]}) == digest({"b": [1, 2], "a": 1})
    assert digest({"a": 1}) != digest({"a": 2})
