"""scikit-learn's TF-IDF + logistic regression as one Keras layer over raw strings.

The classical text baseline (`baselines`: TfidfVectorizer word 1-2-grams and char_wb
2-5-grams, sublinear tf, each block L2-normalised, then LogisticRegression) rebuilt
from TensorFlow string ops, so the pipeline can ship it like any other run: deploy
exports it as a SavedModel taking raw text, and predict and serve call it. Written here
because neither Keras' TextVectorization (no char_wb n-grams, no sublinear tf, no
per-block norm) nor scikit-learn-to-TensorFlow converters reproduce that pipeline.

Tokens follow scikit-learn's defaults: lowercase; words are runs of at least two
Unicode letters, digits or underscores (`(?u)\\b\\w\\w+\\b`); char_wb n-grams are taken
inside each whitespace-separated word padded with one space on each side. Terms not in
the fitted vocabulary are dropped, as scikit-learn drops them. Lowercasing is
TensorFlow's (`tf.strings.lower`, ICU): checked against Python's `str.lower` on every
code point from U+0080 to U+2FFFF (2026-12-06, TensorFlow 2.21), the two differ on 40,
all capitals added in Unicode 14 (U+2C2F, four in U+A7C0-A7D8, Vithkuqi U+10570-10595),
which TensorFlow leaves as they are.
"""

from __future__ import annotations

import keras

# Python's str.split() whitespace, which scikit-learn's char_wb analyzer splits words on
_WHITESPACE = r"[\p{Z}\t\n\x{0b}\x{0c}\r\x{1c}-\x{1f}\x{85}]+"
_NOT_WORD = r"[^\p{L}\p{N}_]+"  # Python's Unicode \w is letters, numbers and '_'


def _terms(text, analyzer: str, lo: int, hi: int):
    """Ragged [batch, terms] of one analyzer's n-grams (lowercased text in)."""
    import tensorflow as tf

    if analyzer == "word":
        toks = tf.strings.split(tf.strings.regex_replace(text, _NOT_WORD, " "))
        toks = tf.ragged.boolean_mask(toks, tf.strings.length(toks, unit="UTF8_CHAR") >= 2)
        parts = [toks if n == 1 else tf.strings.ngrams(toks, n, separator=" ")
                 for n in range(lo, hi + 1)]
    else:  # char_wb
        words = tf.strings.split(tf.strings.regex_replace(text, _WHITESPACE, " "))
        padded = tf.ragged.map_flat_values(lambda w: tf.strings.join([" ", w, " "]), words)
        chars = tf.strings.unicode_split(padded, "UTF-8")
        parts = [tf.strings.ngrams(chars, n, separator="").merge_dims(1, 2)
                 for n in range(lo, hi + 1)]
    return tf.concat(parts, axis=1)


@keras.saving.register_keras_serializable(package="pretrainer")
class TfidfLinear(keras.layers.Layer):
    """Raw strings [batch] -> logits [batch, units]: TF-IDF blocks (each a dict with
    `analyzer` word | char_wb, `ngram_range`, `vocabulary` in column order, `idf`) and a
    fixed linear map (`kernel` [terms, units], `bias`), none of it trained here."""

    def __init__(self, blocks: list[dict], units: int, **kwargs):
        super().__init__(**kwargs)
        import tensorflow as tf

        self.blocks = [dict(b) for b in blocks]
        self.units = int(units)
        total = sum(len(b["vocabulary"]) for b in self.blocks)
        self.kernel = self.add_weight(shape=(total, self.units), initializer="zeros",
                                      trainable=False, name="kernel", dtype="float32")
        self.bias = self.add_weight(shape=(self.units,), initializer="zeros",
                                    trainable=False, name="bias", dtype="float32")
        self._tables = [tf.lookup.StaticHashTable(tf.lookup.KeyValueTensorInitializer(
            tf.constant(b["vocabulary"], tf.string),
            tf.range(len(b["vocabulary"]), dtype=tf.int64)), default_value=-1)
            for b in self.blocks]
        self._idf = [tf.constant(b["idf"], tf.float32) for b in self.blocks]
        self.built = True

    def call(self, inputs):
        import tensorflow as tf

        text = tf.strings.lower(tf.reshape(inputs, [-1]), encoding="utf-8")
        batch = tf.shape(text, out_type=tf.int64)[0]
        rows, cols, vals, offset = [], [], [], 0
        for block, table, idf in zip(self.blocks, self._tables, self._idf, strict=True):
            lo, hi = block["ngram_range"]
            terms = _terms(text, block["analyzer"], int(lo), int(hi))
            ids = table.lookup(terms.flat_values)
            known = ids >= 0
            size = len(block["vocabulary"])
            key = tf.boolean_mask(terms.value_rowids() * size + ids, known)
            uniq, _, counts = tf.unique_with_counts(key)
            row, col = uniq // size, uniq % size
            value = (1.0 + tf.math.log(tf.cast(counts, tf.float32))) * tf.gather(idf, col)
            norm = tf.sqrt(tf.math.unsorted_segment_sum(value * value, row, batch))
            rows.append(row)
            cols.append(col + offset)
            vals.append(value / tf.gather(norm, row))
            offset += size
        features = tf.sparse.reorder(tf.SparseTensor(
            tf.stack([tf.concat(rows, 0), tf.concat(cols, 0)], axis=1), tf.concat(vals, 0),
            tf.stack([batch, tf.constant(offset, tf.int64)])))
        return tf.sparse.sparse_dense_matmul(features, self.kernel) + self.bias

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.units)

    def get_config(self):
        return {**super().get_config(), "blocks": self.blocks, "units": self.units}
