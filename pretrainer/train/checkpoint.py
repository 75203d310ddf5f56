"""Checkpoints every N steps, exact resume (with the epoch's running metrics), and
stopping on SIGTERM/SIGINT with a checkpoint to resume from."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import Optional

import keras
import numpy as np

from pretrainer import errors
from pretrainer.console import console, esc
from pretrainer.errors import UserError
from pretrainer.files import atomic_write_text
from pretrainer.train.plan import optimizer_step


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
        # the metric totals first, under the name the checkpoint is about to get: a kill
        # between the two then leaves a stray totals file (removed at the next save),
        # never a checkpoint without its totals (whose resumed epoch would average only
        # the steps after the resume)
        ahead = os.path.join(self.manager.directory, "ckpt") + f"-{self.step}"
        save_metric_state(self.model, ahead)
        path = self.manager.save(checkpoint_number=self.step)
        if Path(path) != Path(ahead):  # (another checkpoint name than the manager's default)
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
