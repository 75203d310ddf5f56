"""Reading a store's split as tf.data: the one shuffled, resumable record order.

Every modality's reader (pipeline.images, texts, rows) gets its batches from `records`:
the split's shards read in their stored order, or shuffled by (seed, pass) so that batch
k is the same whatever the start, cached in memory when small. Static batches (TPUs)
are a switch here that every repeated stream obeys.
"""

from __future__ import annotations

import os
from pathlib import Path

import tensorflow as tf

from pretrainer.data import service
from pretrainer.data.records import SplitInfo
from pretrainer.data.store import join, read_manifest
from pretrainer.errors import DataError

# Splits smaller than this are cached decoded in memory (data.cache=true); larger
# ones stream from the shards every epoch so memory does not grow with the data.
CACHE_LIMIT_BYTES = 512 * 2**20


def stream_options() -> tf.data.Options:
    opts = tf.data.Options()
    # TF 2.21's autotune can block for seconds when an epoch's iterator is destroyed
    # (measured: epochs snapping to ~5.1 s / 10.2 s); fixed parallelism avoids it.
    opts.autotune.enabled = False
    opts.deterministic = True
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return opts


def split_info(store: Path, split: str) -> SplitInfo:
    manifest = read_manifest(store)
    if split not in manifest.splits:
        raise DataError(f"Store {store} has no split '{split}'. Choose from: "
                        f"{', '.join(manifest.splits)}")
    return manifest.splits[split]


# Shuffled reads interleave this many shards at once and permute blocks of this many
# records (data.shuffle_buffer); a cached split is permuted whole.
SHUFFLE_SHARDS = 16
SHUFFLE_BUFFER = 10_000
_PASSES = 2**62  # "forever" for repeated reads


def _block_shuffle(ds, block: int, seed: tf.Tensor):
    """Permute consecutive blocks of `block` records, block i by a stateless draw from
    (seed, i). tf.data's shuffle() takes its seed through the global-seed logic, which
    rejects a per-pass tensor seed when the global seed is 0; this has no global state."""
    def permute(i, records):
        first = tf.nest.flatten(records)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(first)[0]), seed=tf.random.experimental.stateless_fold_in(seed, i))
        return tf.nest.map_structure(lambda t: tf.gather(t, order), records)

    return ds.batch(block).enumerate().map(permute).unbatch()


def _open_split(store: Path, split: str, *, labels: bool, modality: str):
    """(manifest, example count, shard files) of a split that can be read as asked."""
    manifest = read_manifest(store)
    if manifest.modality != modality:
        raise DataError(f"{store} holds {manifest.modality} data; this step reads {modality}")
    info = split_info(store, split)
    if info.count == 0:
        raise DataError(f"Split '{split}' of {store} is empty; adjust data.* fractions")
    if labels and not info.labeled:
        raise DataError(f"Split '{split}' of {store} has no labels")
    return manifest, info.count, [join(store, s.file) for s in info.shards]


def _gathered_from_memory(stored, n: int, passes, pass_seed, offset: int, batch_size: int,
                          drop: bool):
    """Shuffled batches of a split cached in memory.

    The whole split is one batch of tensors (read once per iterator) and each batch is
    gathered from it by the pass's permutation of indices, as Keras does for NumPy input:
    one copy in memory, no per-record work after the first read. The permutation is
    _block_shuffle's with one block of n (fold_in index 0, int64)."""
    def pass_order(p):
        return tf.data.Dataset.from_tensor_slices(tf.random.experimental.stateless_shuffle(
            tf.range(n), seed=tf.random.experimental.stateless_fold_in(
                pass_seed(p), tf.constant(0, tf.int64))))

    def gathered(*whole):
        order = passes.flat_map(pass_order)
        order = order.skip(offset) if offset else order
        return order.batch(batch_size, drop_remainder=drop).map(
            lambda i: tuple(tf.gather(t, i) for t in whole))

    return stored.batch(n).flat_map(gathered)


def _interleaved_from_disk(files: list, parse, n: int, passes, pass_seed, workers: int,
                           shuffle_buffer: int):
    """Shuffled records of a split streamed from its shards: each pass reads the shards
    in an order drawn from (seed, pass), interleaves up to SHUFFLE_SHARDS of them record
    by record and permutes blocks of `shuffle_buffer` records."""
    files_t = tf.constant(files)
    cycle = min(len(files), SHUFFLE_SHARDS)

    def one_pass(p):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(len(files)), seed=tf.random.experimental.stateless_fold_in(pass_seed(p), -1))
        ds = tf.data.Dataset.from_tensor_slices(tf.gather(files_t, order))
        ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, block_length=1,
                           num_parallel_calls=min(cycle, workers), deterministic=True)
        ds = ds.map(parse, num_parallel_calls=workers, deterministic=True)
        return _block_shuffle(ds, max(1, min(n, shuffle_buffer)), pass_seed(p))

    return passes.flat_map(one_pass)


