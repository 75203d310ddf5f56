"""tf.data readers over a store: decode, scale, batch, prefetch, per modality.

The record order itself (shuffled, resumable, cached) is `reading.records`; this module
re-exports the names callers use with it (split_info, static batches, the shuffle
buffer)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from pretrainer.data.modalities.image import scale_pixels
from pretrainer.data.reading import (  # noqa: F401  (split_info ... are this module's too)
    SHUFFLE_BUFFER,
    pin_batch,
    records,
    set_static_batches,
    split_info,
    static_batches,
    stream_options,
)
from pretrainer.data.store import read_manifest
from pretrainer.errors import DataError


def images(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
           repeat: bool = False, labels: bool = True, one_hot: bool = False,
           cache: bool = True, seed: int = 0, augment: str = "none",
           start_batch: int = 0, shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Batches of float32 images in [0, 1] (and int64 or one-hot labels).

    `start_batch`: begin at that batch of the stream (a resumed run); augmentation
    draws from (seed, batch index), so batch k is the same whatever the start.
    """
    shape = read_manifest(store).shape
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), shape), ex["label"]

    # cached as uint8, before scaling: 4x smaller than float32
    ds, manifest, workers = records(store, split, labels=labels, modality="image", parse=parse,
                                     shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                                     bytes_per_example=int(np.prod(shape)),
                                     batch_size=batch_size, start_batch=start_batch,
                                     shuffle_buffer=shuffle_buffer)
    num_classes = manifest.num_classes

    def finish(index, batch):
        img, label = batch
        x = scale_pixels(img)  # the one definition, shared with exports and predict
        if augment != "none":
            x = shift_augment(x, shape, flip=augment == "shift_flip",
                              seed=batch_seed(seed, index))
        if not labels:
            return x
        if one_hot:
            return x, tf.one_hot(label, num_classes)
        return x, label

    ds = ds.enumerate(start_batch).map(finish, num_parallel_calls=workers, deterministic=True)
    return ds.prefetch(2).with_options(stream_options())


def batch_seed(seed: int, index) -> tf.Tensor:
    """The stateless-RNG seed of batch `index` of a stream seeded `seed`."""
    return tf.stack([tf.constant(int(seed), tf.int64), tf.cast(index, tf.int64)])


def _finish(ds, labels: bool) -> tf.data.Dataset:
    """Drop the label when it is not wanted; prefetch."""
    if not labels:
        ds = ds.map(lambda x, _: x)
    return ds.prefetch(2).with_options(stream_options())


def texts(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
          repeat: bool = False, labels: bool = True, cache: bool = True,
          seed: int = 0, start_batch: int = 0,
          shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Batches of UTF-8 strings (and int64 labels)."""
    spec = {"text": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return ex["text"], ex["label"]

    ds, _, _ = records(store, split, labels=labels, modality="text", parse=parse,
                        shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                        bytes_per_example=512, shuffle_buffer=shuffle_buffer,
                        batch_size=batch_size, start_batch=start_batch)
    return _finish(ds, labels)


def trim_padding(ids: tf.Tensor) -> tf.Tensor:
    """A batch of token ids cut to its longest text (padding is id 0, at the end), rounded
    up to the next of 8, 12, 16, 24, 32, 48, ... (two sizes per doubling, never past the
    sequence length): a handful of shapes, each compiled once where XLA compiles the
    step, at most a third of padding over the longest."""
    full = tf.shape(ids)[1]
    longest = tf.reduce_max(tf.reduce_sum(tf.cast(ids != 0, tf.int32), axis=1))
    sizes = tf.constant([m * 2**k for k in range(3, 16) for m in (1, 1.5)], tf.float32)
    size = tf.cast(sizes[tf.searchsorted(sizes, [tf.cast(longest, tf.float32)])[0]], tf.int32)
    return ids[:, :tf.minimum(size, full)]


LENGTH_WINDOW = 32  # batches sorted by length together (grouped_by_length)


def grouped_by_length(make, start_batch: int, seed: int,
                      window: int = LENGTH_WINDOW) -> tf.data.Dataset:
    """The endless stream of token-id batches `make(start)` regrouped so each batch holds
    texts of similar length, cut to its longest: short texts stop paying for the longest
    (measured: 14 tokens on average of a 32-token sequence on short lines).

    Each `window` consecutive batches are pooled, sorted by length, cut back into as many
    batches of the same size and sent in an order drawn from (seed, window index), so
    steps per epoch stay the same and batch k is the same whatever the start: a run
    resumed at `start_batch` rebuilds its window from the window's first batch (tf.data's
    bucket_by_sequence_length would change the batch count and the resume position)."""
    first = (int(start_batch) // window) * window
    seed = tf.constant([int(seed), 7], tf.int64)

    def regroup(index, batches):
        w, b = tf.shape(batches)[0], tf.shape(batches)[1]
        flat = tf.reshape(batches, [w * b, -1])
        lengths = tf.reduce_sum(tf.cast(flat != 0, tf.int32), axis=1)
        flat = tf.gather(flat, tf.argsort(lengths, stable=True))
        order = tf.random.experimental.stateless_shuffle(
            tf.range(w), seed=tf.random.experimental.stateless_fold_in(seed, index))
        return tf.data.Dataset.from_tensor_slices(
            tf.gather(tf.reshape(flat, [w, b, -1]), order)).map(trim_padding)

    ds = make(first).batch(window, drop_remainder=True).enumerate(first // window)
    ds = ds.flat_map(regroup)
    return ds.skip(int(start_batch) - first) if start_batch > first else ds


def rows(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
         repeat: bool = False, labels: bool = True, cache: bool = True,
         seed: int = 0, standardize: bool = True, start_batch: int = 0,
         shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
    """Batches of float32 feature rows (and labels or regression targets).

    With `standardize`, means and standard deviations come from the unlabeled
    pool (manifest `feature_stats`), never from the test split; without it the
    rows are the raw encoded features (models then standardise inside).
    """
    manifest = read_manifest(store)
    n = manifest.width
    regression = manifest.regression
    target = ("target", tf.io.FixedLenFeature([], tf.float32)) if regression else \
        ("label", tf.io.FixedLenFeature([], tf.int64))
    spec = {"features": tf.io.FixedLenFeature([n], tf.float32), target[0]: target[1]}
    mean = tf.constant(manifest.feature_stats.mean, tf.float32)
    std = tf.constant(manifest.feature_stats.std, tf.float32)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        x = (ex["features"] - mean) / std if standardize else ex["features"]
        return x, ex[target[0]]

    ds, _, _ = records(store, split, labels=labels, modality="tabular", parse=parse,
                        shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                        bytes_per_example=4 * n, shuffle_buffer=shuffle_buffer,
                        batch_size=batch_size, start_batch=start_batch)
    return _finish(ds, labels)


def examples(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
             repeat: bool = False, labels: bool = True, one_hot: bool = False,
             cache: bool = True, seed: int = 0, augment: str = "none",
             standardize: bool = True, start_batch: int = 0,
             shuffle_buffer: int = SHUFFLE_BUFFER) -> tf.data.Dataset:
    """The reader that fits the store's modality (images, texts or rows)."""
    manifest = read_manifest(store)
    common = dict(batch_size=batch_size, shuffle=shuffle, repeat=repeat, labels=labels,
                  cache=cache, seed=seed, start_batch=start_batch,
                  shuffle_buffer=shuffle_buffer)
    if manifest.kind.pixels:
        return images(store, split, one_hot=one_hot, augment=augment, **common)
    if manifest.kind.standardized:
        ds = rows(store, split, standardize=standardize, **common)
        if labels and one_hot:
            n = manifest.num_classes
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, n)))
        return ds
    return texts(store, split, **common)


