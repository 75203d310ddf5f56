import keras
import numpy as np
import pytest

from pretrainer.config import (
    ApplicationConfig,
    BackboneConfig,
    ConvConfig,
    ReconstructionConfig,
    TransformerConfig,
)
from pretrainer.errors import ConfigError
from pretrainer.models import build_backbone
from pretrainer.models.heads import classifier
from pretrainer.pretext import get_pretext
from pretrainer.pretext.reconstruction import psnr, reconstruction_loss


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3), (8, 8, 1), (30, 22, 3)])
def test_conv_autoencoder_reconstructs_any_input_shape(shape):
    cfg = ConvConfig(name="conv_ae", filters=[8, 16], latent_dim=12)
    backbone = build_backbone(shape, cfg)
    assert backbone.output_shape == (None, 12)
    ae = get_pretext("autoencoder").build(backbone, ReconstructionConfig(), cfg, 0)
    x = np.random.default_rng(0).random((2, *shape)).astype("float32")
    assert ae.predict(x, verbose=0).shape == (2, *shape)


def test_seed_cnn_is_the_seed_architecture():
    cfg = ConvConfig(name="seed_cnn", filters=[32, 64, 64], latent_dim=64, batch_norm=False)
    model = classifier(build_backbone((32, 32, 3), cfg), 10)
    # the seed's CNN on CIFAR-10 has 122,570 parameters
    assert model.count_params() == 122_570


def test_unknown_backbone_lists_valid_names():
    with pytest.raises(ConfigError, match="conv_ae, seed_cnn"):
        build_backbone((28, 28, 1), BackboneConfig(name="cnnn"))


def test_too_small_input_is_a_clear_error():
    with pytest.raises(ConfigError, match="cannot take input shape"):
        build_backbone((8, 8, 1), ConvConfig(name="seed_cnn", filters=[32, 64, 64]))


