"""The training loop for a MultiWorkerMirroredStrategy cluster (Keras' own fit cannot
resume one exactly: keras-team/keras#20585)."""

from __future__ import annotations

import math
import signal
from pathlib import Path
from typing import Optional

import keras

from pretrainer.config import TrainerConfig
from pretrainer.console import console, esc
from pretrainer.train.callbacks import HistoryCSV
from pretrainer.train.checkpoint import Preempted, _catch_stop_signals, _StopRequest
from pretrainer.train.plan import TrainingError


def _distributed_steps(model: keras.Model, loss_fn):
    """(train_step, val_step, sync_stats) for `model` under its strategy: one replicated
    step each, the loss summed over replicas, and the BatchNorm statistics averaged."""
    import tensorflow as tf

    strategy = model.distribute_strategy

    def replica_loss(batch, training: bool):
        x, y = batch
        y_pred = model(x, training=training)
        loss = tf.nn.compute_average_loss(tf.cast(loss_fn(y, y_pred), tf.float32))
        if training and model.losses:
            loss += tf.nn.scale_regularization_loss(tf.add_n(model.losses))
        return loss

    @tf.function
    def train_step(iterator):
        def step_fn(batch):
            with tf.GradientTape() as tape:
                loss = replica_loss(batch, True)
            grads = tape.gradient(loss, model.trainable_variables)
            model.optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            return loss

        per_replica = strategy.run(step_fn, args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    @tf.function
    def val_step(iterator):
        per_replica = strategy.run(lambda b: replica_loss(b, False), args=(next(iterator),))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    # BatchNorm moving statistics are updated by each worker from its own half of the
    # batch and not all-reduced (only gradients are); average them over the workers
    # before every checkpoint, so all workers hold, and the chief saves, the same state.
    stats = [v for v in model.non_trainable_variables
             if "float" in str(v.dtype) and not v.path.endswith("seed_generator_state")]

    @tf.function
    def replica_stats():
        return strategy.run(lambda: [tf.identity(v.value) for v in stats])

    def sync_stats():
        if stats:
            means = [strategy.reduce(tf.distribute.ReduceOp.MEAN, t, axis=None)
                     for t in replica_stats()]
            for v, m in zip(stats, means, strict=True):
                v.assign(m)

    return train_step, val_step, sync_stats


def _fit_multi_worker(model: keras.Model, train_ds, *, steps_per_epoch: int, epochs: int,
                      run_dir: Path, trainer: TrainerConfig, title: str, val_ds,
                      validation_steps: Optional[int], start: int, manager
                      ) -> dict[str, list[float]]:
    """A distributed training loop of our own (strategy.run) for several workers.

    Keras 3.15's model.fit fails under MultiWorkerMirroredStrategy with more than one
    worker (keras-team/keras#20585: a reduce of nested PerReplica values), so this
    loop does what fit does for our models: the per-example loss averaged over the
    global batch, gradients all-reduced by the optimizer, the loss summed over
    replicas for logging, checkpoints on every worker (non-chief ones in their own
    directory) and the same history.csv. Compiled metrics other than the loss are
    not computed here.
    """

    from pretrainer.errors import ConfigError

    if type(model).train_step is not keras.Model.train_step:
        raise ConfigError(f"{type(model).__name__} trains with its own step, which the "
                          f"multi-worker loop does not run; use autoencoder, denoising or "
                          f"simclr with trainer.strategy=multi_worker")
    strategy = model.distribute_strategy
    loss_fn = keras.losses.get(model.loss) if isinstance(model.loss, str) else model.loss
    total = epochs * steps_per_epoch
    if start:
        console.print(f"  {esc(title)}: resuming from the checkpoint at step {start}/{total}")

    train_step, val_step, sync_stats = _distributed_steps(model, loss_fn)

    def save(at: int) -> None:
        sync_stats()
        manager.save(checkpoint_number=at)

    history_cb = HistoryCSV(run_dir / "history.csv", keep_epochs=start // steps_per_epoch)
    stop = _StopRequest()
    step, last_saved = start, start
    train_it = iter(strategy.experimental_distribute_dataset(train_ds))
    val_it = (iter(strategy.experimental_distribute_dataset(val_ds))
              if val_ds is not None else None)
    with _catch_stop_signals(stop):
        for epoch in range(start // steps_per_epoch, epochs):
            losses = []
            while step < (epoch + 1) * steps_per_epoch:
                loss = float(train_step(train_it))
                step += 1
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"{title}: the loss became NaN/Inf at step {step} of {total}. Last good "
                        f"checkpoint: {manager.latest_checkpoint or 'none'}. Lower the learning "
                        f"rate or check the data")
                losses.append(loss)
                if stop.signal is not None or step - last_saved >= trainer.checkpoint_every:
                    save(step)
                    last_saved = step
                if stop.signal is not None:
                    raise Preempted(
                        f"{title}: stopped by {signal.Signals(stop.signal).name} at step "
                        f"{step}/{total}; checkpoint saved in {run_dir / 'ckpt'}. Run the same "
                        f"command again to resume")
            logs = {"loss": sum(losses) / len(losses)}
            if val_it is not None:
                logs["val_loss"] = sum(float(val_step(val_it))
                                       for _ in range(validation_steps)) / validation_steps
            history_cb.set_model(model)
            history_cb.on_epoch_end(epoch, logs)
            if step != last_saved:
                save(step)
                last_saved = step
            if trainer.verbose:
                shown = "  ".join(f"{k} {v:.4f}" for k, v in logs.items())
                console.print(f"  {esc(title)} epoch {epoch + 1}/{epochs}  {shown}")
    sync_stats()
    return history_cb.columns()
