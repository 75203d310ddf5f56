"""Backbone registry: `backbone.name` -> builder(input_shape, BackboneConfig) -> keras.Model."""

from __future__ import annotations

from typing import Callable

import keras

from pretrainer.config import BackboneConfig
from pretrainer.errors import ConfigError
from pretrainer.models.cnn import conv_encoder, mobilenet, resnet, seed_cnn
from pretrainer.models.mlp import mlp
from pretrainer.models.tfidf import TfidfLinear  # noqa: F401  (registered for loading)
from pretrainer.models.transformer import transformer

BACKBONES: dict[str, Callable[[tuple[int, ...], BackboneConfig], keras.Model]] = {
    "conv_ae": conv_encoder,
    "seed_cnn": seed_cnn,
    "resnet": resnet,
    "mobilenet": mobilenet,
    "mlp": mlp,
    "transformer": transformer,
}


def build_backbone(input_shape: tuple[int, ...], cfg: BackboneConfig) -> keras.Model:
    if cfg.name not in BACKBONES:
        raise ConfigError(f"Unknown backbone '{cfg.name}'. Choose from: {', '.join(BACKBONES)}")
    try:
        return BACKBONES[cfg.name](tuple(input_shape), cfg)
    except ValueError as exc:  # e.g. an input too small for the convolutions
        raise ConfigError(f"Backbone '{cfg.name}' cannot take input shape {tuple(input_shape)}: "
                          f"{str(exc).splitlines()[0]}") from exc


def freeze(backbone: keras.Model) -> keras.Model:
    """A linear probe's backbone: not trained, and computing its features while the head
    trains as it does when the model is served. Keras keeps a frozen layer's dropout
    active in training mode (and a `training=False` call inside a functional model is
    overridden by the outer call), so the dropout rates inside are set to 0; saved
    models keep their configured rate, which only training would use."""
    backbone.trainable = False
    # _flatten_layers: Keras' own walk over nested layers (keras-hub blocks hold their
    # Dropout layers as attributes, not in .layers)
    for layer in backbone._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Dropout):
            layer.rate = 0.0
    return backbone
