"""tf.data readers over a store: stream shards, decode, scale, batch, prefetch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import tensorflow as tf

from pretrainer.data.store import join, read_manifest
from pretrainer.errors import DataError

# Splits smaller than this are cached decoded in memory (data.cache=true); larger
# ones stream from the shards every epoch so memory does not grow with the data.
CACHE_LIMIT_BYTES = 512 * 2**20


def _options() -> tf.data.Options:
    opts = tf.data.Options()
    # TF 2.21's autotune can block for seconds when an epoch's iterator is destroyed
    # (measured: epochs snapping to ~5.1 s / 10.2 s); fixed parallelism avoids it.
    opts.autotune.enabled = False
    opts.deterministic = True
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return opts


def split_info(store: Path, split: str) -> dict:
    manifest = read_manifest(store)
    if split not in manifest["splits"]:
        raise DataError(f"Store {store} has no split '{split}'. Choose from: "
                        f"{', '.join(manifest['splits'])}")
    return manifest["splits"][split]


def _records(store: Path, split: str, *, labels: bool, modality: str, parse, shuffle: bool,
             repeat: bool, cache: bool, seed: int, bytes_per_example: int):
    """Parsed, optionally cached / shuffled / repeated examples of one split (not batched)."""
    manifest = read_manifest(store)
    if manifest["modality"] != modality:
        raise DataError(f"{store} holds {manifest['modality']} data; this step reads {modality}")
    info = split_info(store, split)
    if info["count"] == 0:
        raise DataError(f"Split '{split}' of {store} is empty; adjust data.* fractions")
    if labels and not info["labeled"]:
        raise DataError(f"Split '{split}' of {store} has no labels")
    files = [join(store, s["file"]) for s in info["shards"]]
    workers = max(1, min(4, os.cpu_count() or 1))
    ds = tf.data.Dataset.from_tensor_slices(files)
    # Shuffled reads interleave shards; ordered reads (evaluation) keep the stored order.
    cycle = min(len(files), workers) if shuffle else 1
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=cycle, num_parallel_calls=cycle,
                       deterministic=True)
    ds = ds.map(parse, num_parallel_calls=workers)
    if cache and info["count"] * bytes_per_example < CACHE_LIMIT_BYTES:
        ds = ds.cache()
    if shuffle:
        ds = ds.shuffle(min(info["count"], 10_000), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()
    return ds, manifest, workers


def images(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
           repeat: bool = False, labels: bool = True, one_hot: bool = False,
           cache: bool = True, seed: int = 0, augment: str = "none") -> tf.data.Dataset:
    """Batches of float32 images in [0, 1] (and int64 or one-hot labels)."""
    shape = read_manifest(store)["shape"]
    spec = {"image": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return tf.reshape(tf.io.decode_raw(ex["image"], tf.uint8), shape), ex["label"]

    # cached as uint8, before scaling: 4x smaller than float32
    ds, manifest, workers = _records(store, split, labels=labels, modality="image", parse=parse,
                                     shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                                     bytes_per_example=int(np.prod(shape)))
    num_classes = manifest["num_classes"]

    def finish(img, label):
        x = tf.cast(img, tf.float32) / 255.0
        if augment != "none":
            x = shift_augment(x, shape, flip=augment == "shift_flip", seed=seed)
        if not labels:
            return x
        if one_hot:
            return x, tf.one_hot(label, num_classes)
        return x, label

    ds = ds.batch(batch_size).map(finish, num_parallel_calls=workers)
    return ds.prefetch(2).with_options(_options())


def _batched(ds, batch_size: int, labels: bool) -> tf.data.Dataset:
    """Batch (features, label) pairs, dropping the label when it is not wanted."""
    ds = ds.batch(batch_size)
    if not labels:
        ds = ds.map(lambda x, _: x)
    return ds.prefetch(2).with_options(_options())


def texts(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
          repeat: bool = False, labels: bool = True, cache: bool = True,
          seed: int = 0) -> tf.data.Dataset:
    """Batches of UTF-8 strings (and int64 labels)."""
    spec = {"text": tf.io.FixedLenFeature([], tf.string),
            "label": tf.io.FixedLenFeature([], tf.int64)}

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        return ex["text"], ex["label"]

    ds, _, _ = _records(store, split, labels=labels, modality="text", parse=parse,
                        shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                        bytes_per_example=512)
    return _batched(ds, batch_size, labels)


def rows(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
         repeat: bool = False, labels: bool = True, cache: bool = True,
         seed: int = 0, standardize: bool = True) -> tf.data.Dataset:
    """Batches of float32 feature rows (and labels or regression targets).

    With `standardize`, means and standard deviations come from the unlabeled
    pool (manifest `feature_stats`), never from the test split; without it the
    rows are the raw encoded features (models then standardise inside).
    """
    manifest = read_manifest(store)
    n = manifest["shape"][0]
    regression = manifest.get("task") == "regression"
    target = ("target", tf.io.FixedLenFeature([], tf.float32)) if regression else \
        ("label", tf.io.FixedLenFeature([], tf.int64))
    spec = {"features": tf.io.FixedLenFeature([n], tf.float32), target[0]: target[1]}
    mean = tf.constant(manifest["feature_stats"]["mean"], tf.float32)
    std = tf.constant(manifest["feature_stats"]["std"], tf.float32)

    def parse(record):
        ex = tf.io.parse_single_example(record, spec)
        x = (ex["features"] - mean) / std if standardize else ex["features"]
        return x, ex[target[0]]

    ds, _, _ = _records(store, split, labels=labels, modality="tabular", parse=parse,
                        shuffle=shuffle, repeat=repeat, cache=cache, seed=seed,
                        bytes_per_example=4 * n)
    return _batched(ds, batch_size, labels)


def examples(store: Path, split: str, *, batch_size: int, shuffle: bool = False,
             repeat: bool = False, labels: bool = True, one_hot: bool = False,
             cache: bool = True, seed: int = 0, augment: str = "none",
             standardize: bool = True) -> tf.data.Dataset:
    """The reader that fits the store's modality (images, texts or rows)."""
    modality = read_manifest(store)["modality"]
    common = dict(batch_size=batch_size, shuffle=shuffle, repeat=repeat, labels=labels,
                  cache=cache, seed=seed)
    if modality == "image":
        return images(store, split, one_hot=one_hot, augment=augment, **common)
    if modality == "tabular":
        ds = rows(store, split, standardize=standardize, **common)
        if labels and one_hot:
            n = read_manifest(store)["num_classes"]
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, n)))
        return ds
    return texts(store, split, **common)


def shift_augment(x, shape, *, flip: bool, seed: int):
    """Random translation by up to 10% (zero padding) and optional mirror, per image."""
    h, w = shape[0], shape[1]
    ph, pw = max(1, h // 10), max(1, w // 10)
    x = tf.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    n = tf.shape(x)[0]
    x = tf.map_fn(lambda im: tf.image.random_crop(im, shape), x)
    if flip:
        mirror = tf.random.uniform([n, 1, 1, 1]) < 0.5
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
    n = split_info(store, split)["count"]
    if limit is not None:
        n = min(n, limit)
    return max(1, -(-n // batch_size))
