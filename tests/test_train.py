import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from pretrainer.config import TrainerConfig
from pretrainer.train import TrainingError, fit


def _data(n=256, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 8)).astype("float32")
    y = (x[:, 0] + x[:, 1] > 0).astype("int64")
    return x, y


def _model(lr=0.05):
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def test_fit_lowers_loss_and_writes_history_and_tensorboard(tmp_path):
    keras.utils.set_random_seed(0)
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    val = tf.data.Dataset.from_tensor_slices((x[:64], y[:64])).batch(32).repeat()
    hist = fit(_model(), ds, steps_per_epoch=8, epochs=4, run_dir=tmp_path,
               trainer=TrainerConfig(verbose=False), title="t", val_ds=val, validation_steps=2)
    assert hist["loss"][-1] < hist["loss"][0]
    rows = list(csv.DictReader(open(tmp_path / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert "val_accuracy" in rows[0]
    assert any((tmp_path / "tb").rglob("events.out.tfevents.*"))


def test_nan_loss_is_a_clear_error(tmp_path):
    x, y = _data()
    x[5] = 3e38  # overflows float32 inside the first layer: Inf, then NaN
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    with pytest.raises(TrainingError, match="NaN"):
        fit(_model(), ds, steps_per_epoch=8, epochs=2, run_dir=tmp_path,
            trainer=TrainerConfig(verbose=False), title="t")
