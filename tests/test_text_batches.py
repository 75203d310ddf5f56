"""Language pretexts train on batches grouped by length and cut to their longest text:
the same texts, fewer padded tokens, and a resumed stream that is the tail of the
uninterrupted one."""

import dataclasses

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pretrainer.data.pipeline import LENGTH_WINDOW, grouped_by_length, trim_padding  # noqa: E402

WIDTH, BATCH = 32, 8


def _source(start: int):
    """An endless, deterministic stream of padded id batches: batch k depends on k only,
    whatever the start (as pipeline readers promise)."""
    def batch(k):
        g = tf.random.stateless_uniform
        lengths = g([BATCH], seed=tf.stack([k, tf.constant(1, tf.int64)]), minval=1,
                    maxval=WIDTH + 1, dtype=tf.int32)
        ids = g([BATCH, WIDTH], seed=tf.stack([k, tf.constant(2, tf.int64)]), minval=5,
                maxval=100, dtype=tf.int32)
        return tf.where(tf.range(WIDTH)[None, :] < lengths[:, None], ids, 0)

    return tf.data.Dataset.counter(start).map(batch)


def _take(ds, n):
    return [b.numpy() for b in ds.take(n)]


def _texts(batches):
    """The non-padding part of every row, as sortable tuples."""
    return sorted(tuple(r[r != 0]) for b in batches for r in b)


def test_a_window_holds_the_same_texts_in_batches_cut_to_their_longest():
    source = _take(_source(0), LENGTH_WINDOW)
    grouped = _take(grouped_by_length(_source, 0, seed=3), LENGTH_WINDOW)
    assert _texts(grouped) == _texts(source)
    assert all(b.shape[0] == BATCH for b in grouped)
    for b in grouped:  # nothing but padding was cut, and the width is one of the sizes
        longest = int((b != 0).sum(1).max())
        assert longest <= b.shape[1] <= max(8, int(np.ceil(longest * 1.5)))
        assert b.shape[1] in (8, 12, 16, 24, 32)
    padded = sum(b.size for b in grouped) / sum(b.size for b in source)
    assert padded < 0.75  # similar lengths share a batch


@pytest.mark.parametrize("start", [1, LENGTH_WINDOW - 1, LENGTH_WINDOW, LENGTH_WINDOW + 5])
def test_a_stream_started_at_batch_k_is_the_tail_of_the_full_one(start):
    full = _take(grouped_by_length(_source, 0, seed=3), 2 * LENGTH_WINDOW + 8)
    tail = _take(grouped_by_length(_source, start, seed=3), len(full) - start)
    assert len(tail) == len(full) - start
    for a, b in zip(full[start:], tail, strict=True):
        np.testing.assert_array_equal(a, b)


def test_the_order_of_batches_in_a_window_follows_the_seed():
    a = _take(grouped_by_length(_source, 0, seed=3), LENGTH_WINDOW)
    b = _take(grouped_by_length(_source, 0, seed=4), LENGTH_WINDOW)
    assert [x.tolist() for x in a] != [x.tolist() for x in b]
    assert _texts(a) == _texts(b)


def test_trim_padding_never_exceeds_the_sequence_length():
    ids = np.ones((2, 20), np.int32)  # 20 is no size of the list: cut at 20, not 24
    assert trim_padding(tf.constant(ids)).shape == (2, 20)
    ids[:, 9:] = 0
    assert trim_padding(tf.constant(ids)).shape == (2, 12)
    assert trim_padding(tf.zeros((3, 20), tf.int32)).shape == (3, 8)


def test_a_backbone_trained_on_any_length_is_saved_for_the_sequence_length():
    from pretrainer.config import compose
    from pretrainer.models.transformer import fixed_length, transformer

    cfg = dataclasses.replace(compose("text_mlm", []).backbone, vocabulary_size=50,
                              sequence_length=16, latent_dim=8, intermediate_dim=16,
                              num_layers=1, num_heads=2)
    free = transformer((None,), cfg)
    ids = np.random.default_rng(0).integers(1, 50, size=(3, 16)).astype(np.int32)
    ids[:, 10:] = 0
    fixed = fixed_length(free, cfg)
    assert fixed.input_shape == (None, 16) and free.input_shape == (None, None)
    np.testing.assert_allclose(np.asarray(fixed(ids)), np.asarray(free(ids)), atol=1e-6)
    # padding is masked: the first 10 positions do not change when the batch is cut
    np.testing.assert_allclose(np.asarray(free(ids[:, :12]))[:, :10],
                               np.asarray(free(ids))[:, :10], atol=1e-5)

