"""Pretext losses are pure functions; a few gradient steps must lower them."""

import keras
import numpy as np
import pytest

from pretrainer.config import (
    ConvConfig,
    DCGANConfig,
    LanguageModelConfig,
    MLPConfig,
    ReconstructionConfig,
    SimCLRConfig,
    TransformerConfig,
)
from pretrainer.models import build_backbone
from pretrainer.pretext import PRETEXTS, get_pretext
from pretrainer.pretext.adversarial import gan_losses
from pretrainer.pretext.contrastive import nt_xent, rotation_targets
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
    cfg = ConvConfig(filters=[8, 16], latent_dim=16, batch_norm=False)
    model = get_pretext("simclr").build(build_backbone((16, 16, 1), cfg),
                                        SimCLRConfig(learning_rate=0.003), cfg, 0)
    x = _images(128)
    loss = model.fit(x, np.zeros(len(x)), batch_size=32, epochs=5, verbose=0,
                     shuffle=False).history["loss"]  # 4 steps x 5 epochs
    assert loss[-1] < loss[0]


def test_quarter_turns_rotate_each_quarter_of_the_batch():
    from pretrainer.pretext.contrastive import quarter_turns, rotation_targets

    x = np.arange(8 * 3 * 3 * 2, dtype="float32").reshape(8, 3, 3, 2)
    turned = keras.ops.convert_to_numpy(quarter_turns(x))
    k = keras.ops.convert_to_numpy(rotation_targets(8))
    assert k.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    for i in range(8):
        np.testing.assert_array_equal(turned[i], np.rot90(x[i], k[i], axes=(0, 1)))


@pytest.mark.parametrize("share", [1.0, 0.25])
def test_simclr_with_rotation_learns_which_turn_was_applied(share):
    """RotNet as an auxiliary loss (pretext.rotation_weight): the rotation head's accuracy
    rises above chance on images whose turn is visible: a bright band at the top (which
    the views' horizontal flips keep at the top); also when only a quarter of each batch
    is turned (pretext.rotation_share)."""
    keras.utils.set_random_seed(0)
    cfg = ConvConfig(filters=[8, 16], latent_dim=16, batch_norm=False)
    pretext = SimCLRConfig(learning_rate=0.003, rotation_weight=1.0, rotation_share=share)
    model = get_pretext("simclr").build(build_backbone((16, 16, 1), cfg), pretext, cfg, 0)
    x = _images(512) * 0.5
    x[:, :4] += 0.5
    n = int(128 * share)  # the rotated rows of a 128-image batch
    before = model.predict(x[:128], batch_size=128, verbose=0)
    model.fit(x[:256 if share == 1 else 512], np.zeros(256 if share == 1 else 512),
              batch_size=64, epochs=8, verbose=0)
    after = model.predict(x[:128], batch_size=128, verbose=0)
    truth = np.repeat(np.arange(4), n // 4)
    assert after.shape == (128, 3, 64)
    assert not after[n:, 2].any()  # rows past the share carry no logits
    hit = [float((out[:n, 2, :4].argmax(1) == truth).mean()) for out in (before, after)]
    assert hit[1] > max(0.5, hit[0] + 0.2), hit


def test_rotation_runs_from_before_rotation_share_keep_their_layers():
    """A checkpoint restores a functional model's variables by its layers' order (an old
    rotation checkpoint failed to restore into the graph with the share's layers: "rotation/
    kernel (8, 8) into (8, 4)"), so with rotation_share 1, every run before the option
    existed, the model keeps the layers it had then."""
    cfg = ConvConfig(filters=[8], latent_dim=8, batch_norm=False)
    model = get_pretext("simclr").build(build_backbone((16, 16, 1), cfg),
                                        SimCLRConfig(rotation_weight=1.0), cfg, 0)
    assert [type(layer).__name__ for layer in model.layers] == [
        "InputLayer", "Sequential", "Sequential", "QuarterTurns", "Functional", "Dense",
        "Reshape", "Sequential", "ZeroPadding1D", "Reshape", "Reshape", "Reshape",
        "Concatenate"]


def test_rotation_loss_on_a_share_of_the_batch_is_its_mean_there():
    """With rotation_share 0.25 the per-example loss is NT-Xent plus the rotation loss of
    the first quarter scaled by 4 (so the batch mean holds the quarter's mean loss), and
    the output's rows past the quarter are zeros."""
    keras.utils.set_random_seed(0)
    cfg = ConvConfig(filters=[8], latent_dim=8, batch_norm=False)
    pretext = SimCLRConfig(rotation_weight=0.5, rotation_share=0.25, projection_dim=8)
    model = get_pretext("simclr").build(build_backbone((16, 16, 1), cfg), pretext, cfg, 0)
    y = model.predict(_images(32), batch_size=32, verbose=0)
    assert not y[8:, 2].any() and y[:8, 2, :4].any()
    ce = keras.losses.sparse_categorical_crossentropy(
        rotation_targets(8), y[:8, 2, :4], from_logits=True)
    want = np.array(nt_xent(y[:, 0], y[:, 1], pretext.temperature))
    want[:8] += 0.5 * 4 * np.asarray(ce)
    np.testing.assert_allclose(np.asarray(model.loss(None, y)), want, rtol=1e-5, atol=1e-6)


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
    cfg = ConvConfig(filters=[8, 16], latent_dim=8)
    backbone = build_backbone((16, 16, 1), cfg)
    gan = get_pretext("dcgan").build(backbone, DCGANConfig(learning_rate=2e-4), cfg, 0)
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


def test_tabular_denoising_autoencoder_twenty_steps_lower_the_loss():
    keras.utils.set_random_seed(0)
    cfg = MLPConfig(filters=[16], latent_dim=4)
    ae = get_pretext("denoising").build(
        build_backbone((6,), cfg),
        ReconstructionConfig(name="denoising", learning_rate=0.01, noise_stddev=0.1, mask_fraction=0.2),
        cfg, 0)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(128, 2))
    x = np.concatenate([z, z @ rng.normal(size=(2, 4))], axis=1).astype("float32")  # rank 2
    loss = ae.fit(x, x, batch_size=32, epochs=5, verbose=0, shuffle=False).history["loss"]
    assert loss[-1] < 0.8 * loss[0]


