"""The translation / mirror augmentation every image finetune and FixMatch use."""

import numpy as np
import tensorflow as tf

from pretrainer.data import pipeline


def _shifts_of(x, out, flip):
    """For each image, the (dy, dx, mirrored) that turns the zero-padded input into the
    output (None when no shift within +-10 % does)."""
    n, h, w, _ = x.shape
    ph, pw = max(1, h // 10), max(1, w // 10)
    padded = np.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]])
    found = []
    for i in range(n):
        hit = None
        for dy in range(2 * ph + 1):
            for dx in range(2 * pw + 1):
                crop = padded[i, dy:dy + h, dx:dx + w]
                for m in ((False, True) if flip else (False,)):
                    if np.array_equal(crop[:, ::-1] if m else crop, out[i]):
                        hit = (dy, dx, m)
        found.append(hit)
    return found


def test_each_image_is_shifted_by_its_own_offset_within_ten_percent():
    x = np.random.default_rng(0).random((200, 20, 30, 3), dtype=np.float32)
    seed = pipeline.batch_seed(4, 7)
    out = pipeline.shift_augment(tf.constant(x), x.shape[1:], flip=True, seed=seed).numpy()
    assert out.shape == x.shape and out.dtype == x.dtype
    shifts = _shifts_of(x, out, flip=True)
    assert all(s is not None for s in shifts)
    assert len({s[:2] for s in shifts}) >= 15  # (5 x 7 offsets): drawn per image
    mirrored = sum(s[2] for s in shifts)
    assert 60 < mirrored < 140
    again = pipeline.shift_augment(tf.constant(x), x.shape[1:], flip=True, seed=seed).numpy()
    np.testing.assert_array_equal(out, again)  # the same (seed, batch): the same views
    other = pipeline.shift_augment(tf.constant(x), x.shape[1:], flip=True,
                                   seed=pipeline.batch_seed(4, 8)).numpy()
    assert not np.array_equal(out, other)


def test_shift_keeps_the_static_shape_inside_tf_data():
    ds = tf.data.Dataset.from_tensor_slices(tf.zeros([10, 28, 28, 1])).batch(4).map(
        lambda b: pipeline.shift_augment(b, [28, 28, 1], flip=False,
                                         seed=pipeline.batch_seed(0, 0)))
    assert ds.element_spec.shape.as_list() == [None, 28, 28, 1]
    assert [b.shape[0] for b in ds] == [4, 4, 2]
