"""The one training loop every stage uses: seeds, precision, callbacks, fit."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import signal
import threading
import time
from pathlib import Path
from typing import Optional

import keras
import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from pretrainer import errors, precision
from pretrainer.config import TrainerConfig
from pretrainer.console import console, esc
from pretrainer.errors import UserError
from pretrainer.files import atomic_write_text
from pretrainer.runs import update_manifest


class TrainingError(UserError):
    """Training diverged (NaN/Inf loss)."""


def setup(trainer: TrainerConfig, seed: int, workload: Optional[dict] = None):
    """Seed every RNG, set the precision policy and pick the strategy (built before any op).
    Returns (strategy, a line saying which strategy and precision were chosen and why).
    `workload`: what trains ({"modality", "backbone", "pretext"}), for precision auto."""
    from pretrainer.strategy import get_strategy

    keras.utils.set_random_seed(seed)
    policy, precision_why = precision.resolve(trainer.precision, workload)
    keras.mixed_precision.set_global_policy(policy)
    strategy, why = get_strategy(trainer.strategy, trainer.devices, trainer.tpu,
                                 trainer.connect_timeout)
    import tensorflow as tf

    from pretrainer.data import pipeline

    static = trainer.static_batches
    if static is None:
        static = isinstance(strategy, tf.distribute.TPUStrategy)
    pipeline.set_static_batches(static)
    if static:
        why += "; batches of one size (static shapes)"
    return strategy, why if policy == "float32" else f"{why}; {precision_why}"


def optimizer_step(model: keras.Model) -> int:
    """Optimizer steps taken so far (works for mirrored variables too)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def compile_kwargs(trainer: TrainerConfig) -> dict:
    jit = trainer.jit_compile
    if jit is None:  # auto: measured 0.59x for small CNNs with XLA on CPU; GPUs gain from it
        import tensorflow as tf

        jit = bool(tf.config.list_logical_devices("GPU"))
    return {"steps_per_execution": trainer.steps_per_execution, "jit_compile": jit}


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


class Preempted(UserError):
    """SIGTERM/SIGINT arrived: a checkpoint was saved and the run can be resumed."""

    exit_code = 143


class _StopRequest:
    """Set by SIGTERM/SIGINT; read by the checkpoint callback at the next step."""

    def __init__(self):
        # a SIGTERM whose Terminated was swallowed before this loop began stops it at once
        self.signal: Optional[int] = errors.stop_requested

    def __call__(self, signum, frame):
        self.signal = signum


@contextlib.contextmanager
def _catch_stop_signals(flag: _StopRequest):
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    for s in old:
        signal.signal(s, flag)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)


class _StopNow(Exception):
    """Raised from a callback to leave model.fit within one step of a stop signal."""


class StepCheckpoint(keras.callbacks.Callback):
    """Save model + optimizer every `every` steps and at epoch ends; stop on a signal.

    Keras' BackupAndRestore resumes at the start of the interrupted epoch (a kill
    late in an epoch repeats up to a whole epoch of steps); this keeps the loss to
    at most `every` steps, and `fit` resumes from the exact step. Beside each
    checkpoint it keeps the running state of the epoch's metrics, so the history
    row of a resumed epoch averages all of its steps, not only those after the resume.

    No host sync per step: the step is counted here (read from the optimizer once per
    fit), the work happens at batch *begin* (Keras passes no logs there, so nothing
    waits for the step before it), and divergence is checked only when saving, from
    the metrics' running values (a NaN loss makes the epoch's mean loss NaN). So with
    every other callback async-safe, Keras dispatches steps without waiting on them.
    """

    def __init__(self, manager, every: int, stop: _StopRequest):
        super().__init__()
        self.manager, self.every, self.stop = manager, every, stop
        self.last = -1
        self.step = self.epoch_base = 0

    def _save(self) -> bool:
        """Checkpoint this step unless the model diverged (then stop training)."""
        if self.step == self.last:
            return True
        if not _metrics_finite(self.model):  # never checkpoint diverged weights
            self.model.stop_training = True
            return False
        path = self.manager.save(checkpoint_number=self.step)
        save_metric_state(self.model, path)
        self.last = self.step
        return True

    def on_train_begin(self, logs=None):
        self.step = optimizer_step(self.model)

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_base = self.step

    def on_train_batch_begin(self, batch, logs=None):
        self.step = self.epoch_base + batch  # the steps finished before this one
        if self.stop.signal is not None:
            self._save()
            # not stop_training: Keras would still run the epoch's validation pass first
            raise _StopNow()
        if batch and self.step - max(self.last, 0) >= self.every:
            self._save()

    def on_test_batch_begin(self, batch, logs=None):
        # a signal during validation: stop now; the resumed run redoes the steps since
        # the last checkpoint (the same batches, so the same weights)
        if self.stop.signal is not None:
            raise _StopNow()

    def on_epoch_end(self, epoch, logs=None):
        # (an epoch's last step is saved here, after validation, so the checkpoint holds
        # any state validation moved)
        self.step = self.epoch_base + self.params["steps"]
        if _finite(logs):
            self._save()
        else:
            self.model.stop_training = True


