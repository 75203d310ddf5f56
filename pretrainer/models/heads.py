"""Task heads attached to a backbone's embedding."""

from __future__ import annotations

import keras


def _trunk(backbone: keras.Model, input_name: str, hidden: list[int] | None, dropout: float,
           normalizer, feature_norm: str = "none"):
    """Input -> [normalizer] -> backbone -> [feature norm] -> [Dense relu]* -> [Dropout]:
    what every head shares.

    feature_norm="batch" standardises each embedding feature (BatchNormalization):
    pretrained embeddings can be far from unit scale (the autoencoder's had norms
    near 100 against 0.2 for a fresh backbone), which makes a new head's softmax
    saturate on its first step.
    """
    inputs = keras.Input(shape=backbone.input_shape[1:], name=input_name)
    x = backbone(normalizer(inputs) if normalizer is not None else inputs)
    if feature_norm == "batch":
        # momentum 0.9: a few hundred finetuning steps must be enough for the moving statistics
        x = keras.layers.BatchNormalization(momentum=0.9, name="feature_norm")(x)
    elif feature_norm == "layer":
        x = keras.layers.LayerNormalization(name="feature_norm")(x)
    for i, units in enumerate(hidden or []):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return inputs, x


def classifier(backbone: keras.Model, num_classes: int, *, hidden: list[int] | None = None,
               dropout: float = 0.0, normalizer=None, feature_norm: str = "none"
               ) -> keras.Model:
    """backbone -> [Dense relu]* -> [Dropout] -> Dense(num_classes, softmax).

    The output layer computes in float32 so mixed precision keeps stable probabilities.
    """
    inputs, x = _trunk(backbone, "image", hidden, dropout, normalizer, feature_norm)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classifier")


def regressor(backbone: keras.Model, *, hidden: list[int] | None = None, dropout: float = 0.0,
              normalizer=None) -> keras.Model:
    """[normalizer] -> backbone -> [Dense relu]* -> Dense(1), linear, float32."""
    inputs, x = _trunk(backbone, "features", hidden, dropout, normalizer)
    outputs = keras.layers.Dense(1, dtype="float32", name="prediction")(x)
    return keras.Model(inputs, outputs, name="regressor")


def normalizer(stats) -> keras.layers.Layer:
    """Fixed standardisation (a store's `FeatureStats`: statistics of the pretraining pool),
    saved with the model so an export takes the raw encoded features."""
    import numpy as np

    std = np.asarray(stats.std, np.float32)
    return keras.layers.Normalization(mean=np.asarray(stats.mean, np.float32),

                                      variance=std ** 2, name="standardize")


def text_classifier(backbone: keras.Model, tokenizer, num_classes: int, *,
                    dropout: float = 0.0, wide=None, l2: float = 0.0) -> keras.Model:
    """Raw strings -> WordPiece tokenizer -> transformer -> masked mean pool -> softmax.

    The tokenizer is part of the model, so the saved model and its SavedModel export
    take text, not token ids. `wide` (from `ngram_features`) adds a Wide & Deep linear
    part: the n-gram vectors and the standardised pooled embedding feed one softmax.
    """
    inputs = keras.Input(shape=(), dtype="string", name="text")
    x = _mean_pool(inputs, backbone, tokenizer)
    if wide is not None:
        x = wide["standardize"](x)
        x = keras.layers.Rescaling(wide["deep_scale"], name="deep_scale")(x)
        parts = [x] + [keras.layers.UnitNormalization(name=f"{v.name}_l2")(v(inputs))
                       for v in wide["vectorizers"]]
        x = keras.layers.Concatenate(name="wide_and_deep")(parts)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 kernel_regularizer=keras.regularizers.L2(l2) if l2 else None,
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name="text_classifier")


def _mean_pool(inputs, backbone: keras.Model, tokenizer):
    """strings -> tokens -> transformer -> mean over the non-[PAD] tokens."""
    from pretrainer.models.transformer import padding_mask

    ids = tokenizer(inputs)
    return keras.layers.GlobalAveragePooling1D(name="mean_pool")(backbone(ids),
                                                                mask=padding_mask(ids))


def text_embedding(backbone: keras.Model, tokenizer) -> keras.Model:
    """Raw strings -> the pooled embedding a text_classifier's head reads."""
    inputs = keras.Input(shape=(), dtype="string", name="text")
    return keras.Model(inputs, _mean_pool(inputs, backbone, tokenizer), name="text_embedding")


DEEP_NORM = 0.3  # the pooled embedding's expected norm beside the two unit n-gram vectors


def ngram_features(texts, embed, max_tokens: int) -> dict:
    """The wide part of a Wide & Deep text classifier, fitted on the labeled texts:
    TF-IDF of word 1-2-grams and of character 2-5-grams (Keras TextVectorization, saved
    in the model, so exports take raw strings), and a standardisation of the pooled
    embedding (`embed(texts)`) scaled to norm DEEP_NORM. Close to the classical
    baseline's features (raw counts, not sublinear; character n-grams across word
    boundaries; the max_tokens most frequent of each kind), so the study's scratch arm,
    the same head over a random transformer, shows what the pretrained embedding adds
    (docs/few-labels.md)."""
    import numpy as np
    import tensorflow as tf

    data = tf.data.Dataset.from_tensor_slices(texts).batch(256)
    words = _tfidf(data, len(texts), max_tokens, name="word_ngrams", ngrams=2)
    chars = _tfidf(data, len(texts), max_tokens, name="char_ngrams", standardize="lower",
                   split="character", ngrams=(2, 3, 4, 5))
    feats = np.asarray(embed(texts), np.float32)
    standardize = keras.layers.Normalization(name="deep_standardize")
    standardize.adapt(feats)
    return {"vectorizers": [words, chars], "standardize": standardize,
            "deep_scale": DEEP_NORM / float(np.sqrt(feats.shape[-1]))}


def _tfidf(data, n: int, max_tokens: int, *, name: str, **kw):
    """A TextVectorization giving count x idf, idf as scikit-learn's TfidfVectorizer
    computes it (log((1 + n) / (1 + df)) + 1) and 0 for out-of-vocabulary tokens.
    Keras' own tf_idf mode counts unseen n-grams in its [UNK] slot: on new texts that
    slot outweighs the rest once rows are L2-normalised (measured: 18 % vs 29 % val
    accuracy with word n-grams on 39 fortune categories)."""
    import numpy as np

    counter = keras.layers.TextVectorization(max_tokens=max_tokens, output_mode="multi_hot",
                                             **kw)
    counter.adapt(data)
    df = sum(np.asarray(counter(batch)).sum(0) for batch in data)
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    idf[0] = 0.0  # the [UNK] slot
    return keras.layers.TextVectorization(output_mode="tf_idf", vocabulary=counter.get_vocabulary(),
                                          idf_weights=idf.astype(np.float32), name=name, **kw)
