"""A linear probe over a frozen text trunk trains on features computed once per split
(pretrainer.train.cached) and ends with the weights training on the texts gives."""

import keras
import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from pretrainer.config import TransformerConfig  # noqa: E402
from pretrainer.data.modalities.text import tokenizer, train_vocabulary  # noqa: E402
from pretrainer.models import build_backbone, freeze  # noqa: E402
from pretrainer.models.heads import ngram_features, text_classifier  # noqa: E402
from pretrainer.train.cached import FeatureRows, probe_parts  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    filler = ["the", "a", "cat", "sat", "on", "mat", "dog", "ran", "far", "away"]
    texts, labels = [], []
    for i in range(240):  # class = which rare marker word appears, among filler words
        words = list(rng.choice(filler, 8))
        words.insert(int(rng.integers(0, 8)), ["zebra", "quokka", "okapi"][i % 3])
        texts.append(" ".join(words))
        labels.append(i % 3)
    return np.array(texts), np.array(labels)


def _probe(x, vocab):
    keras.utils.set_random_seed(1)
    tok = tokenizer(vocab, 16)
    backbone = freeze(build_backbone((16,), TransformerConfig(
        name="transformer", latent_dim=16, num_layers=1, num_heads=2, intermediate_dim=16,
        sequence_length=16, vocabulary_size=len(vocab), causal=False)))
    wide = ngram_features(x[:120], lambda t: np.asarray(backbone(tok(tf.constant(t)))).mean(1),
                          max_tokens=500)
    return text_classifier(backbone, tok, 3, wide=wide, l2=1e-4)


def test_the_cached_probe_trains_the_same_softmax_as_the_texts_do(tmp_path):
    x, y = _data()
    vocab = train_vocabulary(tf.data.Dataset.from_tensor_slices(x).batch(64), 100)
    stream = tf.data.Dataset.from_tensor_slices((x[:120], y[:120])).batch(20)

    direct = _probe(x, vocab)
    direct.compile(keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    direct.fit(stream, epochs=4, verbose=0)

    model = _probe(x, vocab)  # the same initial weights
    trunk, head = probe_parts(model)
    rows = FeatureRows(trunk, np.concatenate([x[:120], x[:120]]))  # duplicates are fine
    assert rows.count == len(set(x[:120]))
    head.compile(keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    head.fit(stream.map(rows), epochs=4, verbose=0)

    for a, b in zip(direct.get_layer("probabilities").get_weights(),
                    model.get_layer("probabilities").get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=2e-4)
    # the whole model (strings in) carries the trained softmax and classifies new texts
    acc = (model.predict(tf.constant(x[120:]), verbose=0).argmax(1) == y[120:]).mean()
    assert acc > 0.95
    batch = next(iter(stream.map(rows)))[0]
    np.testing.assert_allclose(np.asarray(head(batch)),
                               np.asarray(model(tf.constant(x[:20]))), atol=1e-5)


def test_a_probe_with_a_head_dropout_shares_it():
    x, _ = _data()
    vocab = train_vocabulary(tf.data.Dataset.from_tensor_slices(x).batch(64), 100)
    backbone = freeze(build_backbone((16,), TransformerConfig(
        name="transformer", latent_dim=16, num_layers=1, num_heads=2, intermediate_dim=16,
        sequence_length=16, vocabulary_size=len(vocab), causal=False)))
    model = text_classifier(backbone, tokenizer(vocab, 16), 3, dropout=0.2)
    trunk, head = probe_parts(model)
    assert [layer.name for layer in head.layers] == ["features", "head_dropout",
                                                     "probabilities"]
    assert head.get_layer("head_dropout") is model.get_layer("head_dropout")
    rows = FeatureRows(trunk, x[:50])
    np.testing.assert_allclose(np.asarray(head(rows(tf.constant(x[:8]))[0])),
                               np.asarray(model(tf.constant(x[:8]))), atol=1e-5)