def _metrics_finite(model: keras.Model) -> bool:
    for m in model.metrics:
        try:
            values = keras.tree.flatten(m.result())
        except Exception:  # noqa: BLE001 - a metric without a result yet
            continue
        if not all(np.isfinite(np.asarray(keras.ops.convert_to_numpy(v), np.float64)).all()
                   for v in values):
            return False
    return True


class EpochTensorBoard(keras.callbacks.TensorBoard):
    """TensorBoard at epoch frequency. Its batch-end hook writes nothing then (no
    profiling, no per-batch writer), but merely defining it makes Keras wait for every
    step; async_safe lets Keras run it off the training thread."""

    async_safe = True


def _metric_variables(model: keras.Model) -> dict:
    """{key: variable} of the model's metric states, keyed by path (and repeat count)."""
    out, seen = {}, {}
    for v in (v for m in model.metrics for v in m.variables):
        n = seen[v.path] = seen.get(v.path, -1) + 1
        out[f"{v.path}#{n}" if n else v.path] = v
    return out


def save_metric_state(model: keras.Model, ckpt_path: str) -> None:
    """The epoch's running metric totals at this checkpoint, in `<ckpt>.metrics.json`."""
    import json

    state = {k: np.asarray(keras.ops.convert_to_numpy(v)).tolist()
             for k, v in _metric_variables(model).items()}
    atomic_write_text(Path(f"{ckpt_path}.metrics.json"), json.dumps(state))
    ckpt_dir = Path(ckpt_path).parent
    kept = {Path(p).name for p in [ckpt_path]}
    for old in ckpt_dir.glob("*.metrics.json"):  # the manager keeps only the newest few
        prefix = old.name.removesuffix(".metrics.json")
        if prefix not in kept and not any(ckpt_dir.glob(f"{prefix}.index")):
            old.unlink(missing_ok=True)


class RestoreMetricState(keras.callbacks.Callback):
    """In the first (resumed, partial) epoch, add back the metric totals of the steps
    taken before the interruption. Done after the first step, not at epoch begin: Keras
    builds the compiled metrics in the first step. Metric states here are sums (Mean's
    total and count, confusion counts), so adding gives the uninterrupted epoch's values,
    bit for bit (the same float additions in the same order)."""

    def __init__(self, state: Optional[dict]):
        super().__init__()
        self.state = state

    def on_train_batch_end(self, batch, logs=None):
        if not self.state:
            return
        variables = _metric_variables(self.model)
        if set(variables) == set(self.state):
            for k, v in variables.items():
                v.assign(keras.ops.convert_to_numpy(v) + np.asarray(self.state[k], v.dtype))
        else:
            console.print("  [yellow]the interrupted epoch's metrics could not be restored; "
                          "its history row averages the steps after the resume[/yellow]")
        self.state = None


def _finite(logs) -> bool:
    loss = (logs or {}).get("loss")
    return loss is None or math.isfinite(float(loss))


def checkpoint(model: keras.Model):
    """What a checkpoint holds: the model, its optimizer and the model's RNG states.

    Keras' SeedGenerator states (dropout, random augmentation layers, a GAN's noise)
    are variables no layer attribute tracks, so tf.train.Checkpoint(model=...) alone
    would restart them from their initial value on resume and draw other masks.
    """
    import tensorflow as tf

    rng = [v for v in model.variables if v.path.endswith("seed_generator_state")]
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer, rng=rng)


def _restore(model: keras.Model, manager) -> int:
    """Restore the newest readable checkpoint (if any); return its step."""
    return _restore_from(model, manager)[0]


