"""data.service: training streams read through a real tf.data service (a dispatcher and
two workers on 127.0.0.1, in a server process): every record once per pass, no loss and no
duplicate, pass after pass; a resumed stream reads the rest of its pass; a wrong or dead
address is one line."""

import select
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
import tensorflow as tf

from pretrainer.config import DataConfig, compose
from pretrainer.data import reading, service
from pretrainer.data.sources import SourceData
from pretrainer.data.store import build_store
from pretrainer.errors import ConfigError, DataError

BATCH = 64


def _store(root, n: int, shard: int):
    """n rows whose one feature is their index."""
    x = np.arange(n, dtype=np.float32)[:, None]
    src = SourceData(x_pool=x, y_pool=np.arange(n) % 2, class_names=["a", "b"],
                     x_test=x[:20], y_test=np.arange(20) % 2, modality="tabular")
    cfg = DataConfig(name="idx", source="csv", labeled_fraction=1.0, val_fraction=0.0,
                     shard_size=shard)
    build_store(root / "idx", cfg, seed=0, src=src)
    return root / "idx"


# a dispatcher and two workers in one server process, so the fixture can end them at once
# (in this process their shutdown waited on gRPC streams: 36-79 s of a loaded CI worker)
SERVERS = """
import tensorflow as tf
S = tf.data.experimental.service
dispatcher = S.DispatchServer(S.DispatcherConfig(port=0))
address = dispatcher.target.split("://")[1]
workers = [S.WorkerServer(S.WorkerConfig(dispatcher_address=address,
                                         worker_address="127.0.0.1:%port%"))
           for _ in range(2)]
print(address, flush=True)
dispatcher.join()
"""


@pytest.fixture(scope="module")
def cluster():
    """A dispatcher and two workers on 127.0.0.1; data.service pointed at them."""
    proc = subprocess.Popen([sys.executable, "-c", SERVERS], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 180)
        address = proc.stdout.readline().strip() if ready else ""
        assert address, "the tf.data service servers did not start"
        service.set_service(f"grpc://{address}")
        yield address
    finally:
        service.set_service(None)
        proc.kill()
        proc.wait(timeout=30)


def _parse(record):
    ex = tf.io.parse_single_example(record, {
        "features": tf.io.FixedLenFeature([1], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.int64)})
    return ex["features"][0], ex["label"]


def _records(store, n_records: int, start: int = 0) -> list[int]:
    ds, _, _ = reading.records(store, "train", labels=True, modality="tabular", parse=_parse,
                               shuffle=True, repeat=True, cache=True, seed=5,
                               bytes_per_example=8, batch_size=BATCH, start_batch=start)
    out: list[int] = []
    for x, _ in ds.as_numpy_iterator():
        out += x.astype(int).tolist()
        if len(out) >= n_records:
            return out[:n_records]
    raise AssertionError("the stream ended")


def test_each_pass_serves_every_record_exactly_once(cluster, tmp_path):
    n = service.JOB_RECORDS + 904  # one pass per job; 10 shards for two workers
    store = _store(tmp_path, n, shard=500)
    flat = _records(store, 3 * n)
    for p in range(3):
        assert sorted(flat[p * n:(p + 1) * n]) == list(range(n)), f"pass {p}"
    assert flat[:n] != sorted(flat[:n])  # shuffled, not the stored order


def test_a_small_split_serves_whole_passes_per_job(cluster, tmp_path):
    n = 1000  # under JOB_RECORDS: 5 passes per job
    per_job = -(-service.JOB_RECORDS // n)
    store = _store(tmp_path, n, shard=128)
    counts = Counter(_records(store, 2 * per_job * n))
    assert set(counts) == set(range(n)) and set(counts.values()) == {2 * per_job}


def test_a_resumed_stream_reads_the_rest_of_its_pass(cluster, tmp_path):
    n = service.JOB_RECORDS + 904
    store = _store(tmp_path, n, shard=500)
    start = 40  # 2,560 records into the first pass
    rest = n - start * BATCH
    flat = _records(store, rest + n, start=start)
    assert len(set(flat[:rest])) == rest  # no duplicate in what is left of the pass
    assert sorted(flat[rest:]) == list(range(n))  # then whole passes


def test_a_wrong_or_dead_address_is_one_line():
    with pytest.raises(ConfigError, match="expected grpc://HOST:PORT"):
        compose("fashion_ae", ["data.service=http://localhost:5050"])
    with pytest.raises(ConfigError, match="expected grpc://HOST:PORT"):
        compose("fashion_ae", ["data.service=grpc://localhost"])
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DataError, match="no tf.data service dispatcher answers there"):
        service.check_reachable(f"grpc://127.0.0.1:{port}", timeout=1.0)
