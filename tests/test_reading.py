"""data/reading.py: the one record order every reader uses: batch k is the same whatever
the start, each pass a new permutation, the same from memory and from disk."""

import numpy as np
import pytest
import tensorflow as tf

from pretrainer.config import DataConfig
from pretrainer.data import reading
from pretrainer.data.sources import SourceData
from pretrainer.data.store import build_store
from pretrainer.errors import DataError

N = 1000


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """N rows whose one feature is their index, in shards of 128 (8 shards)."""
    x = np.arange(N, dtype=np.float32)[:, None]
    src = SourceData(x_pool=x, y_pool=np.arange(N) % 2, class_names=["a", "b"],
                     x_test=x[:20], y_test=np.arange(20) % 2, modality="tabular")
    cfg = DataConfig(name="idx", source="csv", labeled_fraction=1.0, val_fraction=0.0,
                     shard_size=128)
    path = tmp_path_factory.mktemp("stores") / "idx"
    build_store(path, cfg, seed=0, src=src)
    return path


def _parse(record):
    ex = tf.io.parse_single_example(record, {
        "features": tf.io.FixedLenFeature([1], tf.float32),
        "label": tf.io.FixedLenFeature([], tf.int64)})
    return ex["features"][0], ex["label"]


def _batches(store, *, cache, start=0, take=30, buffer=300, shuffle=True):
    ds, manifest, _ = reading.records(
        store, "train", labels=True, modality="tabular", parse=_parse, shuffle=shuffle,
        repeat=True, cache=cache, seed=5, bytes_per_example=8, batch_size=64,
        start_batch=start, shuffle_buffer=buffer)
    assert manifest.modality == "tabular"
    return [x.astype(int).tolist() for x, _ in ds.take(take).as_numpy_iterator()]


@pytest.mark.parametrize("cache", [True, False])
def test_a_resumed_stream_gives_the_batches_an_uninterrupted_one_would(store, cache):
    whole = _batches(store, cache=cache)
    for start in (1, 15, 16, 29):  # inside the first pass, across the pass boundary
        assert _batches(store, cache=cache, start=start, take=30 - start) == whole[start:]


@pytest.mark.parametrize("cache", [True, False])
def test_each_pass_is_a_new_permutation_of_the_whole_split(store, cache):
    flat = sum(_batches(store, cache=cache, take=(2 * N) // 64), [])
    first, second = flat[:N], flat[N:2 * N]
    assert sorted(first) == list(range(N))  # every row once per pass
    assert len(set(second)) == len(second)
    assert first != sorted(first) and first[:len(second)] != second  # a new order


def test_an_unshuffled_repeated_read_repeats_the_stored_order(store):
    passes = _batches(store, cache=False, shuffle=False, take=2 * -(-N // 64))
    assert passes[: len(passes) // 2] == passes[len(passes) // 2:]


def test_a_split_that_cannot_be_read_as_asked_says_why(store):
    with pytest.raises(DataError, match="holds tabular data; this step reads image"):
        reading.records(store, "train", labels=True, modality="image", parse=_parse,
                        shuffle=False, repeat=False, cache=False, seed=0,
                        bytes_per_example=8, batch_size=8)
    with pytest.raises(DataError, match="has no split 'pool'. Choose from: unlabeled"):
        reading.split_info(store, "pool")