def repair_checkpoint_state(directory: Path) -> None:
    """Remove the temporary folders of checkpoint saves that never finished, and rewrite
    `directory/checkpoint` (TensorFlow's list of the checkpoints) from the
    checkpoint files present when it names none of them: a kill or a full disk while it
    was rewritten leaves it empty or cut, and TensorFlow then refuses the run ("Invalid
    checkpoint state", on every rerun) or silently starts it over."""
    import re
    import shutil

    for temp in Path(directory).glob("ckpt-*_temp"):  # a save cut by a kill or a full disk
        if temp.is_dir():
            shutil.rmtree(temp, ignore_errors=True)
    state = Path(directory) / "checkpoint"
    if not state.is_file():
        return
    present = {p.name.removesuffix(".index") for p in Path(directory).glob("ckpt-*.index")}
    listed = re.findall(r'^model_checkpoint_path: "([^"]+)"', state.read_text(errors="replace"),
                        flags=re.MULTILINE)
    if listed and all(Path(name).name in present for name in listed):
        return
    ordered = sorted((n for n in present if n.removeprefix("ckpt-").isdigit()),
                     key=lambda n: int(n.removeprefix("ckpt-")))
    if not ordered:
        state.unlink()
        return
    atomic_write_text(state, f'model_checkpoint_path: "{ordered[-1]}"\n' + "".join(
        f'all_model_checkpoint_paths: "{n}"\n' for n in ordered[-2:]))
    console.print(f"  [yellow]{esc(state)} was damaged; rebuilt it from the checkpoints "
                  f"present (newest {esc(ordered[-1])})[/yellow]", soft_wrap=True)


def _restore_from(model: keras.Model, manager) -> tuple[int, Optional[str]]:
    """Restore the newest readable checkpoint (if any) into model and optimizer; return
    (its step, its path). A damaged newest checkpoint (a kill or a full disk mid-write)
    falls back to the one before it, saying so; the steps after it are redone, exactly."""
    if not manager.latest_checkpoint:
        return 0, None
    # the optimizer's slots must exist before restore, in the scope the model was built in
    with model.distribute_strategy.scope():
        if hasattr(model, "build_optimizers"):  # several optimizers (GANs)
            model.build_optimizers()
        else:
            model.optimizer.build(model.trainable_variables)
        candidates = list(reversed(manager.checkpoints))
        for i, path in enumerate(candidates):
            try:
                checkpoint(model).restore(path).assert_existing_objects_matched()
            except Exception as exc:  # noqa: BLE001 - truncated, bit-flipped, missing shard
                if i + 1 == len(candidates):
                    raise UserError(f"every checkpoint in {Path(path).parent} is damaged "
                                    f"({type(exc).__name__}); delete that run directory "
                                    f"to start over") from exc
                console.print(f"  [yellow]checkpoint {esc(Path(path).name)} is damaged "
                              f"({esc(type(exc).__name__)}); using "
                              f"{esc(Path(candidates[i + 1]).name)}[/yellow]")
                continue
            return optimizer_step(model), path
    return optimizer_step(model), None


def _metric_state(ckpt_path: Optional[str]) -> Optional[dict]:
    import json

    if not ckpt_path or not Path(f"{ckpt_path}.metrics.json").is_file():
        return None
    return json.loads(Path(f"{ckpt_path}.metrics.json").read_text())


def execution_size(requested: int, steps_per_epoch: int) -> int:
    """The largest number of steps per execution, up to `requested`, dividing an epoch."""
    k = max(1, min(requested, steps_per_epoch))
    while steps_per_epoch % k:
        k -= 1
    return k


