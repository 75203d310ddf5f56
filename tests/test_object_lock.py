"""data/object_lock.py: one writer per store on object stores (TensorFlow's ram://
filesystem stands in for gs:// here: gfile, no flock), and collect using it."""

import json
import platform
import threading
import time
import uuid

import pytest
import tensorflow as tf

from pretrainer.data import object_lock


@pytest.fixture
def fast(monkeypatch):
    monkeypatch.setattr(object_lock, "SETTLE_S", 0.1)
    monkeypatch.setattr(object_lock, "POLL_S", 0.05)


def _store():
    return f"ram://bucket-{uuid.uuid4().hex[:8]}/data/shoes"


def _plant(path, **holder):
    tf.io.gfile.makedirs(path.rpartition("/")[0])
    with tf.io.gfile.GFile(path, "w") as f:
        f.write(json.dumps(holder))


def test_the_lock_object_is_ours_while_held_and_gone_after(fast):
    store = _store()
    with object_lock.held(store) as path:
        assert path == store.rpartition("/")[0] + "/.shoes.lock"
        with tf.io.gfile.GFile(path) as f:
            assert json.loads(f.read())["host"] == platform.node()
    assert not tf.io.gfile.exists(path)


def test_a_live_holder_elsewhere_is_waited_for_and_named(fast):
    store = _store()
    path = object_lock.lock_path(store)
    _plant(path, pid=4242, host="another-host", since="2026-12-06T10:00:00", token="theirs")
    said = []
    threading.Timer(0.4, lambda: tf.io.gfile.remove(path)).start()  # they finish
    t0 = time.monotonic()
    with object_lock.held(store, on_wait=said.append):
        assert time.monotonic() - t0 >= 0.4
    assert len(said) == 1 and "pid 4242 on another-host" in said[0] and path in said[0]
    assert "delete it if that process is gone" in said[0]


def test_a_lock_left_by_a_dead_process_on_this_machine_is_taken_over(fast):
    store = _store()
    _plant(object_lock.lock_path(store), pid=2**22 + 12345, host=platform.node(), token="x")
    said = []
    with object_lock.held(store, on_wait=said.append):
        pass
    assert said == []


def test_writers_starting_together_take_turns(fast):
    store, inside, most, lock = _store(), [0], [0], threading.Lock()

    def writer():
        with object_lock.held(store):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)
            with lock:
                inside[0] -= 1

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert most[0] == 1 and not tf.io.gfile.exists(object_lock.lock_path(store))


def test_collect_to_an_object_store_holds_and_releases_the_lock(fast, tmp_path, monkeypatch):
    from pretrainer.config import compose
    from pretrainer.data.store import read_manifest
    from pretrainer.stages import collect

    monkeypatch.chdir(tmp_path)
    root = f"ram://bucket-{uuid.uuid4().hex[:8]}/data"
    cfg = compose("fashion_ae", [f"paths.data={root}", "data.max_samples=300",
                                 "data.max_test=60", "trainer.verbose=false"])
    store = collect.run(cfg)
    assert read_manifest(store).count("test") == 60
    assert not tf.io.gfile.exists(object_lock.lock_path(store))
    assert not list(tmp_path.iterdir())  # no local "ram:" folder for a lock


def test_run_directories_on_an_object_store_are_refused_in_one_line():
    from pretrainer.config import compose
    from pretrainer.errors import ConfigError

    with pytest.raises(ConfigError, match="run directories are local"):
        compose("fashion_ae", ["paths.runs=gs://bucket/runs"])
