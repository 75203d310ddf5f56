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


def normalizer(stats: dict) -> keras.layers.Layer:
    """Fixed standardisation (statistics of the pretraining pool), saved with the model so an
    export takes the raw encoded features."""
    import numpy as np

    std = np.asarray(stats["std"], np.float32)
    return keras.layers.Normalization(mean=np.asarray(stats["mean"], np.float32),
                                      variance=std ** 2, name="standardize")


def text_classifier(backbone: keras.Model, tokenizer, num_classes: int, *,
                    dropout: float = 0.0) -> keras.Model:
    """Raw strings -> WordPiece tokenizer -> transformer -> masked mean pool -> softmax.

    The tokenizer is part of the model, so the saved model and its SavedModel export
    take text, not token ids.
    """
    from pretrainer.models.transformer import padding_mask

    inputs = keras.Input(shape=(), dtype="string", name="text")
    ids = tokenizer(inputs)
    h = backbone(ids)
    x = keras.layers.GlobalAveragePooling1D(name="mean_pool")(h, mask=padding_mask(ids))
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name="text_classifier")
