"""The one training loop every stage uses (`fit`); multi-worker clusters use
multi_worker._fit_multi_worker."""

from __future__ import annotations

import math
import signal
import time
from pathlib import Path
from typing import Optional

import keras

from pretrainer.config import TrainerConfig
from pretrainer.console import console, esc
from pretrainer.runs import update_manifest
from pretrainer.train.callbacks import EpochTensorBoard, HistoryCSV, RichProgress, ScaledUpdates
from pretrainer.train.checkpoint import (
    Preempted,
    RestoreMetricState,
    StepCheckpoint,
    _catch_stop_signals,
    _metric_state,
    _restore_from,
    _StopNow,
    _StopRequest,
    checkpoint,
    repair_checkpoint_state,
)
from pretrainer.train.multi_worker import _fit_multi_worker
from pretrainer.train.plan import (
    TrainingError,
    TrainingPlan,
    optimizer_step,
    steps_per_execution,
)


def _require_static(title: str, what: str, ds) -> None:
    """TPUs compile one program per input shape: every dimension must be known."""
    import tensorflow as tf

    loose = [spec for spec in tf.nest.flatten(ds.element_spec)
             if not spec.shape.is_fully_defined()]
    if loose:
        raise TrainingError(f"{title}: the {what} input has dynamic shapes "
                            f"({', '.join(str(s.shape) for s in loose[:3])}) but static batches "
                            f"are required (trainer.static_batches, on for TPUs)")


def fit(model: keras.Model, train_data, plan: TrainingPlan, *, run_dir: Path,
        trainer: TrainerConfig, title: str, val_ds=None, restore_from: Optional[Path] = None,
        callbacks: tuple = (), class_weight: Optional[dict] = None) -> dict[str, list[float]]:
    """Train `model` (already compiled) as `plan` says, with checkpoints; resume if
    run_dir has one.

    Each epoch's line says its time and throughput (examples/s when the plan has a
    batch size); the run manifest gets `fit_seconds`, the training time of this process.

    Logs go to run_dir/history.csv and run_dir/tb, checkpoints to run_dir/ckpt.
    `train_data(start_batch)` returns the endless training stream from that batch
    on (one epoch = `plan.steps_per_epoch` batches); batch k must be the same whatever
    the start (pipeline readers take `start_batch`), which makes a resumed run see
    exactly the batches of an uninterrupted one. A tf.data.Dataset is accepted too
    and is then skipped, which is exact only if each new iterator over it repeats
    the same order. `val_ds` must repeat too and yield exactly `plan.validation_steps`
    batches per pass: Keras 3.15 keeps the validation iterator between epochs, so a
    finite one runs dry. `callbacks` come before the loop's own (so the metrics they
    add reach history.csv and TensorBoard).
    """
    from pretrainer.strategy import is_multi_worker

    run_dir = Path(run_dir)
    make_train = train_data if callable(train_data) else (
        lambda start: train_data.skip(start) if start else train_data)
    make_train, val_ds = _static_inputs(title, plan, make_train, val_ds)
    manager, start, metric_state = _open_checkpoints(model, run_dir, restore_from, plan)
    every = _group_steps(model, run_dir, plan, trainer, start, val_ds,
                         scaled=any(isinstance(cb, ScaledUpdates) for cb in callbacks))
    if is_multi_worker(model.distribute_strategy):
        return _fit_multi_worker(model, make_train(start), steps_per_epoch=plan.steps_per_epoch,
                                 epochs=plan.epochs, run_dir=run_dir, trainer=trainer,
                                 title=title, val_ds=val_ds,
                                 validation_steps=plan.validation_steps, start=start,
                                 manager=manager)
    if start:
        console.print(f"  {esc(title)}: resuming from the checkpoint at step "
                      f"{start}/{plan.total_steps}")
    stop = _StopRequest()
    history_cb = HistoryCSV(run_dir / "history.csv", keep_epochs=start // plan.steps_per_epoch)
    everything: list[keras.callbacks.Callback] = [
        *([RestoreMetricState(metric_state)] if metric_state else []),  # (it syncs a step)
        *callbacks,
        history_cb,
        EpochTensorBoard(log_dir=str(run_dir / "tb"), write_graph=False),
        StepCheckpoint(manager, every, stop),
    ]
    if trainer.early_stopping_patience > 0:
        monitor = plan.monitor if val_ds is not None else plan.monitor.removeprefix("val_")
        everything.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=plan.mode, patience=trainer.early_stopping_patience,
            restore_best_weights=True))
    if trainer.verbose:
        everything.append(RichProgress(title, plan.epochs, plan.steps_per_epoch,
                                       plan.batch_size))
    fit_t0 = time.perf_counter()
    with _catch_stop_signals(stop):
        for skip, first_epoch, last_epoch, steps in _segments(start, plan):
            try:
                model.fit(make_train(skip), initial_epoch=first_epoch,
                          epochs=last_epoch, steps_per_epoch=steps, validation_data=val_ds,
                          validation_steps=plan.validation_steps, callbacks=everything,
                          verbose=0, shuffle=False, class_weight=class_weight)
            except _StopNow:
                for cb in everything:  # a live progress bar would keep the terminal
                    if isinstance(cb, RichProgress) and cb.progress is not None:
                        cb.progress.stop()
                break
            if stop.signal is not None or model.stop_training:
                break
    if (run_dir / "manifest.json").is_file():
        update_manifest(run_dir, fit_seconds=round(time.perf_counter() - fit_t0, 2))
    return _ended(model, title, plan, run_dir, stop, history_cb, manager)