def shift_augment(x, shape, *, flip: bool, seed):
    """Random translation by up to 10% (zero padding) and optional mirror, per image.

    `seed` is a stateless-RNG seed (shape [2], e.g. batch_seed): the same batch and
    seed give the same augmentation in any process, which exact resume relies on.
    Vectorised over the batch (one draw of all offsets, two batched gathers): a
    map_fn of tf.image.stateless_random_crop per image ran one loop iteration per
    example, which FixMatch pays for ~7 images per labeled one.
    """
    h, w = shape[0], shape[1]
    ph, pw = max(1, h // 10), max(1, w // 10)
    x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    n = tf.shape(x)[0]
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    draw = tf.random.stateless_uniform([n, 2], seed=crop_seed, minval=0,
                                       maxval=tf.int32.max, dtype=tf.int32)
    dy, dx = draw[:, 0] % (2 * ph + 1), draw[:, 1] % (2 * pw + 1)
    x = tf.gather(x, dy[:, None] + tf.range(h)[None], axis=1, batch_dims=1)
    x = tf.gather(x, dx[:, None] + tf.range(w)[None], axis=2, batch_dims=1)
    if flip:
        mirror = tf.random.stateless_uniform([n, 1, 1, 1], seed=flip_seed) < 0.5
        x = tf.where(mirror, tf.reverse(x, axis=[2]), x)
    return x


def to_numpy(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Materialise a finite labeled dataset (evaluation, parity checks)."""
    xs, ys = [], []
    for x, y in ds.as_numpy_iterator():
        xs.append(x)
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def steps(store: Path, split: str, batch_size: int, limit: Optional[int] = None) -> int:
    """Batches per pass over `split` (whole batches only when static batches are on)."""
    n = split_info(store, split).count
    if limit is not None:
        n = min(n, limit)
    if static_batches():
        if n < batch_size:
            raise DataError(f"the {split} split has {n} examples, fewer than one batch of "
                            f"{batch_size}: with static batches (TPUs) every batch is whole. "
                            f"Lower the batch size or give the split more examples")
        return n // batch_size
    return max(1, -(-n // batch_size))


def validation_batch(store: Path, split: str, batch_size: int, steps_per_epoch: int,
                     steps_per_execution: int) -> int:
    """The validation batch size under steps_per_execution > 1: Keras runs whole
    executions, so a pass over `split` must take a multiple of the steps per execution
    that training uses (a divisor of the epoch's steps). Tries the largest such divisor
    first, with batch sizes from `batch_size` down to a quarter of it; `batch_size`
    when none fits (training then runs fewer steps per execution: train.fit)."""
    n_steps = steps(store, split, batch_size)
    for k in range(min(steps_per_execution, steps_per_epoch), 1, -1):
        if steps_per_epoch % k:
            continue
        if n_steps % k == 0:
            return batch_size
        for b in range(batch_size - 1, max(1, batch_size // 4) - 1, -1):
            if steps(store, split, b) % k == 0:
                return b
    return batch_size
