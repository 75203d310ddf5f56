"""Task heads attached to a backbone's embedding."""

from __future__ import annotations

import keras


def classifier(backbone: keras.Model, num_classes: int, *, hidden: list[int] | None = None,
               dropout: float = 0.0) -> keras.Model:
    """backbone -> [Dense relu]* -> [Dropout] -> Dense(num_classes, softmax).

    The output layer computes in float32 so mixed precision keeps stable probabilities.
    """
    inputs = keras.Input(shape=backbone.input_shape[1:], name="image")
    x = backbone(inputs)
    for i, units in enumerate(hidden or []):
        x = keras.layers.Dense(units, activation="relu", name=f"head_dense{i}")(x)
    if dropout > 0:
        x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", dtype="float32",
                                 name="probabilities")(x)
    return keras.Model(inputs, outputs, name="classifier")
