"""Unit tests for modules the end-to-end tests reach only through whole runs: the training
plan's step arithmetic, the training callbacks, the export sidecars, the image and table
backbones, and the entry point's cache rules."""

import csv
import json
import os

import keras
import numpy as np
import pytest

from pretrainer import entry
from pretrainer.config import ConvConfig, MLPConfig
from pretrainer.data.records import StoreManifest
from pretrainer.exports import sidecar
from pretrainer.models import cnn
from pretrainer.models.mlp import mlp as build_mlp
from pretrainer.train import callbacks, plan


@pytest.mark.parametrize("steps", [1, 7, 100, 233, 240, 1000])
@pytest.mark.parametrize("requested", [1, 4, 8, 32])
@pytest.mark.parametrize("val_steps", [None, 6, 10])
def test_steps_per_execution_divides_the_epoch_and_validation_and_checkpoints_line_up(
        steps, requested, val_steps):
    k, every, note = plan.steps_per_execution(requested, steps, val_steps, 50)
    assert 1 <= k <= requested and steps % k == 0
    assert val_steps is None or val_steps % k == 0
    assert every % k == 0 and 50 <= every < 50 + k
    assert bool(note) == (k != requested or every != 50)


def test_an_epoch_without_a_near_divisor_is_rounded_up_to_whole_executions():
    assert plan.execution_size(8, 233) == 1  # 233 is prime
    steps, note = plan.epoch_steps(233, 8)
    assert steps == 240 and "233 -> 240" in note
    assert plan.epoch_steps(240, 8) == (240, "")
    assert plan.epoch_steps(20, 8) == (20, "")  # too short to round: fewer than 4 executions
    assert plan.TrainingPlan(steps_per_epoch=30, epochs=4).total_steps == 120


def test_history_csv_keeps_finished_epochs_on_resume_and_replaces_a_repeated_one(tmp_path):
    path = tmp_path / "history.csv"
    first = callbacks.HistoryCSV(path)
    for epoch, loss in enumerate([1.0, 0.5, 0.25]):
        first.on_epoch_end(epoch, {"loss": loss})
    resumed = callbacks.HistoryCSV(path, keep_epochs=2)  # killed during epoch 3
    assert resumed.columns() == {"loss": [1.0, 0.5]}
    resumed.on_epoch_end(2, {"loss": 0.2, "val_loss": 0.3})
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["epoch"] for r in rows] == ["1", "2", "3"]
    assert rows[-1]["loss"] == "0.2" and rows[-1]["val_loss"] == "0.3"
    assert not list(tmp_path.glob("*.tmp*"))  # written atomically


def test_keep_best_survives_a_new_process_and_restores_the_best_epoch(tmp_path):
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    keep = callbacks.KeepBest(tmp_path, "val_accuracy", "max")
    keep.set_model(model)
    best = [w.copy() for w in model.get_weights()]
    keep.on_epoch_end(0, {"val_accuracy": 0.8})
    model.set_weights([w + 1.0 for w in best])
    keep.on_epoch_end(1, {"val_accuracy": 0.8})  # a tie keeps the earlier epoch
    keep.on_epoch_end(2, {"val_accuracy": float("nan")})  # ignored
    again = callbacks.KeepBest(tmp_path, "val_accuracy", "max")  # e.g. after a resume
    assert again.state == {"epoch": 1, "monitor": "val_accuracy", "value": 0.8}
    assert again.restore(model)["epoch"] == 1
    for got, want in zip(model.get_weights(), best, strict=True):
        np.testing.assert_array_equal(got, want)


def test_gradual_unfreeze_thaws_one_block_from_the_top_every_few_epochs():
    backbone = cnn.conv_encoder((8, 8, 1), ConvConfig(filters=[4, 8], latent_dim=3))
    blocks = callbacks.backbone_blocks(backbone)
    # top first: the embedding, then conv1_s1 with its BatchNorm's four weights
    assert [len(b) for b in blocks] == [2, 5, 5, 5, 5]
    thaw = callbacks.GradualUnfreeze(blocks, every=2)
    assert [thaw.thawed(e) for e in range(0, 14, 2)] == [0, 1, 2, 3, 4, 5, 5]
    thaw.on_epoch_begin(2)
    assert len(thaw.variables) == 20  # everything below the embedding stays frozen
    logs = {}
    thaw.on_epoch_end(2, logs)
    assert logs == {"thawed_blocks": 1.0}


def test_sidecars_name_classes_in_label_order_beside_the_artifact(tmp_path):
    names = ["T-shirt/top", "Ankle boot (left)", "café [beta]"]
    manifest = StoreManifest.from_json({"modality": "image", "shape": [4, 4, 1],
                                        "num_classes": 3, "class_names": names,
                                        "splits": {}})
    artifact = tmp_path / "model.tflite"
    sidecar.write(artifact, manifest, "litert", quantized=False)
    assert (tmp_path / "labels.txt").read_text(encoding="utf-8").splitlines() == names
    doc = json.loads((tmp_path / "model.tflite.json").read_text(encoding="utf-8"))
    assert doc["class_names"] == names and doc["input"]["name"] == "images"
    assert doc["input"]["shape"] == [None, 4, 4, 1] and doc["quantized"] is False
    assert set(doc["outputs"]) == {"probabilities"}  # no string outputs in LiteRT/ONNX


def test_image_and_table_backbones_give_the_configured_embedding():
    conv = cnn.conv_encoder((28, 28, 1), ConvConfig(filters=[4, 8], latent_dim=16))
    assert conv.output_shape == (None, 16) and conv.get_layer("flatten").output.shape[-1] == 392
    seed = cnn.seed_cnn((28, 28, 1), ConvConfig(name="seed_cnn", filters=[4, 8], latent_dim=16))
    assert seed.output_shape == (None, 16)
    x = np.zeros((2, 6), np.float32) + 3.0
    identity = build_mlp((6,), MLPConfig(filters=[], latent_dim=0))
    np.testing.assert_array_equal(identity(x), x)  # linear regression's backbone
    assert build_mlp((6,), MLPConfig(filters=[5], latent_dim=4)).output_shape == (None, 4)


def test_the_help_cache_follows_the_environment_and_the_arguments(tmp_path, monkeypatch):
    monkeypatch.delenv("PRETRAINER_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert entry.cache_dir() == tmp_path / "xdg" / "pretrainer"
    monkeypatch.setenv("PRETRAINER_CACHE", str(tmp_path / "mine"))
    assert entry.cache_dir() == tmp_path / "mine"
    with open(os.devnull, "w") as stream:
        key = entry.help_key(["--help"], stream)
        assert key == entry.help_key(["--help"], stream)
        assert key != entry.help_key(["pretrain", "--help"], stream)


def test_a_checkpoints_metric_totals_are_on_disk_before_the_checkpoint_is(tmp_path):
    """A kill between the two writes must never leave a checkpoint without the epoch's
    running totals (its resumed epoch's history row would average only the later steps:
    a flaky kill -9 test caught it)."""
    from pretrainer.train import checkpoint

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse", metrics=["mae"])
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0)
    seen = {}

    class Manager:
        directory = str(tmp_path)

        def save(self, checkpoint_number):
            path = os.path.join(self.directory, "ckpt") + f"-{checkpoint_number}"
            seen["totals_first"] = os.path.isfile(f"{path}.metrics.json")
            return path

    cb = checkpoint.StepCheckpoint(Manager(), every=5, stop=checkpoint._StopRequest())
    cb.set_model(model)
    cb.step = 10
    assert cb._save() and seen["totals_first"]
    assert json.loads((tmp_path / "ckpt-10.metrics.json").read_text())
