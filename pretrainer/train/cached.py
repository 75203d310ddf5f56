"""A linear probe over a frozen text trunk, trained on features computed once per split.

A Wide & Deep text classifier (`models.heads.text_classifier` over a frozen transformer)
spends nearly all of a training step in its frozen part: WordPiece, the transformer and
the two n-gram TF-IDF vectorizers, the same for a text every epoch. Here that part runs
once over the labeled and validation texts; each text's feature row (sparse: a few
hundred of ~100k columns are non-zero) is kept, and the head (dropout, softmax) trains
on rows looked up by text and densified per batch. The training stream is unchanged
(same batches, same order, exact resume): only its texts are replaced by their rows.
The saved model is the whole classifier (the head's layers are shared), so exports
still take raw strings.

Written here rather than with tf.data's cache(): the stream is shuffled per pass and
cached records would be the strings, not the features.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np


def probe_parts(model: keras.Model) -> Optional[tuple[keras.Model, keras.Model]]:
    """(trunk: strings -> the features the head reads, head: features -> probabilities,
    sharing the model's head dropout and softmax layers), or None for a model without a
    `probabilities` layer."""
    names = [layer.name for layer in model.layers]
    if "probabilities" not in names:
        return None
    head_layers = [model.get_layer(n) for n in ("head_dropout", "probabilities") if n in names]
    trunk = keras.Model(model.input, head_layers[0].input, name="frozen_trunk")
    features = x = keras.Input(shape=head_layers[0].input.shape[1:], name="features")
    for layer in head_layers:
        x = layer(x)
    return trunk, keras.Model(features, x, name="probe_head")


class FeatureRows:
    """Texts -> their trunk features, looked up from rows computed once and kept sparse."""

    def __init__(self, trunk: keras.Model, texts: np.ndarray, batch_size: int = 256):
        import tensorflow as tf

        keys = np.unique(np.asarray(texts, dtype=object).astype(bytes))
        cols, vals, lengths = [], [], []
        for start in range(0, len(keys), batch_size):
            dense = np.asarray(trunk(tf.constant(keys[start:start + batch_size]),
                                     training=False), np.float32)
            row, col = np.nonzero(dense)  # row-major: each row's columns in order
            cols.append(col)
            vals.append(dense[row, col])
            lengths.extend(np.bincount(row, minlength=len(dense)))
        self.width = int(trunk.output.shape[-1])
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(keys),
                                                tf.range(len(keys), dtype=tf.int64)), -1)
        self.cols = tf.RaggedTensor.from_row_lengths(
            tf.constant(np.concatenate(cols or [[]]).astype(np.int64)), lengths)
        self.vals = tf.RaggedTensor.from_row_lengths(
            tf.constant(np.concatenate(vals or [[]]).astype(np.float32)), lengths)
        self.count = len(keys)

    def __call__(self, texts, *rest):
        """A tf.data map over (texts, labels...) batches: the texts' feature rows, dense
        (a batch of 32 rows of 100k floats is 13 MB; only the cache is kept sparse)."""
        import tensorflow as tf

        rows = self.table.lookup(texts)
        tf.debugging.assert_non_negative(rows, "a text without precomputed features")
        cols, vals = tf.gather(self.cols, rows), tf.gather(self.vals, rows)
        index = tf.stack([cols.value_rowids(), cols.flat_values], axis=1)
        x = tf.scatter_nd(index, vals.flat_values,
                          tf.stack([tf.shape(texts, out_type=tf.int64)[0],
                                    tf.constant(self.width, tf.int64)]))
        return (x, *rest)
