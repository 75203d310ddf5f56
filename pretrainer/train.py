"""The one training loop every stage uses: seeds, precision, callbacks, fit."""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Optional

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pretrainer.config import TrainerConfig
from pretrainer.console import console
from pretrainer.errors import UserError
from pretrainer.runs import atomic_write_text


class TrainingError(UserError):
    """Training diverged (NaN/Inf loss)."""


def setup(trainer: TrainerConfig, seed: int):
    """Seed every RNG, set the precision policy and pick the strategy (built before any op)."""
    from pretrainer.strategy import get_strategy

    keras.utils.set_random_seed(seed)
    keras.mixed_precision.set_global_policy(trainer.precision)
    strategy, why = get_strategy(trainer.strategy, trainer.devices)
    return strategy, why


def compile_kwargs(trainer: TrainerConfig) -> dict:
    return {"steps_per_execution": trainer.steps_per_execution,
            "jit_compile": trainer.jit_compile}


class HistoryCSV(keras.callbacks.Callback):
    """Rewrite history.csv atomically after every epoch (a kill leaves the last whole file).

    Keras' CSVLogger appends in place, which can leave a torn last line.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []

    def on_epoch_end(self, epoch, logs=None):
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class RichProgress(keras.callbacks.Callback):
    """A Rich bar per epoch with the running loss, and one summary line per epoch."""

    def __init__(self, title: str, epochs: int, steps: int):
        super().__init__()
        self.title, self.epochs, self.steps = title, epochs, steps
        self.progress: Optional[Progress] = None

    def on_epoch_begin(self, epoch, logs=None):
        if not console.is_terminal:  # logs and CI: the per-epoch summary line is enough
            return
        self.progress = Progress(TextColumn(f"{self.title} epoch {epoch + 1}/{self.epochs}"),
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[metrics]}"),
                                 console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("", total=self.steps, metrics="")

    def on_train_batch_end(self, batch, logs=None):
        if self.progress is not None:
            loss = (logs or {}).get("loss")
            self.progress.update(self.task, completed=batch + 1,
                                 metrics="" if loss is None else f"loss {float(loss):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items()
                          if k != "learning_rate")
        console.print(f"  {self.title} epoch {epoch + 1}/{self.epochs}  {shown}")


def fit(model: keras.Model, train_ds, *, steps_per_epoch: int, epochs: int, run_dir: Path,
        trainer: TrainerConfig, title: str, val_ds=None, validation_steps: Optional[int] = None,
        monitor: str = "val_loss", mode: str = "min") -> dict[str, list[float]]:
    """Train `model` (already compiled) and log to run_dir/history.csv and run_dir/tb.

    `train_ds` must repeat (one epoch = `steps_per_epoch` batches); `val_ds` must
    repeat too and yield exactly `validation_steps` batches per pass: Keras 3.15
    keeps the validation iterator between epochs, so a finite one runs dry.
    """
    callbacks: list[keras.callbacks.Callback] = [
        HistoryCSV(Path(run_dir) / "history.csv"),
        keras.callbacks.TensorBoard(log_dir=str(Path(run_dir) / "tb"), write_graph=False),
        keras.callbacks.TerminateOnNaN(),
    ]
    if trainer.early_stopping_patience > 0:
        if val_ds is None:
            monitor = monitor.removeprefix("val_")
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=trainer.early_stopping_patience,
            restore_best_weights=True))
    if trainer.verbose:
        callbacks.append(RichProgress(title, epochs, steps_per_epoch))
    history = model.fit(train_ds, epochs=epochs, steps_per_epoch=steps_per_epoch,
                        validation_data=val_ds, validation_steps=validation_steps,
                        callbacks=callbacks, verbose=0, shuffle=False)
    losses = history.history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        step = len(losses) * steps_per_epoch
        raise TrainingError(f"{title}: the loss became NaN/Inf (by step {step}). "
                            f"Lower the learning rate or check the data")
    return history.history
