"""MLP backbone for tabular rows (standardised features in, embedding out)."""

from __future__ import annotations

import keras

from pretrainer.config import MLPConfig


def mlp(input_shape: tuple[int, ...], cfg: MLPConfig) -> keras.Model:
    """Dense(relu) layers of `filters` units, then a `latent_dim` embedding.

    With no hidden layers and latent_dim 0 the backbone is the identity, so a
    regression head on top is plain linear regression (the seed's house-price
    example).
    """
    inputs = keras.Input(shape=input_shape, name="features")
    x = inputs
    for i, units in enumerate(cfg.filters):
        x = keras.layers.Dense(units, activation="relu", name=f"dense{i}")(x)
    if cfg.latent_dim > 0:
        x = keras.layers.Dense(cfg.latent_dim, activation="relu", name="embedding")(x)
    else:
        x = keras.layers.Identity(name="embedding")(x)
    return keras.Model(inputs, x, name="mlp")
