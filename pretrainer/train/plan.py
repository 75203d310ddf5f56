"""Derived training values: seeds, precision and strategy (setup), how steps are grouped
into executions, the compile options, the optimizer's step count."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import keras

from pretrainer import precision
from pretrainer.config import TrainerConfig
from pretrainer.errors import ConfigError, UserError


@dataclass(frozen=True)
class TrainingPlan:
    """How one training run is sized, derived once by its stage and read by `fit`."""

    steps_per_epoch: int
    epochs: int
    batch_size: Optional[int] = None  # (for examples/s, and pinning static batches)
    validation_steps: Optional[int] = None  # batches per validation pass
    val_batch_size: Optional[int] = None
    monitor: str = "val_loss"  # what early stopping watches
    mode: str = "min"

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch


class TrainingError(UserError):
    """Training diverged (NaN/Inf loss)."""


def setup(trainer: TrainerConfig, seed: int, workload: Optional[dict] = None,
          data_service: Optional[str] = None):
    """Seed every RNG, set the precision policy and pick the strategy (built before any op).
    Returns (strategy, a line saying which strategy and precision were chosen and why).
    `workload`: what trains ({"modality", "backbone", "pretext"}), for precision auto;
    `data_service`: data.service, the tf.data service the training streams come from."""
    from pretrainer.data import service
    from pretrainer.strategy import get_strategy, is_multi_worker

    keras.utils.set_random_seed(seed)
    policy, precision_why = precision.resolve(trainer.precision, workload)
    keras.mixed_precision.set_global_policy(policy)
    strategy, why = get_strategy(trainer.strategy, trainer.devices, trainer.tpu,
                                 trainer.connect_timeout, cluster=trainer.cluster,
                                 cluster_port=trainer.cluster_port)
    import tensorflow as tf

    from pretrainer.data import pipeline

    static = trainer.static_batches
    if static is None:
        static = isinstance(strategy, tf.distribute.TPUStrategy)
    pipeline.set_static_batches(static)
    if static:
        why += "; batches of one size (static shapes)"
    if data_service and is_multi_worker(strategy):
        raise ConfigError("data.service with several training workers: each would read "
                          "every example. Use it with one training process (any number "
                          "of devices), or drop data.service")
    if data_service:
        service.check_reachable(data_service, trainer.connect_timeout)
        why += (f"; training examples from the tf.data service at {data_service}, in the "
                f"order its workers send them (not reproducible batch for batch; a resumed "
                f"run reads the rest of its epoch's count)")
    service.set_service(data_service)
    return strategy, why if policy == "float32" else f"{why}; {precision_why}"


def optimizer_step(model: keras.Model) -> int:
    """Optimizer steps taken so far (works for mirrored variables too)."""
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def compile_kwargs(trainer: TrainerConfig, *, xla_on_cpu: bool = False) -> dict:
    """Keras compile arguments. trainer.jit_compile=null (auto): XLA on GPUs; on CPUs only
    where the caller measured it faster (`xla_on_cpu`: the language pretexts, whose many
    small ops XLA fuses, 1.3x at 32 tokens and 1.6x at 16; small CNNs ran at 0.59x)."""
    jit = trainer.jit_compile
    if jit is None:
        import tensorflow as tf

        jit = xla_on_cpu or bool(tf.config.list_logical_devices("GPU"))
    return {"steps_per_execution": trainer.steps_per_execution, "jit_compile": jit}


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