def test_keras_round_trip_gives_same_predictions(tmp_path):
    cfg = ConvConfig(filters=[8, 16], latent_dim=16)
    model = classifier(build_backbone((28, 28, 1), cfg), 10, hidden=[8], dropout=0.2)
    x = np.random.default_rng(1).random((4, 28, 28, 1)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(model.predict(x, verbose=0), again.predict(x, verbose=0),
                               atol=1e-6)


def test_reconstruction_loss_and_psnr_are_consistent():
    x = np.zeros((2, 4, 4, 1), "float32")
    x_hat = np.full((2, 4, 4, 1), 0.1, "float32")
    np.testing.assert_allclose(np.asarray(reconstruction_loss(x, x_hat)), [0.01, 0.01], rtol=1e-5)
    np.testing.assert_allclose(np.asarray(psnr(x, x_hat)), [20.0, 20.0], rtol=1e-4)


@pytest.mark.parametrize("pretext_cfg", [ReconstructionConfig(),
                                         ReconstructionConfig(noise_stddev=0.2, mask_fraction=0.3)])
def test_twenty_gradient_steps_lower_the_reconstruction_loss(pretext_cfg):
    keras.utils.set_random_seed(0)
    cfg = ConvConfig(filters=[8, 16], latent_dim=16)
    pretext_cfg.learning_rate = 0.01
    ae = get_pretext("autoencoder").build(build_backbone((16, 16, 1), cfg), pretext_cfg, cfg, 0)
    rng = np.random.default_rng(0)
    # structured images (random mixtures of two ramps), which an autoencoder can learn
    ramp = np.linspace(0, 1, 16)
    a, b = rng.random((2, 64, 1, 1))
    x = (a * ramp[None, :, None] + b * ramp[None, None, :]) / 2
    x = x[..., None].astype("float32")
    # 4 steps x 5 epochs = 20 gradient steps; compare training-mode losses (BatchNorm's
    # moving statistics need more steps than that before eval mode is meaningful)
    loss = ae.fit(x, x, batch_size=16, epochs=5, verbose=0, shuffle=False).history["loss"]
    assert loss[-1] < 0.8 * loss[0]


def test_wordpiece_vocabulary_is_learned_fast_and_tokenizes_its_texts_without_unk():
    import tensorflow as tf

    from pretrainer.config import DataConfig
    from pretrainer.data import sources
    from pretrainer.data.modalities.text import RESERVED, UNK, tokenizer, train_vocabulary

    texts = [str(t) for t in sources.load(DataConfig(source="bundled_text",
                                                     dataset="fortunes_small")).x_pool]
    texts += ["café naïve [bracket] Ångström x²"] * 5  # latin-1 letters, brackets
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(64)
    vocab = train_vocabulary(ds, 1000)
    assert vocab[:len(RESERVED)] == RESERVED and len(vocab) == 1000
    assert len(set(vocab)) == len(vocab) and "" not in vocab
    assert {"the", "[", "å", "é"} <= set(vocab)
    # a rerun learns (nearly) the same: the Rust trainer breaks ties between merges of
    # equal count in hash order, so tokens at the size cut may differ (resumes reuse vocab.txt)
    again = train_vocabulary(ds, 1000)
    assert again[:len(RESERVED)] == RESERVED and len(set(again) ^ set(vocab)) <= 20
    ids = np.asarray(tokenizer(vocab, 64)(tf.constant(texts)))
    assert (ids != UNK).all() and (ids[:, 0] != 0).all()


def test_wide_and_deep_text_classifier_learns_ngrams_and_saves_as_plain_keras(tmp_path):
    """finetune.wide=ngrams: the n-gram TF-IDF part learns a rule the (random) transformer
    cannot see in a few steps, and the saved model loads and predicts the same with Keras."""
    import tensorflow as tf

    from pretrainer.data.modalities.text import tokenizer, train_vocabulary
    from pretrainer.models.heads import ngram_features, text_classifier

    rng = np.random.default_rng(0)
    filler = ["the", "a", "cat", "sat", "on", "mat", "dog", "ran", "far", "away"]
    texts, labels = [], []
    for i in range(200):  # class = which rare marker word appears, among filler words
        words = list(rng.choice(filler, 8))
        words.insert(int(rng.integers(0, 8)), ["zebra", "quokka"][i % 2])
        texts.append(" ".join(words))
        labels.append(i % 2)
    x, y = np.array(texts), np.array(labels)
    vocab = train_vocabulary(tf.data.Dataset.from_tensor_slices(x).batch(64), 100)
    tok = tokenizer(vocab, 16)
    backbone = build_backbone((16,), TransformerConfig(name="transformer", latent_dim=16,
                                                    num_layers=1, num_heads=2,
                                                    intermediate_dim=16, sequence_length=16,
                                                    vocabulary_size=len(vocab), causal=False))
    backbone.trainable = False  # a linear model over the features: the wide part must learn
    wide = ngram_features(x[:100], lambda t: np.asarray(backbone(tok(tf.constant(t)))).mean(1),
                          max_tokens=1000)
    model = text_classifier(backbone, tok, 2, wide=wide, l2=1e-4)
    model.compile(keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy")
    model.fit(tf.data.Dataset.from_tensor_slices((x[:100], y[:100])).batch(20), epochs=15,
              verbose=0)
    acc = (model.predict(tf.constant(x[100:]), verbose=0).argmax(1) == y[100:]).mean()
    assert acc > 0.95
    path = tmp_path / "wide.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(loaded.predict(tf.constant(x[100:]), verbose=0),
                               model.predict(tf.constant(x[100:]), verbose=0), atol=1e-5)


@pytest.mark.parametrize("name", ["mobilenet", "resnet"])
def test_keras_applications_backbones_autoencode_save_and_classify_32px_images(tmp_path, name):
    """MobileNetV2 / ResNet50V2 from keras.applications on the smallest size they take:
    an autoencoder around it, a .keras round trip, a classifier (the stages treat every
    backbone alike; these two are slow to trace, so they are checked here, not end to end)."""
    cfg = ApplicationConfig(name=name, latent_dim=16, filters=[8, 16])
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    backbone = build_backbone((32, 32, 3), cfg)
    if name == "mobilenet":
        ae = get_pretext("autoencoder").build(backbone, ReconstructionConfig(), cfg, 0)
        assert ae(x).shape == x.shape  # the decoder mirrors to the input size
        backbone.save(tmp_path / "b.keras")
        backbone = keras.saving.load_model(tmp_path / "b.keras")
    model = classifier(backbone, 3, hidden=[], dropout=0.0)
    p = model.predict(x, verbose=0)
    assert p.shape == (4, 3) and np.allclose(p.sum(-1), 1, atol=1e-5)
    with pytest.raises(ConfigError, match="at least 32x32"):
        build_backbone((28, 28, 1), cfg)


def test_fitted_length_covers_99_percent_of_the_pool_in_multiples_of_8():
    import tensorflow as tf

    from pretrainer.data.modalities.text import RESERVED, fitted_length

    vocab = list(RESERVED) + ["a", "b"]
    # 990 texts of 5 words, 10 of 30 words: the 99th percentile is 5.25 tokens -> 8
    texts = ["a b a b a"] * 990 + [" ".join(["a"] * 30)] * 10
    ds = tf.data.Dataset.from_tensor_slices(texts).batch(128)
    assert fitted_length(vocab, ds, 64) == 8
    longer = ["a " * 20] * 500 + ["b " * 45] * 500  # p99 = 45 tokens -> 48
    assert fitted_length(vocab, tf.data.Dataset.from_tensor_slices(longer).batch(64), 64) == 48
    assert fitted_length(vocab, tf.data.Dataset.from_tensor_slices(longer).batch(64), 32) == 32


def test_a_linear_probe_trains_its_head_on_the_features_it_serves(tmp_path):
    """models.freeze: the transformer's dropout stays off in training mode (before, a frozen
    backbone still dropped out while the head trained); the saved model still loads."""
    import tensorflow as tf

    from pretrainer.data.modalities.text import tokenizer
    from pretrainer.models import freeze
    from pretrainer.models.heads import text_classifier

    vocab = ["[PAD]", "[UNK]", "[MASK]", "[BOS]", "[EOS]", "a", "b", "c", "d"]
    texts = tf.constant(["a b c d a b", "d c b", "a a a c"])

    def backbone():
        return build_backbone((8,), TransformerConfig(
            name="transformer", latent_dim=16, num_layers=2, num_heads=2, intermediate_dim=16,
            sequence_length=8, vocabulary_size=len(vocab), causal=False))

    full = text_classifier(backbone(), tokenizer(vocab, 8), 3)  # finetuned: dropout trains
    assert not np.allclose(np.asarray(full(texts, training=True)),
                           np.asarray(full(texts, training=False)), atol=1e-6)
    probe = text_classifier(freeze(backbone()), tokenizer(vocab, 8), 3)
    assert not probe.get_layer("transformer").trainable
    np.testing.assert_allclose(np.asarray(probe(texts, training=True)),
                               np.asarray(probe(texts, training=False)), atol=1e-6)
    probe.save(tmp_path / "probe.keras")
    loaded = keras.saving.load_model(tmp_path / "probe.keras")
    np.testing.assert_allclose(np.asarray(loaded(texts)), np.asarray(probe(texts)), atol=1e-6)
