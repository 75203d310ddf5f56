"""A linear probe over a frozen text trunk, trained on features computed once per split.

A Wide & Deep text classifier (`models.heads.text_classifier` over a frozen transformer)
spends nearly all of a training step in its frozen part: WordPiece, the transformer and
the two n-gram TF-IDF vectorizers, the same for a text every epoch. Here that part runs
once over the labeled and validation texts; each text's feature row (sparse: a few
hundred of ~100k columns are non-zero) is kept, and the softmax trains on rows looked up
by text. The training stream is unchanged (same batches, same order, exact resume):
only its texts are replaced by their rows. The saved model is the whole classifier
(the softmax layer is shared), so exports still take raw strings.

Written here rather than with tf.data's cache(): the stream is shuffled per pass and
cached records would be the strings, not the features.
"""

from __future__ import annotations

from typing import Optional

import keras
import numpy as np


def probe_parts(model: keras.Model) -> Optional[tuple[keras.Model, keras.Model]]:
    """(trunk: strings -> the softmax's input, head: those features -> probabilities sharing
    the model's softmax layer), or None when something trainable sits between them (a
    head dropout: sparse rows cannot drop out)."""
    names = {layer.name for layer in model.layers}
    if "head_dropout" in names or "probabilities" not in names:
        return None
    softmax = model.get_layer("probabilities")
    trunk = keras.Model(model.input, softmax.input, name="frozen_trunk")
    features = keras.Input(shape=softmax.input.shape[1:], sparse=True, name="features")
    return trunk, keras.Model(features, softmax(features), name="probe_head")


class FeatureRows:
    """Texts -> their trunk features as a sparse batch, looked up from rows computed once."""

    def __init__(self, trunk: keras.Model, texts: np.ndarray, batch_size: int = 256):
        import tensorflow as tf

        keys = np.unique(np.asarray(texts, dtype=object).astype(bytes))
        cols, vals, lengths = [], [], []
        for start in range(0, len(keys), batch_size):
            dense = np.asarray(trunk(tf.constant(keys[start:start + batch_size]),
                                     training=False), np.float32)
            for row in dense:
                nz = np.flatnonzero(row)
                cols.append(nz)
                vals.append(row[nz])
                lengths.append(len(nz))
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
        """A tf.data map over (texts, labels...) batches."""
        import tensorflow as tf

        rows = self.table.lookup(texts)
        tf.debugging.assert_non_negative(rows, "a text without precomputed features")
        cols, vals = tf.gather(self.cols, rows), tf.gather(self.vals, rows)
        index = tf.stack([cols.value_rowids(), cols.flat_values], axis=1)
        x = tf.sparse.SparseTensor(index, vals.flat_values,
                                   tf.stack([tf.shape(texts, out_type=tf.int64)[0],
                                             tf.constant(self.width, tf.int64)]))
        return (x, *rest)