def epoch_steps(steps: int, requested: int) -> tuple[int, str]:
    """(steps per epoch, a note when changed): one pass over the split, rounded up to a
    multiple of the requested steps per execution when the pass has no divisor of at
    least half of it (233 steps would otherwise run one step per execution, ~1.5x
    slower). The training stream repeats, so an epoch is a count of steps: a pass
    then ends inside an epoch, and exact resume (by steps) is unaffected."""
    if requested <= 1 or steps < 4 * requested or 2 * execution_size(requested, steps) > requested:
        return steps, ""
    rounded = -(-steps // requested) * requested
    return rounded, (f"steps per epoch {steps} -> {rounded} (a multiple of steps_per_execution "
                     f"{requested}; {steps} has no divisor near it)")


def steps_per_execution(requested: int, steps_per_epoch: int,
                        validation_steps: Optional[int], checkpoint_every: int
                        ) -> tuple[int, int, str]:
    """(steps per execution, checkpoint interval, a note when either was changed).

    Keras runs a whole execution of k steps even past the end of an epoch (it takes
    the next batches of the endless stream, so epochs, resumes and validation passes
    would no longer line up). So k is the largest value up to the requested one that
    divides the epoch's steps and the validation steps, and the checkpoint interval is
    rounded up to a multiple of k: every checkpoint, and so every resume point, then
    falls on an execution boundary, and a resumed run sees exactly the same steps.
    (Stages size the validation batch so its steps are a multiple of k:
    pipeline.validation_batch.)
    """
    k = execution_size(requested, steps_per_epoch)
    while validation_steps and validation_steps % k:
        k = execution_size(k - 1, steps_per_epoch)
    every = -(-checkpoint_every // k) * k
    notes = []
    if k != requested:
        need = f"the {steps_per_epoch} steps per epoch" + (
            f" and the {validation_steps} validation steps" if validation_steps else "")
        notes.append(f"steps_per_execution {requested} -> {k} (it must divide {need})")
    if every != checkpoint_every:
        notes.append(f"checkpoint_every {checkpoint_every} -> {every} (a multiple of {k})")
    return k, every, "; ".join(notes)


def _require_static(title: str, what: str, ds) -> None:
    """TPUs compile one program per input shape: every dimension must be known."""
    import tensorflow as tf

    loose = [spec for spec in tf.nest.flatten(ds.element_spec)
             if not spec.shape.is_fully_defined()]
    if loose:
        raise TrainingError(f"{title}: the {what} input has dynamic shapes "
                            f"({', '.join(str(s.shape) for s in loose[:3])}) but static batches "
                            f"are required (trainer.static_batches, on for TPUs)")


def fit(model: keras.Model, train_data, *, steps_per_epoch: int, epochs: int, run_dir: Path,
        trainer: TrainerConfig, title: str, val_ds=None, validation_steps: Optional[int] = None,
        monitor: str = "val_loss", mode: str = "min",
        restore_from: Optional[Path] = None, extra_callbacks: tuple = (),
        class_weight: Optional[dict] = None,
        batch_size: Optional[int] = None,
        val_batch_size: Optional[int] = None) -> dict[str, list[float]]:
    """Train `model` (already compiled) with checkpoints; resume if run_dir has one.

    Each epoch's line says its time and throughput (examples/s when `batch_size` is
    given); the run manifest gets `fit_seconds`, the training time of this process.

    Logs go to run_dir/history.csv and run_dir/tb, checkpoints to run_dir/ckpt.
    `train_data(start_batch)` returns the endless training stream from that batch
    on (one epoch = `steps_per_epoch` batches); batch k must be the same whatever
    the start (pipeline readers take `start_batch`), which makes a resumed run see
    exactly the batches of an uninterrupted one. A tf.data.Dataset is accepted too
    and is then skipped, which is exact only if each new iterator over it repeats
    the same order. `val_ds` must repeat too and
    yield exactly `validation_steps` batches per pass: Keras 3.15 keeps the
    validation iterator between epochs, so a finite one runs dry.
    """
    import tensorflow as tf

    from pretrainer.strategy import is_multi_worker

    run_dir = Path(run_dir)
    make_train = train_data if callable(train_data) else (
        lambda start: train_data.skip(start) if start else train_data)
    from pretrainer.data import pipeline

    if pipeline.static_batches():
        if batch_size:  # maps after batching (tokenization) lose the static batch dimension
            unpinned = make_train
            make_train = lambda start: pipeline.pin_batch(unpinned(start), batch_size)  # noqa: E731
            val_ds = None if val_ds is None else pipeline.pin_batch(
                val_ds, val_batch_size or batch_size)
        _require_static(title, "training", make_train(0))
        if val_ds is not None:
            _require_static(title, "validation", val_ds)
    ckpt = checkpoint(model)
    repair_checkpoint_state(run_dir / "ckpt")
    manager = tf.train.CheckpointManager(ckpt, str(run_dir / "ckpt"), max_to_keep=2)
    source = manager if restore_from is None else tf.train.CheckpointManager(
        ckpt, str(Path(restore_from) / "ckpt"), max_to_keep=2)  # a non-chief worker
    start, restored = _restore_from(model, source)
    metric_state = _metric_state(restored) if start % steps_per_epoch else None
    total = epochs * steps_per_epoch
    # per-step update scaling (discriminative rates, gradual unfreezing) needs one step
    # per execution: over k steps it would scale their sum
    requested = (1 if any(isinstance(cb, ScaledUpdates) for cb in extra_callbacks)
                 else trainer.steps_per_execution)
    k, every, note = steps_per_execution(requested, steps_per_epoch,
                                         validation_steps if val_ds is not None else None,
                                         trainer.checkpoint_every)
    if start % k:  # a checkpoint from a run with another k: one step at a time, exactly
        note = f"steps_per_execution 1 (resuming at step {start}, not a multiple of {k})"
        k, every = 1, trainer.checkpoint_every
    model.steps_per_execution = k  # read when fit builds its train/test functions
    # how the steps were grouped is no decision of the user's: the run's manifest keeps
    # it (it printed a line at every stage)
    update_manifest(run_dir, execution={"steps_per_execution": k, "checkpoint_every": every,
                                        "note": note})
    if is_multi_worker(model.distribute_strategy):
        return _fit_multi_worker(model, make_train(start), steps_per_epoch=steps_per_epoch,
                                 epochs=epochs,
                                 run_dir=run_dir, trainer=trainer, title=title, val_ds=val_ds,
                                 validation_steps=validation_steps, start=start, manager=manager)
    if start:
        console.print(f"  {esc(title)}: resuming from the checkpoint at step {start}/{total}")
    stop = _StopRequest()
    history_cb = HistoryCSV(run_dir / "history.csv", keep_epochs=start // steps_per_epoch)
    callbacks: list[keras.callbacks.Callback] = [
        *([RestoreMetricState(metric_state)] if metric_state else []),  # (it syncs a step)
        *extra_callbacks,  # first, so the metrics they add reach history.csv and TensorBoard
        history_cb,
        EpochTensorBoard(log_dir=str(run_dir / "tb"), write_graph=False),
        StepCheckpoint(manager, every, stop),
    ]
    if trainer.early_stopping_patience > 0:
        if val_ds is None:
            monitor = monitor.removeprefix("val_")
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor=monitor, mode=mode, patience=trainer.early_stopping_patience,
            restore_best_weights=True))
    if trainer.verbose:
        callbacks.append(RichProgress(title, epochs, steps_per_epoch, batch_size))
    # Segments: the rest of an interrupted epoch, then whole epochs.
    segments = []
    epoch0, done_in_epoch = divmod(start, steps_per_epoch)
    if done_in_epoch:
        segments.append((start, epoch0, steps_per_epoch - done_in_epoch))
        epoch0 += 1
    if epoch0 < epochs:
        segments.append((epoch0 * steps_per_epoch, epoch0, steps_per_epoch))
    fit_t0 = time.perf_counter()
    with _catch_stop_signals(stop):
        for skip, first_epoch, steps in segments:
            last_epoch = first_epoch + 1 if steps != steps_per_epoch else epochs
            try:
                model.fit(make_train(skip), initial_epoch=first_epoch,
                          epochs=last_epoch, steps_per_epoch=steps, validation_data=val_ds,
                          validation_steps=validation_steps, callbacks=callbacks, verbose=0,
                          shuffle=False, class_weight=class_weight)
            except _StopNow:
                for cb in callbacks:  # a live progress bar would keep the terminal
                    if isinstance(cb, RichProgress) and cb.progress is not None:
                        cb.progress.stop()
                break
            if stop.signal is not None or model.stop_training:
                break
    step = optimizer_step(model)
    if (run_dir / "manifest.json").is_file():
        from pretrainer import runs

        runs.update_manifest(run_dir, fit_seconds=round(time.perf_counter() - fit_t0, 2))
    if stop.signal is not None:
        raise Preempted(f"{title}: stopped by {signal.Signals(stop.signal).name} at step "
                        f"{step}/{total}; checkpoint saved in {run_dir / 'ckpt'}. Run the same "
                        f"command again to resume")
    history = history_cb.columns()
    losses = history.get("loss", [])
    if not losses or not all(math.isfinite(v) for v in losses):
        good = manager.latest_checkpoint
        raise TrainingError(f"{title}: the loss became NaN/Inf near step {step} of {total}. "
                            f"Last good checkpoint: {good or 'none'}. Lower the learning rate "
                            f"or check the data")
    return history


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
    import tensorflow as tf

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
