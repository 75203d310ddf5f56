"""The Keras callbacks of the training loop that are not about checkpoints: history.csv,
the progress bar, per-variable learning rates, gradual unfreezing, the best epoch."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Optional

import keras
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pretrainer.console import console, esc
from pretrainer.files import atomic_write_text


class HistoryCSV(keras.callbacks.Callback):
    """Rewrite history.csv atomically after every epoch (a kill leaves the last whole file).

    Keras' CSVLogger appends in place, which can leave a torn last line.
    """

    def __init__(self, path: Path, keep_epochs: int = 0):
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []
        if keep_epochs and self.path.is_file():  # resuming: keep the epochs already finished
            with open(self.path, newline="") as f:
                self.rows = [{k: int(float(v)) if k == "epoch" else float(v)
                              for k, v in row.items() if v != ""}
                             for row in csv.DictReader(f)][:keep_epochs]

    def columns(self) -> dict[str, list[float]]:
        keys = [k for k in dict.fromkeys(k for row in self.rows for k in row) if k != "epoch"]
        return {k: [row.get(k, float("nan")) for row in self.rows] for k in keys}

    def on_epoch_end(self, epoch, logs=None):
        self.rows = [r for r in self.rows if r["epoch"] < epoch + 1]
        self.rows.append({"epoch": epoch + 1, **{k: float(v) for k, v in (logs or {}).items()}})
        keys = list(dict.fromkeys(k for row in self.rows for k in row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=keys)
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buf.getvalue())


class RichProgress(keras.callbacks.Callback):
    """A Rich bar per epoch with the running loss, and one summary line per epoch.

    async_safe: Keras calls the batch-end hook from a worker thread (Rich's Progress
    is thread-safe), so reading the loss for the bar does not make training wait.
    """

    async_safe = True

    def __init__(self, title: str, epochs: int, steps: int, batch_size: Optional[int] = None):
        super().__init__()
        self.title, self.epochs, self.steps, self.batch_size = title, epochs, steps, batch_size
        self.progress: Optional[Progress] = None

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.seen = 0
        if not console.is_terminal:  # logs and CI: the per-epoch summary line is enough
            return
        self.progress = Progress(TextColumn(f"{self.title} epoch {epoch + 1}/{self.epochs}"),
                                 BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                 TextColumn("{task.fields[metrics]}"),
                                 console=console, transient=True)
        self.progress.start()
        self.task = self.progress.add_task("", total=self.steps, metrics="")

    def on_train_batch_end(self, batch, logs=None):
        self.seen = max(self.seen, batch + 1)  # (worker threads may finish out of order)
        progress = self.progress
        if progress is not None:
            loss = (logs or {}).get("loss")
            progress.update(self.task, completed=self.seen,
                                 metrics="" if loss is None else f"loss {float(loss):.4f}")

    def on_epoch_end(self, epoch, logs=None):
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
        shown = "  ".join(f"{k} {float(v):.4f}" for k, v in (logs or {}).items()
                          if k != "learning_rate")
        seconds = time.perf_counter() - getattr(self, "t0", time.perf_counter())
        rate = (f"  {self.seen * self.batch_size / seconds:,.0f} ex/s" if self.batch_size
                and seconds > 0 else f"  {self.seen / max(seconds, 1e-9):.1f} steps/s")
        console.print(f"  {esc(self.title)} epoch {epoch + 1}/{self.epochs}  {seconds:.1f} s"
                      f"{rate}  {shown}", soft_wrap=True)


class ScaledUpdates(keras.callbacks.Callback):
    """Per-variable learning rates for any optimizer: after each step, scale the change of
    `variables` by `multiplier` (the learning rate multiplies the update, so this is that
    variable's learning rate times `multiplier`; optimizer states are unaffected).

    Keras 3 optimizers take one learning rate for all variables, hence this. With
    steps_per_execution > 1 it acts once per execution, on the summed update.
    """

    def __init__(self, variables: list, multiplier: float):
        super().__init__()
        self.variables, self.multiplier = list(variables), float(multiplier)
        self.before: list = []

    def on_train_batch_begin(self, batch, logs=None):
        self.before = [keras.ops.convert_to_numpy(v) for v in self.variables]

    def on_train_batch_end(self, batch, logs=None):
        for v, old in zip(self.variables, self.before, strict=True):
            new = keras.ops.convert_to_numpy(v)
            v.assign(old + self.multiplier * (new - old))


def backbone_blocks(model: keras.Model) -> list[list]:
    """The backbone's weighted layers as blocks, top (output side) first; a
    BatchNormalization joins the block of the layer before it; nested models are opened."""
    def walk(m):
        for layer in m.layers:
            if isinstance(layer, keras.Model):
                yield from walk(layer)
            elif layer.weights:
                yield layer

    blocks: list[list] = []
    for layer in walk(model):
        if isinstance(layer, keras.layers.BatchNormalization) and blocks:
            blocks[-1].extend(layer.weights)
        else:
            blocks.append(list(layer.weights))
    return blocks[::-1]


class GradualUnfreeze(ScaledUpdates):
    """finetune.mode=gradual: the backbone starts frozen and thaws one block from the top
    every `every` epochs (the head trains throughout: ULMFiT's gradual unfreezing).

    A frozen block's weights (BatchNorm statistics included) get a zero update
    multiplier, i.e. are put back after every step, so one compiled model and one
    optimizer serve the whole run and a resumed run freezes exactly what the epoch
    says; Keras 3 cannot add variables to an optimizer that is already built.
    """

    def __init__(self, blocks: list[list], every: int):
        super().__init__([], 0.0)
        self.blocks, self.every = blocks, int(every)

    def thawed(self, epoch: int) -> int:
        return min(len(self.blocks), epoch // self.every)

    def on_epoch_begin(self, epoch, logs=None):
        self.variables = [v for blk in self.blocks[self.thawed(epoch):] for v in blk]

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["thawed_blocks"] = float(self.thawed(epoch))


class KeepBest(keras.callbacks.Callback):
    """Keep the weights of the best validation epoch (finetune.keep=best).

    Each better epoch's weights go to `<run>/best.weights.h5` and its number and score
    to `<run>/best.json`, atomically, so a resumed run knows the best so far; `restore`
    loads them at the end. Unlike EarlyStopping(restore_best_weights) this survives a
    kill and does not stop training. Ties keep the earlier epoch.
    """

    def __init__(self, run_dir: Path, monitor: str, mode: str):
        import json

        super().__init__()
        self.path, self.state_path = Path(run_dir) / "best.weights.h5", Path(run_dir) / "best.json"
        self.monitor, self.mode = monitor, mode
        self.state = (json.loads(self.state_path.read_text()) if self.state_path.is_file()
                      else None)

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not math.isfinite(float(value)):
            return
        value = float(value)
        best = None if self.state is None else self.state["value"]
        if best is None or (value > best if self.mode == "max" else value < best):
            from pretrainer.files import atomic_write_json, atomic_write_with

            atomic_write_with(self.path, self.model.save_weights, suffix=".weights.h5")
            self.state = {"epoch": epoch + 1, "monitor": self.monitor, "value": value}
            atomic_write_json(self.state_path, self.state)

    def restore(self, model: keras.Model) -> Optional[dict]:
        """Load the best epoch's weights into `model`; its record, or None."""
        if self.state is None or not self.path.is_file():
            return None
        model.load_weights(self.path)
        return self.state


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard at epoch frequency. Its batch-end hook writes nothing then (no
    profiling, no per-batch writer), but merely defining it makes Keras wait for every
    step; async_safe lets Keras run it off the training thread."""

    async_safe = True
