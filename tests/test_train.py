import csv

import keras
import numpy as np
import pytest
import tensorflow as tf

from pretrainer.config import TrainerConfig
from pretrainer.train import TrainingError, TrainingPlan, fit


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
    hist = fit(_model(), ds, plan=TrainingPlan(8, 4, validation_steps=2), run_dir=tmp_path,
               trainer=TrainerConfig(verbose=False), title="t", val_ds=val)
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
        fit(_model(), ds, plan=TrainingPlan(8, 2), run_dir=tmp_path,
            trainer=TrainerConfig(verbose=False), title="t")


def test_a_sigterm_swallowed_before_training_stops_the_loop_at_its_first_step(
        tmp_path, monkeypatch):
    """SIGTERM's handler raises Terminated; landing inside TensorFlow's C++ that can be
    swallowed (CI saw a SystemError, then a whole run trained to exit 0). The recorded
    signal stops the next training loop at once, with a checkpoint to resume from."""
    import signal

    from pretrainer import errors
    from pretrainer.train import Preempted

    monkeypatch.setattr(errors, "stop_requested", signal.SIGTERM)
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(32).repeat()
    model = _model()
    with pytest.raises(Preempted, match="stopped by SIGTERM at step 0/16"):
        fit(model, ds, plan=TrainingPlan(8, 2), run_dir=tmp_path,
            trainer=TrainerConfig(verbose=False), title="t")
    assert (tmp_path / "ckpt" / "checkpoint").is_file()
    assert int(model.optimizer.iterations.numpy()) == 0


def _deterministic_setup():
    keras.utils.set_random_seed(0)
    x, y = _data(96)
    ds = (tf.data.Dataset.from_tensor_slices((x, y)).shuffle(96, seed=1)
          .repeat().batch(16))  # 6 steps per epoch
    return _model(0.01), ds


