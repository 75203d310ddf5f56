"""A stage killed between checkpoints and run again ends with an uninterrupted run's weights,
for the pretexts and finetune recipes with their own train steps (DCGAN's two optimizers
and noise, FixMatch's unlabeled views) and in-model augmentation (SimCLR). (Not the masked
language model: keras-hub's mask generator draws from global random state.)"""

import keras
import numpy as np
import pytest

from pretrainer import train
from pretrainer.config import compose
from pretrainer.stages import finetune, pretrain
from pretrainer.train.checkpoint import StepCheckpoint

pytestmark = pytest.mark.e2e

TINY = ["data.max_samples=300", "data.max_test=60", "trainer.epochs=2", "finetune.epochs=2",
        "trainer.verbose=false", "backbone.filters=[8,16]", "backbone.latent_dim=16",
        "trainer.batch_size=32", "trainer.checkpoint_every=4", "trainer.steps_per_execution=1"]


def _crash_at(monkeypatch, step):
    """Die at optimizer step `step` (checkpoints every 4 steps: the last few steps are lost,
    as with kill -9)."""
    real = StepCheckpoint.on_train_batch_end

    def dying(self, batch, logs=None):
        real(self, batch, logs)
        if train.optimizer_step(self.model) == step:
            raise RuntimeError(f"killed at step {step}")

    monkeypatch.setattr(StepCheckpoint, "on_train_batch_end", dying)


def _weights(path):
    import pretrainer.models  # noqa: F401

    return keras.saving.load_model(path).get_weights()


CASES = {
    "dcgan": ("fashion_dcgan", "pretrain", []),
    "simclr": ("fashion_simclr", "pretrain", []),
    "fixmatch": ("fashion_ae", "finetune", ["finetune.init=scratch", "finetune.augment=shift_flip",
                                            "finetune.semi_supervised=fixmatch",
                                            "finetune.steps_per_epoch=10"]),
    # 2 steps per execution: the validation batch (15 examples) resized to 8 so a pass is
    # 2 steps; checkpoints at 4, 8, 10, 14; killed at 16
    "finetune_2_per_execution": ("fashion_ae", "finetune", [
        "finetune.init=scratch", "finetune.augment=shift_flip", "finetune.steps_per_epoch=10",
        "trainer.steps_per_execution=2"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_killed_and_resumed_equals_uninterrupted(tmp_path, monkeypatch, case):
    experiment, stage, extra = CASES[case]
    keys = {o.split("=")[0] for o in extra}
    tiny = [o for o in TINY if o.split("=")[0] not in keys]  # the case's values win
    run = pretrain.run if stage == "pretrain" else finetune.run
    artifact = "backbone.keras" if stage == "pretrain" else "model.keras"
    straight = run(compose(experiment, [*tiny, *extra, f"paths.runs={tmp_path / 'a'}",
                                        f"paths.data={tmp_path / 'data'}"]))
    cfg = compose(experiment, [*tiny, *extra, f"paths.runs={tmp_path / 'b'}",
                               f"paths.data={tmp_path / 'data'}"])
    with monkeypatch.context() as m:
        at = 16 if "per_execution" in case else 15  # executions end on even steps there
        _crash_at(m, at)  # mid-epoch 2, one or two steps after the last checkpoint
        with pytest.raises(RuntimeError, match=f"killed at step {at}"):
            run(cfg)
    resumed = run(cfg)
    assert resumed.parent != straight.parent
    for a, b in zip(_weights(straight / artifact), _weights(resumed / artifact), strict=True):
        np.testing.assert_array_equal(a, b)
    assert (resumed / "history.csv").read_text() == (straight / "history.csv").read_text()