def _static_inputs(title: str, plan: TrainingPlan, make_train, val_ds):
    """With static batches (TPUs), pin the batch dimension and refuse dynamic shapes."""
    from pretrainer.data import pipeline

    if not pipeline.static_batches():
        return make_train, val_ds
    if plan.batch_size:  # maps after batching (tokenization) lose the static batch dimension
        unpinned = make_train
        make_train = lambda start: pipeline.pin_batch(unpinned(start), plan.batch_size)  # noqa: E731
        val_ds = None if val_ds is None else pipeline.pin_batch(
            val_ds, plan.val_batch_size or plan.batch_size)
    _require_static(title, "training", make_train(0))
    if val_ds is not None:
        _require_static(title, "validation", val_ds)
    return make_train, val_ds


def _open_checkpoints(model: keras.Model, run_dir: Path, restore_from: Optional[Path],
                      plan: TrainingPlan):
    """(checkpoint manager, the step restored, the epoch's metric state to restore)."""
    import tensorflow as tf

    ckpt = checkpoint(model)
    repair_checkpoint_state(run_dir / "ckpt")
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "ckpt"), max_to_keep=2)
    source = manager if restore_from is None else tf.train.CheckpointManager(
        ckpt, str(Path(restore_from) / "ckpt"), max_to_keep=2)  # a non-chief worker
    start, restored = _restore_from(model, source)
    metric_state = _metric_state(restored) if start % plan.steps_per_epoch else None
    return manager, start, metric_state


def _group_steps(model: keras.Model, run_dir: Path, plan: TrainingPlan,
                 trainer: TrainerConfig, start: int, val_ds, scaled: bool) -> int:
    """Set the model's steps per execution; return the checkpoint interval."""
    # per-step update scaling (discriminative rates, gradual unfreezing) needs one step
    # per execution: over k steps it would scale their sum
    requested = 1 if scaled else trainer.steps_per_execution
    k, every, note = steps_per_execution(requested, plan.steps_per_epoch,
                                         plan.validation_steps if val_ds is not None else None,
                                         trainer.checkpoint_every)
    if start % k:  # a checkpoint from a run with another k: one step at a time, exactly
        note = f"steps_per_execution 1 (resuming at step {start}, not a multiple of {k})"
        k, every = 1, trainer.checkpoint_every
    model.steps_per_execution = k  # read when fit builds its train/test functions
    # how the steps were grouped is no decision of the user's: the run's manifest keeps
    # it (it printed a line at every stage)
    update_manifest(run_dir, execution={"steps_per_execution": k, "checkpoint_every": every,
                                        "note": note})
    return every


def _segments(start: int, plan: TrainingPlan) -> list[tuple[int, int, int, int]]:
    """(batches to skip, first epoch, last epoch, steps per epoch) for each model.fit call:
    the rest of an interrupted epoch, then whole epochs."""
    per_epoch, out = plan.steps_per_epoch, []
    epoch0, done_in_epoch = divmod(start, per_epoch)
    if done_in_epoch:
        out.append((start, epoch0, epoch0 + 1, per_epoch - done_in_epoch))
        epoch0 += 1
    if epoch0 < plan.epochs:
        out.append((epoch0 * per_epoch, epoch0, plan.epochs, per_epoch))
    return out


def _ended(model: keras.Model, title: str, plan: TrainingPlan, run_dir: Path, stop,
           history_cb: HistoryCSV, manager) -> dict[str, list[float]]:
    """The history, or Preempted (a stop signal) / TrainingError (a NaN loss)."""
    step = optimizer_step(model)
    if stop.signal is not None:
        raise Preempted(f"{title}: stopped by {signal.Signals(stop.signal).name} at step "
                        f"{step}/{plan.total_steps}; checkpoint saved in {run_dir / 'ckpt'}. "
                        f"Run the same command again to resume")
    history = history_cb.columns()
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        good = manager.latest_checkpoint
        raise TrainingError(f"{title}: the loss became NaN/Inf near step {step} of "
                            f"{plan.total_steps}. Last good checkpoint: {good or 'none'}. "
                            f"Lower the learning rate or check the data")
    return history
