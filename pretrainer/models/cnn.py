"""Convolutional backbones: image (H, W, C) in [0, 1] -> embedding vector."""

from __future__ import annotations

import keras

from pretrainer.config import ApplicationConfig, ConvConfig


def conv_encoder(input_shape: tuple[int, ...], cfg: ConvConfig) -> keras.Model:
    """Strided convolutions (no pooling) -> Flatten -> Dense embedding.

    Each stage halves the resolution with a stride-2 conv, then refines with a
    stride-1 conv; the flattened map keeps spatial layout, which measured better
    than global pooling for small images when labels are few.
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate(cfg.filters):
        for stride in (2, 1):
            x = keras.layers.Conv2D(filters, cfg.kernel_size, strides=stride, padding="same",
                                    use_bias=not cfg.batch_norm, name=f"conv{i}_s{stride}")(x)
            if cfg.batch_norm:
                # momentum 0.9: with a few hundred steps, 0.99's moving statistics
                # still lag and the eval-mode network is measurably worse.
                x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{i}_s{stride}")(x)
            x = keras.layers.Activation("relu", name=f"relu{i}_s{stride}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(cfg.latent_dim, activation="relu", name="embedding")(x)
    return keras.Model(inputs, outputs, name="conv_ae")


def seed_cnn(input_shape: tuple[int, ...], cfg: ConvConfig) -> keras.Model:
    """The seed recipe's CNN without its last Dense: Conv-Pool-Conv-Pool-Conv-Flatten-Dense.

    With the default filters [32, 64, 64] and latent_dim 64 this is exactly the
    seed's trunk; its classifier head is Dense(num_classes, softmax).
    """
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    for i, filters in enumerate(cfg.filters):
        x = keras.layers.Conv2D(filters, cfg.kernel_size, activation="relu",
                                name=f"conv{i}")(x)
        if i < len(cfg.filters) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(cfg.latent_dim, activation="relu", name="embedding")(x)
    return keras.Model(inputs, outputs, name="seed_cnn")


def _application(builder_name: str, input_shape: tuple[int, ...], cfg: ApplicationConfig,
                 name: str) -> keras.Model:
    """A keras.applications trunk (global average pooled) -> Dense embedding.

    Inputs are our [0, 1] images; the applications expect [-1, 1], so the model
    rescales. ImageNet weights need three channels: grayscale is repeated.
    """
    from pretrainer.errors import ConfigError

    h, w, c = input_shape
    if min(h, w) < 32:
        raise ConfigError(f"backbone '{name}' needs images of at least 32x32; the data is "
                          f"{h}x{w}. Set data.image_size or use conv_ae / seed_cnn")
    weights = None if cfg.weights in (None, "", "none") else cfg.weights
    inputs = keras.Input(shape=input_shape, name="image")
    x = keras.layers.Rescaling(2.0, offset=-1.0, name="to_minus1_1")(inputs)
    if weights is not None and c == 1:
        x = keras.layers.Concatenate(name="gray_to_rgb")([x, x, x])
    app_shape = (h, w, 3 if weights is not None else c)
    builder = getattr(keras.applications, builder_name)
    try:
        trunk = builder(include_top=False, weights=weights, input_shape=app_shape,
                        pooling="avg", **({"alpha": cfg.width} if "MobileNet" in builder_name
                                          else {}))
    except Exception as exc:  # offline download, unsupported width, ...
        first = str(exc).strip().splitlines()[0][:200]
        raise ConfigError(f"Could not build {builder_name} (weights={weights}): {first}. "
                          f"Offline and not cached in ~/.keras/models: use backbone.weights=none"
                          f" or finetune.init=pretrained / scratch") from exc
    x = trunk(x)
    outputs = keras.layers.Dense(cfg.latent_dim, activation="relu", name="embedding")(x)
    return keras.Model(inputs, outputs, name=name)


def resnet(input_shape: tuple[int, ...], cfg: ApplicationConfig) -> keras.Model:
    """ResNet50V2 from keras.applications."""
    return _application("ResNet50V2", input_shape, cfg, "resnet")


def mobilenet(input_shape: tuple[int, ...], cfg: ApplicationConfig) -> keras.Model:
    """MobileNetV2 from keras.applications (backbone.width = its alpha)."""
    return _application("MobileNetV2", input_shape, cfg, "mobilenet")
