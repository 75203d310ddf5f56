"""The training stream read through a tf.data service (`data.service=grpc://HOST:PORT`).

For hosts whose accelerators outrun their CPUs: reading the store's shards and parsing
their records run on tf.data service workers (`pretrainer data-service worker`, any
number of CPU machines that can read the store), coordinated by one dispatcher
(`pretrainer data-service dispatcher`). Each pass over a split is its own job in
`distributed_epoch` mode: the dispatcher hands every shard of the pass to exactly one
worker, so a pass delivers each example of the split once, no loss and no duplicate, and
the next pass starts when it has ended, so an epoch of the trainer is a pass as it is
without the service. (A split under JOB_RECORDS examples, such as a few labels, has
several passes per job: each of its examples comes once per pass on average and exactly
that many times per job.) Batching, augmentation and tokenization stay on the trainer, on the
same code as without the service.

What changes: examples arrive in the order the workers finish them, not in the seeded
order, so a run is not reproducible batch for batch and a resumed run takes the rest of
its epoch's count from a fresh pass (not bit-exact as local reads are). A worker that dies
mid-pass loses the shards it held for that pass (tf.data service's `distributed_epoch`
mode is at-most-once).
"""

from __future__ import annotations

import socket
import time
from typing import Optional

from pretrainer.config.groups import parse_address
from pretrainer.errors import DataError

# each worker reads this many shards at once: a worker that opened all of them would
# leave the others idle (it takes shards as it opens them)
SHARDS_PER_WORKER = 4
TRANSFER_BATCH = 256  # records per element sent from a worker (rebatched on the trainer)
JOB_RECORDS = 4096  # a job serves at least this many records (whole passes)
TASK_REFRESH_MS = 50

_SERVICE: dict = {"address": None}


def check_reachable(url: str, timeout: float = 10.0) -> None:
    """Refuse in one line when nothing listens at the dispatcher's address: tf.data
    would otherwise retry registering the dataset for a long time without a word."""
    host, port = parse_address(url)
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(2.0, timeout)):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise DataError(f"data.service={url}: no tf.data service dispatcher answers "
                                f"there ({exc.strerror or exc}). Start one with `pretrainer "
                                f"data-service dispatcher --port {port}` and at least one "
                                f"`pretrainer data-service worker --dispatcher {url}`") from None
            time.sleep(0.5)


def set_service(url: Optional[str]) -> None:
    """Route shuffled, repeated reads (the training streams) through the service at `url`
    (None: read locally). Set by the training setup, like static batches."""
    _SERVICE["address"] = url


def service() -> Optional[str]:
    return _SERVICE["address"]


def served_records(files: list, parse, n: int, first_pass: int, seed: int,
                   shuffle_buffer: int):
    """The endless stream of parsed records of a split of `n` records, pass after pass
    from `first_pass`; each pass is a distributed_epoch job of the service (every record
    exactly once). A split under JOB_RECORDS records has several passes per job: a job
    costs ~0.1 s to start, which a labeled split of a few dozen would pay every step."""
    import numpy as np
    import tensorflow as tf

    url = service()
    per_job = max(1, -(-JOB_RECORDS // max(1, n)))

    def job(p: int) -> tf.data.Dataset:
        # the shard order of pass p is drawn from (seed, p) as for local reads; the
        # dispatcher hands the shards out in this order as workers ask for them
        shards = [files[i] for q in range(p, p + per_job)
                  for i in np.random.default_rng([int(seed), int(q)]).permutation(len(files))]
        ds = tf.data.Dataset.from_tensor_slices(shards)
        cycle = min(len(shards), SHARDS_PER_WORKER)
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                           num_parallel_calls=cycle)
        ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)
        ds = ds.shuffle(max(1, min(n, shuffle_buffer)), seed=int(seed) * 1_000_003 + int(p))
        ds = ds.batch(TRANSFER_BATCH).prefetch(2)
        return ds.apply(_distribute(url))

    first = job(first_pass)  # registers the dataset now: its errors surface here

    def passes():
        ds, p = first, first_pass
        while True:
            yield from ds
            p += per_job
            ds = job(p)

    # a Python generator ties the jobs together: each is created when the previous one
    # has ended (a graph-level concatenation would register every pass of an endless
    # stream up front)
    served = tf.data.Dataset.from_generator(passes, output_signature=first.element_spec)
    return served.unbatch()


def _distribute(url: str):
    """tf.data.experimental.service.distribute in distributed_epoch mode, asking the
    dispatcher for new tasks every 50 ms: with the public function's default a new job's
    first element came after ~1.2 s (0.1 s with this; TF 2.21, measured on 127.0.0.1)."""
    import tensorflow as tf

    try:
        from tensorflow.python.data.experimental.ops.data_service_ops import _distribute as d

        return d(tf.data.experimental.service.ShardingPolicy.DYNAMIC, url,
                 task_refresh_interval_hint_ms=TASK_REFRESH_MS)
    except (ImportError, TypeError):  # a TensorFlow without the private entry point
        return tf.data.experimental.service.distribute(
            tf.data.experimental.service.ShardingPolicy.DYNAMIC, url)


def run_dispatcher(port: int, work_dir: Optional[str]) -> None:
    """Start a dispatcher on `port` (all interfaces) and block until interrupted."""
    import tensorflow as tf

    config = tf.data.experimental.service.DispatcherConfig(
        port=port, work_dir=work_dir, fault_tolerant_mode=bool(work_dir))
    server = _start(lambda: tf.data.experimental.service.DispatchServer(config), port)
    _serve_forever(f"tf.data service dispatcher listening on port {port} "
                   f"(trainers: data.service=grpc://{socket.gethostname()}:{port})", server)


def run_worker(dispatcher: str, port: int, host: Optional[str]) -> None:
    """Start a worker that registers with `dispatcher` and block until interrupted."""
    import tensorflow as tf

    d_host, d_port = parse_address(dispatcher)
    check_reachable(dispatcher)
    advertised = host or socket.gethostname()
    config = tf.data.experimental.service.WorkerConfig(
        dispatcher_address=f"{d_host}:{d_port}", worker_address=f"{advertised}:%port%",
        port=port)
    server = _start(lambda: tf.data.experimental.service.WorkerServer(config), port)
    _serve_forever(f"tf.data service worker on {advertised}:{server._address.split(':')[-1]}"
                   f", registered with {dispatcher}", server)


def _start(make, port: int):
    """The server `make()` builds, after checking that `port` is free: gRPC binds with
    SO_REUSEPORT, so a second dispatcher on a taken port would start without a word and
    share its connections with the first."""
    if port:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("0.0.0.0", port))
        except OSError as exc:
            raise DataError(f"port {port} cannot be used here ({exc.strerror}); choose "
                            f"another with --port") from None
        finally:
            probe.close()
    return make()


def _serve_forever(line: str, server) -> None:
    from pretrainer.console import console, esc

    console.print(f"{esc(line)}. Ctrl-C stops it")
    try:
        while True:
            time.sleep(3600)
    finally:
        del server