def test_mlp_without_layers_is_the_identity():
    cfg = MLPConfig(filters=[], latent_dim=0)
    backbone = build_backbone((3,), cfg)
    x = np.arange(6, dtype="float32").reshape(2, 3)
    np.testing.assert_array_equal(backbone.predict(x, verbose=0), x)


def _token_batches():
    rng = np.random.default_rng(0)
    # a tiny "language": each sequence counts up from a random start, then pads
    starts = rng.integers(5, 20, size=64)
    ids = np.zeros((64, 12), np.int32)
    for i, s in enumerate(starts):
        n = rng.integers(6, 12)
        ids[i, :n] = np.arange(s, s + n) % 40 + 5
    return ids


@pytest.mark.parametrize("name,causal", [("causal_lm", True), ("masked_lm", False)])
def test_language_models_twenty_steps_lower_the_loss(name, causal):
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    cfg = TransformerConfig(latent_dim=32, num_layers=1, num_heads=2, intermediate_dim=64,
                            sequence_length=12, vocabulary_size=50, causal=causal)
    pretext = get_pretext(name)
    model = pretext.build(build_backbone((12,), cfg), LanguageModelConfig(name=name, learning_rate=3e-3), cfg, 0)
    targets = pretext.targets_for(50, 12) if pretext.targets_for else pretext.targets
    ds = tf.data.Dataset.from_tensor_slices(_token_batches()).batch(16).map(targets).repeat()
    loss = model.fit(ds, steps_per_epoch=4, epochs=5, verbose=0).history["loss"]
    assert loss[-1] < loss[0]


def test_token_loss_ignores_padding_targets():
    from pretrainer.pretext.language import token_loss

    logits = np.zeros((1, 3, 5), "float32")
    logits[0, 0, 2] = 10.0
    y = np.array([[2, -1, -1]])
    assert float(token_loss(y, logits)[0]) < 1e-3  # the padded positions do not count


def test_reconstruction_plot_takes_a_one_image_batch(tmp_path):
    """A validation split of one image (a tiny folder) still gets its plot."""
    import tensorflow as tf

    from pretrainer.stages.pretrain import _save_reconstructions

    x = np.random.default_rng(0).random((1, 8, 8, 1)).astype("float32")
    identity = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Identity()])
    _save_reconstructions(identity, tf.data.Dataset.from_tensors((x, x)), tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 500


GLOBAL_NEGATIVES = '''
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import numpy as np
from pretrainer.pretext.contrastive import nt_xent, rotation_targets

rng = np.random.default_rng(0)
x1, x2 = (rng.normal(size=(8, 16)).astype("float32") for _ in range(2))
w0 = rng.normal(size=(16, 6)).astype("float32")
w = tf.Variable(w0)
with tf.GradientTape() as tape:
    one = tf.reduce_mean(nt_xent(x1 @ w, x2 @ w, 0.2))
g_one = tape.gradient(one, w)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
with strategy.scope():
    w2 = tf.Variable(w0)

@tf.function
def step(a, b):
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(nt_xent(a @ w2, b @ w2, 0.2)) / strategy.num_replicas_in_sync
    return loss, tape.gradient(loss, w2)

data = tf.data.Dataset.from_tensor_slices((x1, x2)).batch(8)
a, b = next(iter(strategy.experimental_distribute_dataset(data)))
loss, grad = strategy.run(step, args=(a, b))
print(abs(float(strategy.reduce("SUM", loss, axis=None)) - float(one)),
      float(tf.reduce_max(tf.abs(strategy.reduce("SUM", grad, axis=None) - g_one))))
'''


def test_nt_xent_on_two_replicas_equals_one_device_on_the_global_batch():
    """Each replica's examples take the whole global batch as negatives (gathered across
    replicas), so the loss and the gradients are those of one device; with the replica's
    own slice only, the loss differed by 0.84 and the gradient by 0.098 here."""
    from conftest import run_python

    out = run_python(GLOBAL_NEGATIVES)
    assert out.returncode == 0, out.stderr[-2000:]
    loss_diff, grad_diff = map(float, out.stdout.split()[-2:])
    assert loss_diff < 1e-5 and grad_diff < 1e-5
