"""Pretext losses are pure functions; a few gradient steps must lower them."""

import keras
import numpy as np
import pytest

from pretrainer.config import BackboneConfig, PretextConfig
from pretrainer.models import build_backbone
from pretrainer.pretext import PRETEXTS, get_pretext
from pretrainer.pretext.adversarial import gan_losses
from pretrainer.pretext.contrastive import nt_xent
from pretrainer.pretext.health import effective_rank


def _images(n=64, size=16, seed=0):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 1, size)
    a, b = rng.random((2, n, 1, 1))
    return ((a * ramp[None, :, None] + b * ramp[None, None, :]) / 2)[..., None].astype("float32")


def test_nt_xent_prefers_matching_views():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(32, 16)).astype("float32")
    same = float(np.mean(nt_xent(z, z + 0.01 * rng.normal(size=z.shape).astype("float32"))))
    shuffled = float(np.mean(nt_xent(z, z[rng.permutation(32)])))
    assert same < shuffled - 1.0


def test_simclr_twenty_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    cfg = BackboneConfig(filters=[8, 16], latent_dim=16, batch_norm=False)
    model = get_pretext("simclr").build(build_backbone((16, 16, 1), cfg),
                                        PretextConfig(learning_rate=0.003), cfg, 0)
    x = _images(128)
    loss = model.fit(x, np.zeros(len(x)), batch_size=32, epochs=5, verbose=0,
                     shuffle=False).history["loss"]  # 4 steps x 5 epochs
    assert loss[-1] < loss[0]


def test_gan_discriminator_loss_falls_when_it_trains():
    keras.utils.set_random_seed(0)
    real, fake = _images(64), np.random.default_rng(1).random((64, 16, 16, 1)).astype("float32")
    d = keras.Sequential([keras.Input((16, 16, 1)), keras.layers.Flatten(),
                          keras.layers.Dense(1)])
    opt = keras.optimizers.Adam(1e-3)
    import tensorflow as tf

    first = None
    for _ in range(20):
        with tf.GradientTape() as tape:
            dl, _ = gan_losses(d(real), d(fake))
            loss = tf.reduce_mean(dl)
        first = float(loss) if first is None else first
        grads = tape.gradient(loss, d.trainable_variables)
        opt.apply_gradients(zip(grads, d.trainable_variables, strict=True))
    assert float(loss) < first
    _, gl = gan_losses(d(real), d(fake))
    assert float(np.mean(gl)) > 0


def test_dcgan_trains_and_keeps_its_discriminator_trunk_as_the_backbone():
    keras.utils.set_random_seed(0)
    cfg = BackboneConfig(filters=[8, 16], latent_dim=8)
    backbone = build_backbone((16, 16, 1), cfg)
    gan = get_pretext("dcgan").build(backbone, PretextConfig(learning_rate=2e-4), cfg, 0)
    before = [w.copy() for w in backbone.get_weights()]
    logs = gan.fit(_images(64), epochs=2, batch_size=16, verbose=0).history
    assert {"d_loss", "g_loss", "d_accuracy", "loss"} <= set(logs)
    assert any(not np.allclose(a, b) for a, b in zip(before, backbone.get_weights(), strict=True))
    assert gan.generator(np.zeros((2, 8), "float32")).shape == (2, 16, 16, 1)


def test_effective_rank_detects_collapse():
    rng = np.random.default_rng(0)
    assert effective_rank(rng.normal(size=(256, 32))) > 20
    collapsed = np.outer(rng.normal(size=256), rng.normal(size=32))
    assert effective_rank(collapsed) < 1.5


def test_registry_lists_every_pretext():
    assert set(PRETEXTS) >= {"autoencoder", "denoising", "simclr", "dcgan"}
    with pytest.raises(Exception, match="Choose from: autoencoder"):
        get_pretext("byol")
