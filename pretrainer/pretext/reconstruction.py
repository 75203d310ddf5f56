"""Reconstruction pretext: (denoising / masked) autoencoder on the backbone's embedding."""

from __future__ import annotations

import math

import keras
from keras import ops

from pretrainer.config import BackboneConfig, MLPConfig, ReconstructionConfig


@keras.saving.register_keras_serializable(package="pretrainer")
class RandomPixelMask(keras.layers.Layer):
    """Zero a random `rate` of pixels (all channels) during training; identity otherwise."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"Expected rate in [0, 1). Received: rate={rate}")
        self.rate = rate
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        if not training or self.rate == 0:
            return x
        shape = ops.shape(x)
        # images: one draw per pixel (all channels); rows: one draw per feature
        mask_shape = (shape[0], shape[1], shape[2], 1) if len(x.shape) == 4 else shape
        keep = keras.random.uniform(mask_shape, seed=self.seed_generator) >= self.rate
        return x * ops.cast(keep, x.dtype)

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def reconstruction_loss(x, x_hat):
    """Mean squared error per example: a pure function of target and reconstruction."""
    return ops.mean(ops.square(ops.cast(x, "float32") - ops.cast(x_hat, "float32")),
                    axis=tuple(range(1, len(x.shape))))


def psnr(x, x_hat):
    """Peak signal-to-noise ratio in dB for images in [0, 1] (higher is better)."""
    mse = reconstruction_loss(x, x_hat)
    return 10.0 * ops.log(1.0 / ops.maximum(mse, 1e-10)) / math.log(10.0)


def build_row_decoder(n_features: int, cfg: MLPConfig, embed_dim: int) -> keras.Model:
    """Embedding -> row: the mlp's hidden layers mirrored, then a linear output."""
    inputs = keras.Input(shape=(embed_dim,), name="embedding")
    x = inputs
    for i, units in enumerate(reversed(cfg.filters)):
        x = keras.layers.Dense(units, activation="relu", name=f"dec_dense{i}")(x)
    x = keras.layers.Dense(n_features, dtype="float32", name="dec_out")(x)
    return keras.Model(inputs, x, name="decoder")


def build_decoder(input_shape: tuple[int, ...], cfg: BackboneConfig,
                  batch_norm: bool = False) -> keras.Model:
    """Embedding -> image: Dense -> Reshape -> transposed convs (mirrored filters) -> crop.
    `cfg`: a ConvConfig or ApplicationConfig (both have filters and kernel_size)."""
    h, w, c = input_shape
    n_up = len(cfg.filters)
    sh, sw = math.ceil(h / 2**n_up), math.ceil(w / 2**n_up)
    inputs = keras.Input(shape=(cfg.latent_dim,), name="embedding")
    x = keras.layers.Dense(sh * sw * cfg.filters[-1], activation="relu", name="dec_dense")(inputs)
    x = keras.layers.Reshape((sh, sw, cfg.filters[-1]), name="dec_reshape")(x)
    for i, filters in enumerate(reversed(cfg.filters)):
        x = keras.layers.Conv2DTranspose(filters, cfg.kernel_size, strides=2, padding="same",
                                         activation=None if batch_norm else "relu",
                                         name=f"dec_up{i}")(x)
        if batch_norm:  # a DCGAN generator: BN before the ReLU
            x = keras.layers.BatchNormalization(name=f"dec_bn{i}")(x)
            x = keras.layers.Activation("relu", name=f"dec_relu{i}")(x)
    x = keras.layers.Conv2D(c, 3, padding="same", activation="sigmoid", dtype="float32",
                            name="dec_out")(x)
    dh, dw = sh * 2**n_up - h, sw * 2**n_up - w
    if dh or dw:
        x = keras.layers.Cropping2D(((dh // 2, dh - dh // 2), (dw // 2, dw - dw // 2)),
                                    name="dec_crop")(x)
    return keras.Model(inputs, x, name="decoder")


def build_autoencoder(backbone: keras.Model, cfg: ReconstructionConfig,
                      backbone_cfg: BackboneConfig, seed: int, **compile_kwargs) -> keras.Model:
    """corrupt(x) -> backbone -> decoder -> x_hat, trained to reproduce the clean x."""
    input_shape = tuple(backbone.input_shape[1:])
    inputs = keras.Input(shape=input_shape, name="image")
    x = inputs
    if cfg.noise_stddev > 0:
        x = keras.layers.GaussianNoise(cfg.noise_stddev, seed=seed, name="noise")(x)
    if cfg.mask_fraction > 0:
        x = RandomPixelMask(cfg.mask_fraction, seed=seed, name="mask")(x)
    if len(input_shape) == 1:  # standardised table rows: no [0, 1] range, so no PSNR
        decoder = build_row_decoder(input_shape[0], backbone_cfg, backbone.output_shape[-1])
        metrics = []
    else:
        decoder = build_decoder(input_shape, backbone_cfg)
        metrics = [psnr]
    x_hat = decoder(backbone(x))
    model = keras.Model(inputs, x_hat, name="autoencoder")
    model.compile(optimizer=keras.optimizers.Adam(cfg.learning_rate),
                  loss=reconstruction_loss, metrics=metrics, **compile_kwargs)
    return model
