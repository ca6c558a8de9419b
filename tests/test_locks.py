"""Per-artifact locks: each missing artifact is built once, by one process, in groups."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from mia_torch.locks import build_missing
from mia_torch.store import ArtifactStore

# A second process that takes the lock of artifact `kind/key` in the store at argv[1],
# says so (argv[2] appears), then follows argv[3]: "exit" (dies holding it), "stop" (keeps
# it but stops refreshing it: SIGSTOP) or "publish" (waits for argv[4], publishes, releases).
HOLDER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from mia_torch.store import ArtifactStore
    root, ready, action = sys.argv[1:4]
    store = ArtifactStore(root, lease_s=float(os.environ["LEASE_S"]))
    lease = store.lease("models", "held")
    lease.acquire(blocking=False)
    Path(ready).write_text(str(os.getpid()))
    if action == "exit":
        os._exit(0)
    if action == "stop":
        os.kill(os.getpid(), signal.SIGSTOP)
    while not Path(sys.argv[4]).exists():
        time.sleep(0.02)
    store.save("models", "held", b"theirs", {"by": "holder"})
    lease.release()
""")


def _start_holder(tmp_path: Path, root: Path, action: str, *, lease_s: float, go: Path | None = None):
    ready = tmp_path / f"ready-{action}"
    env = {**os.environ, "LEASE_S": str(lease_s),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(root), str(ready), action, str(go or "")], env=env)
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert proc.poll() is None or action == "exit", "the holder process failed"
        assert time.monotonic() < deadline, "the holder process did not start"
        time.sleep(0.02)
    return proc


def _builder(store: ArtifactStore, calls: list, *, on_build=None):
    def build(items):
        calls.append(list(items))
        if on_build is not None:
            on_build(items)
        for item in items:
            store.save("models", item, f"ours-{item}".encode(), {"by": "us"})
    return build


def test_builds_only_the_missing_ones_in_groups(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("models", "b", b"old", {"by": "before"})
    calls = []
    keys = {name: name for name in "abcde"}
    outcome = build_missing(store, "models", keys, _builder(store, calls), group=2)
    assert calls == [["a", "c"], ["d", "e"]]
    assert outcome.built == ["a", "c", "d", "e"] and outcome.reused == ["b"]
    assert outcome.meta["b"] == {"by": "before"} and outcome.meta["a"] == {"by": "us"}
    assert not list(tmp_path.glob("models/*.lock"))  # every lock released
    again = build_missing(store, "models", keys, _builder(store, calls), group=2)
    assert again.built == [] and sorted(again.reused) == list("abcde") and len(calls) == 2


def test_locks_are_released_when_building_fails(tmp_path):
    store = ArtifactStore(tmp_path)

    def fail(items):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_missing(store, "models", {"a": "a", "b": "b"}, fail, group=2)
    assert not list(tmp_path.glob("models/*.lock"))
    calls = []
    assert build_missing(store, "models", {"a": "a", "b": "b"}, _builder(store, calls), group=2).built == ["a", "b"]


def test_an_artifact_another_process_is_building_is_waited_for_and_reused(tmp_path):
    store = ArtifactStore(tmp_path / "store", poll_s=0.05)
    go = tmp_path / "go"
    holder = _start_holder(tmp_path, store.root, "publish", lease_s=300, go=go)
    calls = []
    try:
        # While we build "mine", let the holder finish "held"; we then pick it up instead of building it.
        build = _builder(store, calls, on_build=lambda items: go.touch())
        outcome = build_missing(store, "models", {"held": "held", "mine": "mine"}, build, group=2)
    finally:
        holder.wait(timeout=60)
    assert calls == [["mine"]]
    assert outcome.built == ["mine"] and outcome.reused == ["held"]
    assert store.load("models", "held") == (b"theirs", {"by": "holder"})


def test_a_lock_whose_owner_died_on_this_host_is_taken_over_at_once(tmp_path):
    store = ArtifactStore(tmp_path / "store", lease_s=300, poll_s=0.05)
    _start_holder(tmp_path, store.root, "exit", lease_s=300).wait(timeout=60)
    assert (store.root / "models" / "held.lock").exists()  # left behind by the dead owner
    calls = []
    started = time.monotonic()
    outcome = build_missing(store, "models", {"held": "held"}, _builder(store, calls))
    assert outcome.built == ["held"] and time.monotonic() - started < 5  # not after the 300 s lease


def test_a_lock_left_unrefreshed_is_broken_after_the_lease(tmp_path):
    lease_s = 1.0
    store = ArtifactStore(tmp_path / "store", lease_s=lease_s, poll_s=0.05)
    holder = _start_holder(tmp_path, store.root, "stop", lease_s=lease_s)  # alive, but frozen
    calls = []
    try:
        started = time.monotonic()
        outcome = build_missing(store, "models", {"held": "held"}, _builder(store, calls))
        waited = time.monotonic() - started
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    assert outcome.built == ["held"] and calls == [["held"]]
    assert lease_s <= waited < 30


def test_a_lock_left_empty_by_a_process_killed_while_taking_it_is_removed_after_the_lease(tmp_path):
    """filelock creates the lock file, then writes its owner; a SIGKILL in between leaves an
    empty file that filelock alone never breaks. It is removed after one lease, then built."""
    lease_s = 0.5
    store = ArtifactStore(tmp_path / "store", lease_s=lease_s, poll_s=0.05)
    lock = store.root / "models" / "held.lock"
    lock.parent.mkdir(parents=True)
    lock.touch()
    calls, outcome = [], []
    started = time.monotonic()
    worker = threading.Thread(
        target=lambda: outcome.append(build_missing(store, "models", {"held": "held"}, _builder(store, calls))),
        daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "still waiting for the empty lock"
    assert outcome[0].built == ["held"] and calls == [["held"]]
    assert time.monotonic() - started >= lease_s
    assert not list(lock.parent.glob("held.lock*"))  # released, nothing left aside


def test_decoded_payloads_are_kept_only_when_asked(tmp_path):
    store = ArtifactStore(tmp_path)
    store.save("models", "b", b"old", {"by": "before"})
    keys = {"a": "a", "b": "b"}
    kept = build_missing(store, "models", keys, _builder(store, []), decode=bytes.decode, keep_values=True)
    assert kept.values == {"a": "ours-a", "b": "old"}
    assert build_missing(store, "models", keys, _builder(store, []), decode=bytes.decode).values == {}