class _Crash(keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == 8:
            raise RuntimeError("simulated crash at step 8")


def test_resume_continues_from_the_last_checkpoint_with_the_same_step_count(tmp_path):
    from pretrainer.train import checkpoint as train

    trainer = TrainerConfig(verbose=False, checkpoint_every=3, steps_per_execution=1)
    model, ds = _deterministic_setup()
    fit(model, ds, plan=TrainingPlan(6, 3), run_dir=tmp_path / "straight",
        trainer=trainer, title="t")
    assert int(model.optimizer.iterations) == 18
    straight = model.get_weights()

    model, ds = _deterministic_setup()
    real_fit = keras.Model.fit

    def crashing_fit(self, *a, **k):
        k["callbacks"] = list(k["callbacks"]) + [_Crash()]
        return real_fit(self, *a, **k)

    keras.Model.fit = crashing_fit
    try:
        with pytest.raises(RuntimeError, match="step 8"):
            fit(model, ds, plan=TrainingPlan(6, 3), run_dir=tmp_path / "crashed",
                trainer=trainer, title="t")
    finally:
        keras.Model.fit = real_fit
    model, ds = _deterministic_setup()  # a new process would start from fresh weights
    fit(model, ds, plan=TrainingPlan(6, 3), run_dir=tmp_path / "crashed", trainer=trainer,
        title="t")
    assert int(model.optimizer.iterations) == 18
    assert train._restore(model, tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model, optimizer=model.optimizer),
        str(tmp_path / "crashed" / "ckpt"), max_to_keep=2)) == 18
    for a, b in zip(straight, model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)  # the same batches, the same updates
    rows = list(csv.DictReader(open(tmp_path / "crashed" / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]


def _dropout_setup():
    """A model with dropout (an RNG state) and a stream whose batch k is fixed."""
    keras.utils.set_random_seed(0)
    x, y = _data(96)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(2, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    def stream(start):  # 6 steps per epoch
        return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(16).skip(start)

    return model, stream


class _CrashAt(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) == self.step:
            raise RuntimeError(f"simulated crash at step {self.step}")


@pytest.mark.parametrize("damage", ["none", "latest", "state_empty", "state_cut"])
def test_resume_mid_epoch_ends_with_identical_weights_and_history(tmp_path, damage, capsys):
    trainer = TrainerConfig(verbose=False, checkpoint_every=4, steps_per_execution=1)  # ckpts at 4, 6, 10, ...
    model, stream = _dropout_setup()
    fit(model, stream, plan=TrainingPlan(6, 3), run_dir=tmp_path / "straight",
        trainer=trainer, title="t")
    straight = model.get_weights()

    model, stream = _dropout_setup()
    with pytest.raises(RuntimeError, match="step 11"):
        fit(model, stream, plan=TrainingPlan(6, 3), run_dir=tmp_path / "crashed",
            trainer=trainer, title="t", callbacks=(_CrashAt(11),))
    ckpt = tmp_path / "crashed" / "ckpt"
    assert "ckpt-10" in (ckpt / "checkpoint").read_text()  # mid-epoch 2
    if damage == "latest":  # e.g. a kill or a full disk while it was written
        (data,) = ckpt.glob("ckpt-10.data-*")
        data.write_bytes(data.read_bytes()[:20])
    elif damage == "state_empty":  # TensorFlow refused this: "Invalid checkpoint state"
        (ckpt / "checkpoint").write_bytes(b"")
    elif damage == "state_cut":  # and started this one over
        (ckpt / "checkpoint").write_text('model_checkpoint_path: "ckp')
    (ckpt / "ckpt-11_temp").mkdir()  # a save that a full disk stopped: removed on resume
    (ckpt / "ckpt-11_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    model, stream = _dropout_setup()  # a new process would start from fresh weights
    capsys.readouterr()
    fit(model, stream, plan=TrainingPlan(6, 3), run_dir=tmp_path / "crashed",
        trainer=trainer, title="t")
    out = " ".join(capsys.readouterr().out.split())  # (Rich wraps long paths)
    repaired = "rebuilt it from the checkpoints present (newest ckpt-10)" in out
    assert not (ckpt / "ckpt-11_temp").exists()
    assert repaired == damage.startswith("state")  # resumed, not started over
    for a, b in zip(straight, model.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)  # the same batches, masks and updates
    assert ((tmp_path / "crashed" / "history.csv").read_text()
            == (tmp_path / "straight" / "history.csv").read_text())  # whole-epoch rows


def test_keep_best_restores_the_best_validation_epoch_and_survives_a_restart(tmp_path):
    from pretrainer.train import KeepBest

    model = _model()
    model(np.zeros((1, 8), np.float32))
    cb = KeepBest(tmp_path, "val_accuracy", "max")
    cb.set_model(model)
    snapshots = []
    for epoch, acc in enumerate([0.5, 0.8, 0.8, 0.7]):  # a tie keeps the earlier epoch
        model.set_weights([w + 1.0 for w in model.get_weights()])
        snapshots.append(model.get_weights())
        cb.on_epoch_end(epoch, {"val_accuracy": acc})
    again = KeepBest(tmp_path, "val_accuracy", "max")  # a resumed run knows the best so far
    assert again.state == {"epoch": 2, "monitor": "val_accuracy", "value": 0.8}
    assert again.restore(model)["epoch"] == 2
    for a, b in zip(model.get_weights(), snapshots[1], strict=True):
        np.testing.assert_array_equal(a, b)


def test_steps_per_execution_divides_the_epoch_and_validation_and_checkpoints():
    from pretrainer.train import steps_per_execution

    assert steps_per_execution(8, 891, None, 100) == (
        3, 102, "steps_per_execution 8 -> 3 (it must divide the 891 steps per epoch); "
                "checkpoint_every 100 -> 102 (a multiple of 3)")
    assert steps_per_execution(8, 800, 48, 100)[:2] == (8, 104)
    assert steps_per_execution(8, 800, 47, 100)[:2] == (1, 100)  # 47 is prime
    assert steps_per_execution(1, 800, 47, 100) == (1, 100, "")
    assert steps_per_execution(16, 5, None, 100)[:2] == (5, 100)


def test_an_epoch_without_a_large_divisor_is_rounded_to_whole_executions():
    from pretrainer.train import epoch_steps, execution_size

    steps, note = epoch_steps(233, 16)  # prime: it would run one step per execution
    assert steps == 240 and execution_size(16, steps) == 16 and "233 -> 240" in note
    assert epoch_steps(240, 16) == (240, "")
    assert epoch_steps(891, 8)[0] == 896  # 891 = 81 x 11: 3 steps per execution at most
    assert epoch_steps(171, 16) == (171, "")  # 9 per execution: kept
    assert epoch_steps(35, 16) == (35, "")  # too short an epoch to stretch
    assert epoch_steps(233, 1) == (233, "")


def test_validation_batches_are_sized_to_whole_executions(tmp_path):
    from pretrainer.config import DataConfig
    from pretrainer.data import pipeline
    from pretrainer.data.sources import SourceData
    from pretrainer.data.store import build_store
    from pretrainer.train import steps_per_execution

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (1000, 4, 4, 1), dtype=np.uint8)
    build_store(tmp_path / "s", DataConfig(val_fraction=0.047, test_fraction=0.1), 0,
                SourceData(x_pool=x, y_pool=np.arange(1000) % 2, class_names=["a", "b"]))
    n = pipeline.split_info(tmp_path / "s", "val").count
    assert n == 42 and pipeline.steps(tmp_path / "s", "val", 16) == 3
    # 240 steps per epoch, 8 per execution: 42 examples cannot make 8k steps with batches
    # of 4 to 16; 6 (a divisor of 240) with batches of 8 (6 steps) can
    b = pipeline.validation_batch(tmp_path / "s", "val", 16, 240, 8)
    assert (b, pipeline.steps(tmp_path / "s", "val", b)) == (8, 6)
    assert steps_per_execution(8, 240, pipeline.steps(tmp_path / "s", "val", b), 100)[0] == 6
    batches = list(pipeline.examples(tmp_path / "s", "val", batch_size=b))
    assert sum(len(xb) for xb, _ in batches) == n  # every example, once
    assert pipeline.validation_batch(tmp_path / "s", "val", 16, 240, 1) == 16


def test_precision_auto_is_bf16_only_for_conv_image_models_on_cpus_with_bf16_units(
        monkeypatch):
    from pretrainer import precision

    conv = {"modality": "image", "backbone": "seed_cnn"}
    monkeypatch.setattr(precision, "_has_gpu", lambda: False)
    for flags in ({"avx2", "amx_bf16", "avx512_bf16"}, {"avx2", "avx512_bf16"}):
        monkeypatch.setattr(precision, "cpu_flags", lambda f=flags: f)
        assert precision.resolve("auto", conv)[0] == "mixed_bfloat16"
        assert precision.resolve("auto", {**conv, "pretext": "dcgan"})[0] == "float32"
        assert precision.resolve("auto", {"modality": "text",
                                          "backbone": "transformer"})[0] == "float32"
        assert precision.resolve("auto")[0] == "float32"
        assert precision.resolve("float32", conv)[0] == "float32"
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"avx2", "fma"})
    assert precision.resolve("auto", conv) == ("float32", "float32 (auto: this CPU has no "
                                                          "bf16 units)")
    monkeypatch.setattr(precision, "cpu_flags", lambda: {"amx_bf16"})
    monkeypatch.setattr(precision, "_has_gpu", lambda: True)
    assert precision.resolve("auto", conv)[0] == "float32"


def test_a_resumed_run_finishes_its_epoch_then_runs_whole_epochs():
    from pretrainer.train.loop import _segments

    plan = TrainingPlan(steps_per_epoch=6, epochs=3)
    assert plan.total_steps == 18
    assert _segments(0, plan) == [(0, 0, 3, 6)]
    assert _segments(8, plan) == [(8, 1, 2, 4), (12, 2, 3, 6)]  # 4 steps left in epoch 2
    assert _segments(12, plan) == [(12, 2, 3, 6)]
    assert _segments(18, plan) == []  # (a finished run restarted: nothing to do)
