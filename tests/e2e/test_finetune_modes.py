"""finetune.mode decides what trains; schedules and class weights take effect."""

import keras
import numpy as np
import pytest

from pretrainer.config import FinetuneConfig, TrainerConfig, compose
from pretrainer.stages import finetune, pretrain

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=300", "data.max_test=60", "trainer.epochs=1", "finetune.epochs=2",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16"]


def test_linear_probe_keeps_the_backbone_frozen_and_full_moves_it(in_tmp):
    pre = pretrain.run(compose("fashion_ae", TINY))
    backbone = keras.saving.load_model(pre / "backbone.keras")
    before = backbone.get_weights()
    for mode, moved in (("linear_probe", False), ("full", True),
                        ("full backbone_lr_multiplier=0", False)):
        extra = [f"finetune.mode={mode.split()[0]}"] + [
            f"finetune.{kv}" for kv in mode.split()[1:]]
        ft = finetune.run(compose("fashion_ae", [*TINY, *extra]), run=pre)
        model = keras.saving.load_model(ft / "model.keras")
        inner = model.get_layer("conv_ae")
        # trainable weights only: BatchNorm's moving statistics follow the data in any mode
        names = [w.path for w in backbone.weights]
        trainable = {w.path for w in backbone.trainable_weights}
        changed = any(not np.allclose(a, b) for n, a, b in zip(
            names, before, inner.get_weights(), strict=True) if n in trainable)
        assert changed == moved, mode
        if mode == "linear_probe":  # only the head (kernel + bias) trains
            assert len(model.trainable_weights) == 2


def test_class_weights_and_schedule():
    manifest = {"class_names": ["a", "b"], "splits": {"train": {"count": 30,
                                                               "per_class": {"a": 10, "b": 20}}}}
    weights = finetune._class_weight(FinetuneConfig(class_weight="balanced"), manifest)
    assert weights == {0: 1.5, 1: 0.75}
    cfg = compose("fashion_ae")
    lr = finetune._learning_rate(FinetuneConfig(schedule="cosine", warmup_epochs=1, epochs=4,
                                                batch_size=10, learning_rate=0.1),
                                 manifest, cfg)
    values = [float(lr(step)) for step in (0, 3, 10, 39)]
    assert values[0] < values[1] <= 0.1 + 1e-7 and values[3] < values[2]
    assert isinstance(TrainerConfig().epochs, int)
