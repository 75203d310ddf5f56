"""DCGAN: the discriminator's trunk is the backbone (GAN as pretraining).

The backbone plus one logit judges real vs generated images; the generator maps
noise to images through the same transposed-conv stack as the autoencoder's
decoder. Stable defaults from the DCGAN paper: Adam 2e-4, beta_1 0.5.
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
from keras import ops

from pretrainer import files
from pretrainer.config import BackboneConfig, PretextConfig
from pretrainer.pretext.reconstruction import build_decoder


def gan_losses(real_logits, fake_logits, real_label: float = 0.9):
    """(discriminator loss, generator loss), non-saturating, per example.

    Real images are labelled 0.9, not 1 (one-sided label smoothing), which keeps
    the discriminator from winning outright on small data.
    """
    bce = keras.losses.BinaryCrossentropy(from_logits=True, reduction=None)
    real_logits = ops.cast(real_logits, "float32")
    fake_logits = ops.cast(fake_logits, "float32")
    d = bce(ops.full_like(real_logits, real_label), real_logits) + bce(
        ops.zeros_like(fake_logits), fake_logits)
    g = bce(ops.ones_like(fake_logits), fake_logits)
    return d, g


class DCGAN(keras.Model):
    """Alternating discriminator / generator updates in one train_step."""

    def __init__(self, discriminator, generator, noise_dim: int, seed: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.discriminator, self.generator, self.noise_dim = discriminator, generator, noise_dim
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, x, training=False):
        return self.discriminator(x, training=training)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        super().compile(optimizer=d_optimizer, **kwargs)
        self.g_optimizer = g_optimizer

    def build_optimizers(self):
        """Create optimizer slots before a checkpoint restore (each for its own half)."""
        self.optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def _noise(self, n):
        return keras.random.normal((n, self.noise_dim), seed=self.seed_generator)

    def _logs(self, d, g, real_logits, fake_logits):
        real_acc = ops.mean(ops.cast(real_logits > 0, "float32"))
        fake_acc = ops.mean(ops.cast(fake_logits < 0, "float32"))
        return {"loss": ops.mean(d) + ops.mean(g), "d_loss": ops.mean(d),
                "g_loss": ops.mean(g), "d_accuracy": (real_acc + fake_acc) / 2}

    @staticmethod
    def _real(data):
        return data[0] if isinstance(data, tuple) else data

    def train_step(self, data):
        import tensorflow as tf  # a two-optimizer step needs the backend's tape

        real = self._real(data)
        n = ops.shape(real)[0]
        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(n), training=True)
            real_logits = self.discriminator(real, training=True)
            fake_logits = self.discriminator(fake, training=True)
            d, _ = gan_losses(real_logits, fake_logits)
            d_mean = ops.mean(d)
        grads = tape.gradient(d_mean, self.discriminator.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.discriminator.trainable_variables,
                                           strict=True))
        with tf.GradientTape() as tape:
            fake = self.generator(self._noise(n), training=True)
            fake_logits = self.discriminator(fake, training=True)
            _, g = gan_losses(real_logits, fake_logits)
            g_mean = ops.mean(g)
        grads = tape.gradient(g_mean, self.generator.trainable_variables)
        self.g_optimizer.apply_gradients(zip(grads, self.generator.trainable_variables,
                                             strict=True))
        return self._logs(d, g, real_logits, fake_logits)

    def test_step(self, data):
        real = self._real(data)
        n = ops.shape(real)[0]
        real_logits = self.discriminator(real, training=False)
        # fixed noise (an integer seed is a stateless draw): validation neither moves the
        # training noise's RNG state (exact resume) nor varies from epoch to epoch
        noise = keras.random.normal((n, self.noise_dim), seed=12345)
        fake_logits = self.discriminator(self.generator(noise, training=False),
                                         training=False)
        d, g = gan_losses(real_logits, fake_logits)
        return self._logs(d, g, real_logits, fake_logits)


def build_dcgan(backbone: keras.Model, cfg: PretextConfig, backbone_cfg: BackboneConfig,
                seed: int, **compile_kwargs) -> keras.Model:
    shape = tuple(backbone.input_shape[1:])
    inputs = keras.Input(shape=shape, name="image")
    x = keras.layers.GaussianNoise(0.1, seed=seed)(inputs)  # instance noise: steadier D
    logit = keras.layers.Dense(1, dtype="float32", name="real_or_fake")(backbone(x))
    discriminator = keras.Model(inputs, logit, name="discriminator")
    generator = build_decoder(shape, backbone_cfg, batch_norm=True)
    model = DCGAN(discriminator, generator, backbone_cfg.latent_dim, seed=seed, name="dcgan")
    model.compile(d_optimizer=keras.optimizers.Adam(cfg.learning_rate, beta_1=0.5),
                  g_optimizer=keras.optimizers.Adam(cfg.learning_rate, beta_1=0.5),
                  **compile_kwargs)
    return model


class GeneratedGrid(keras.callbacks.Callback):
    """Save a grid of images generated from fixed noise after every epoch; alarm when
    the discriminator wins outright (the generator then learns nothing)."""

    def __init__(self, folder: Path, n: int = 16, seed: int = 0):
        super().__init__()
        self.folder, self.n, self.seed = Path(folder), n, seed

    def on_epoch_end(self, epoch, logs=None):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from pretrainer.console import warn

        noise = np.random.default_rng(self.seed).normal(
            size=(self.n, self.model.noise_dim)).astype("float32")
        imgs = np.asarray(self.model.generator(noise, training=False), np.float32)
        cols = int(np.ceil(np.sqrt(self.n)))
        fig, axes = plt.subplots(cols, cols, figsize=(cols * 1.1, cols * 1.1), squeeze=False)
        for ax, img in zip(axes.ravel(), list(imgs) + [None] * (cols * cols - self.n),
                           strict=True):
            ax.axis("off")
            if img is not None:
                ax.imshow(img.squeeze(), cmap="gray" if img.shape[-1] == 1 else None,
                          vmin=0, vmax=1)
        files.atomic_write_with(self.folder / f"generated-epoch{epoch + 1:03d}.png",
                               lambda p: fig.savefig(p, format="png", dpi=80), suffix=".png")
        plt.close(fig)
        acc = (logs or {}).get("d_accuracy")
        if acc is not None and acc > 0.99:
            warn(f"the discriminator wins outright (accuracy {acc:.3f}): the generator gets no "
                 f"signal; lower pretext.learning_rate or shrink the backbone")
