"""FixMatch-style consistency training (pretrainer.semi), on tiny in-memory data."""

import keras
import numpy as np
import tensorflow as tf

from pretrainer.semi import Consistency, strong_augment, zip_views


def _classifier():
    keras.utils.set_random_seed(0)
    return keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                             keras.layers.Dense(2, activation="softmax")])


def _batches():
    rng = np.random.default_rng(0)
    x = rng.random((64, 8, 8, 1)).astype("float32")
    y = (x[:, :4].mean((1, 2, 3)) > x[:, 4:].mean((1, 2, 3))).astype("int64")
    labeled = tf.data.Dataset.from_tensor_slices((x[:16], y[:16])).batch(8).repeat()
    u = tf.data.Dataset.from_tensor_slices((x[16:], x[16:])).batch(16).repeat()
    return zip_views(labeled, u), x, y


def test_strong_views_stay_images_and_depend_only_on_the_seed():
    x = tf.random.stateless_uniform([4, 8, 8, 1], [1, 2])
    a = strong_augment(x, (8, 8, 1), seed=tf.constant([3, 4], tf.int64))
    b = strong_augment(x, (8, 8, 1), seed=tf.constant([3, 4], tf.int64))
    c = strong_augment(x, (8, 8, 1), seed=tf.constant([3, 5], tf.int64))
    assert a.shape == x.shape and float(tf.reduce_min(a)) >= 0 and float(tf.reduce_max(a)) <= 1
    np.testing.assert_array_equal(a.numpy(), b.numpy())  # (exact resume redraws the same)
    assert not np.array_equal(a.numpy(), c.numpy())


def test_confident_pseudo_labels_train_the_classifier_and_logs_say_how_many():
    data, x, y = _batches()
    model = Consistency(_classifier(), threshold=0.0, weight=1.0)  # every pseudo-label counts
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    hist = model.fit(data, steps_per_epoch=10, epochs=3, verbose=0).history
    assert hist["loss"][-1] < hist["loss"][0]
    assert hist["confident_share"][-1] == 1.0 and "unlabeled_loss" in hist
    assert model.predict(x[:4], verbose=0).shape == (4, 2)  # inference: the classifier's

    strict = Consistency(_classifier(), threshold=1.01, weight=1.0)  # none is confident
    strict.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    logs = strict.fit(data, steps_per_epoch=2, epochs=1, verbose=0).history
    assert logs["confident_share"][-1] == 0.0 and logs["unlabeled_loss"][-1] == 0.0


def _with_features():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Dense(6, name="features")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax",
                                                  name="probabilities")(h))


def test_doublematch_term_is_one_minus_cosine_and_trains_the_projection():
    model = Consistency(_with_features(), threshold=0.95, weight=1.0,
                        self_supervised_weight=1.0)
    assert "ssl_projector/kernel" in [v.path for v in model.trainable_weights]
    model.projector.set_weights([np.eye(6, dtype="float32"), np.zeros(6, "float32")])
    a = tf.constant([[1.0, 0, 0, 0, 0, 0], [0, 2.0, 0, 0, 0, 0]])
    b = tf.constant([[3.0, 0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0, 0]])
    # same direction: 0; orthogonal: 1; the mean over the batch
    np.testing.assert_allclose(float(model._feature_consistency(a, b)), 0.5, atol=1e-6)
    np.testing.assert_allclose(float(model._feature_consistency(a, a)), 0.0, atol=1e-6)

    data, x, _ = _batches()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    before = model.projector.get_weights()[0].copy()
    hist = model.fit(data, steps_per_epoch=10, epochs=3, verbose=0,
                     validation_data=data, validation_steps=1).history
    assert hist["ssl_loss"][-1] < hist["ssl_loss"][0] and "val_ssl_loss" not in hist
    assert hist["loss"][-1] < hist["loss"][0]
    assert not np.allclose(model.projector.get_weights()[0], before)
    assert model.predict(x[:4], verbose=0).shape == (4, 2)  # the classifier, no projection
