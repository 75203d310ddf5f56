"""Placement: which tf.distribute strategy a run uses (`trainer.strategy`).

auto: several GPUs -> MirroredStrategy, one GPU -> that GPU, else the CPU.
Models, optimizers and metrics must be built inside `strategy.scope()`; the
dataset's batch is the global batch, which the strategy splits across replicas.
"""

from __future__ import annotations

import tensorflow as tf

from pretrainer.errors import ConfigError


def describe(strategy: tf.distribute.Strategy) -> str:
    devices = getattr(strategy.extended, "worker_devices", ())
    return f"{type(strategy).__name__}({', '.join(devices)})"


def get_strategy(name: str, devices: list[str] | None = None
                 ) -> tuple[tf.distribute.Strategy, str]:
    """Return (strategy, why it was chosen)."""
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(), f"auto: {len(gpus)} GPUs found"
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name), "auto: one GPU found"
        return tf.distribute.OneDeviceStrategy("/cpu:0"), "auto: no GPU found"
    if name == "cpu":
        return tf.distribute.OneDeviceStrategy("/cpu:0"), "trainer.strategy=cpu"
    if name == "gpu":
        if not gpus:
            raise ConfigError("trainer.strategy=gpu but TensorFlow sees no GPU. "
                              "Use trainer.strategy=auto or cpu")
        return tf.distribute.OneDeviceStrategy(gpus[0].name), "trainer.strategy=gpu"
    if name == "mirrored":
        if devices:
            known = {d.name.lower().replace("/device:", "/").replace("/job:localhost/replica:0/task:0", "")
                     for d in tf.config.list_logical_devices()}
            missing = [d for d in devices if d.lower().replace("/device:", "/") not in known]
            if missing:
                raise ConfigError(f"trainer.devices: {', '.join(missing)} not found. "
                                  f"Choose from: {', '.join(sorted(known))}")
            return (tf.distribute.MirroredStrategy(devices=list(devices)),
                    f"trainer.strategy=mirrored over {', '.join(devices)}")
        return tf.distribute.MirroredStrategy(), "trainer.strategy=mirrored (all local GPUs)"
    raise ConfigError(f"Unknown strategy '{name}'. Choose from: auto, cpu, gpu, mirrored")
