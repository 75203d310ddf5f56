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