def records(store: Path, split: str, *, labels: bool, modality: str, parse, shuffle: bool,
             repeat: bool, cache: bool, seed: int, bytes_per_example: int, batch_size: int,
             start_batch: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER):
    """Batches of parsed, optionally cached / shuffled / repeated examples of one split.

    Order guarantee for shuffled reads: the store holds every split in a seeded random
    permutation (store.shuffled), so each shard is a uniform sample of the split; pass
    `p` over the split then reads the shards in an order drawn from (seed, p),
    interleaves up to SHUFFLE_SHARDS of them record by record and permutes blocks of
    `shuffle_buffer` records (the whole split at once when it is cached in memory).
    The order of pass p depends on (seed, p) only, never on how many iterators came
    before, and the shuffled stream is endless records batched in order (batch k starts
    at record k * batch_size), so a resumed run that starts at `start_batch` sees
    exactly the batches an uninterrupted run would.
    Unshuffled reads keep the stored order; with `repeat` each pass is the same.
    With data.service set, shuffled repeated reads come from tf.data service workers
    (`service.served_records`): every record once per pass, in the order they arrive.
    """
    manifest, n, files = _open_split(store, split, labels=labels, modality=modality)
    workers = max(1, min(4, os.cpu_count() or 1))
    cached = cache and n * bytes_per_example < CACHE_LIMIT_BYTES

    def stored_order():
        ds = tf.data.Dataset.from_tensor_slices(files).flat_map(tf.data.TFRecordDataset)
        return ds.map(parse, num_parallel_calls=workers, deterministic=True)

    if not shuffle:
        ds = stored_order()
        if cached:
            ds = ds.cache()
        return _stored_batches(ds, batch_size, repeat=repeat,
                               start_batch=start_batch), manifest, workers

    first, offset = divmod(int(start_batch) * int(batch_size), n)
    passes = tf.data.Dataset.range(first, _PASSES if repeat else first + 1)

    def pass_seed(p):
        return tf.stack([tf.constant(int(seed), tf.int64), p])

    drop = repeat and _STATIC["on"]  # static batches: the endless stream loses nothing

    if repeat and service.service():  # training streams: read on tf.data service workers
        ds = service.served_records(files, parse, n, first, seed, shuffle_buffer)
    elif cached:
        return _gathered_from_memory(stored_order(), n, passes, pass_seed, offset, batch_size,
                                     drop), manifest, workers
    else:
        ds = _interleaved_from_disk(files, parse, n, passes, pass_seed, workers,
                                    shuffle_buffer)
    ds = ds.skip(offset) if offset else ds
    return ds.batch(batch_size, drop_remainder=drop), manifest, workers


_STATIC = {"on": False}


def set_static_batches(on: bool) -> None:
    """Make every repeated (training / validation) stream yield batches of one size, as a
    TPU needs: the last partial batch of an unshuffled pass is dropped. train.setup turns
    this on for TPU strategies (or trainer.static_batches=true)."""
    _STATIC["on"] = bool(on)


def static_batches() -> bool:
    return _STATIC["on"]


def pin_batch(ds: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
    """Declare the batch dimension of every component `batch_size` (a map after batching,
    such as tokenization, loses it); other unknown dimensions stay unknown."""
    def pin(t):
        return tf.ensure_shape(t, [batch_size, *t.shape[1:]])

    def each(*xs):
        out = tf.nest.map_structure(pin, xs)
        return out if len(xs) > 1 else out[0]

    return ds.map(each)


def _stored_batches(ds, batch_size: int, *, repeat: bool, start_batch: int):
    """Batch an unshuffled read; repeated ones (validation) repeat whole passes, so every
    pass yields the same batches, and drop a partial last batch when static batches are
    on. (Shuffled reads are batched in records: an endless record stream.)"""
    ds = ds.batch(batch_size, drop_remainder=repeat and _STATIC["on"])
    if repeat:
        ds = ds.repeat()
        if start_batch:
            ds = ds.skip(start_batch)
    return ds
