"""Placement: which tf.distribute strategy a run uses (`trainer.strategy`).

auto: a TPU when TPU_NAME (or trainer.tpu) names one; MultiWorkerMirroredStrategy
when TF_CONFIG describes a cluster of several tasks; MirroredStrategy over
several GPUs; one GPU; else the CPU. Models, optimizers and metrics must be
built inside `strategy.scope()`; the dataset's batch is the global batch, which
the strategy splits across replicas (and workers).

A strategy is made once per process and reused: MultiWorkerMirroredStrategy
must exist before any eager op and cannot be created twice.
"""

from __future__ import annotations

import json
import os
import re
import socket
from typing import Optional
from urllib.parse import urlparse

import tensorflow as tf

from pretrainer.errors import ConfigError

_CACHE: dict = {}


def cluster_tasks() -> int:
    """Number of tasks TF_CONFIG describes (0 when unset or unreadable)."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("cluster", {})
    except json.JSONDecodeError as exc:
        raise ConfigError(f"TF_CONFIG is not valid JSON: {exc.msg}") from exc
    return sum(len(v) for v in cluster.values())


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
            and strategy.extended._num_workers > 1)  # noqa: SLF001 (no public accessor)


def is_chief(strategy: Optional[tf.distribute.Strategy] = None) -> bool:
    """True unless this process is a non-chief worker of a multi-worker cluster."""
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("task", {})
    except json.JSONDecodeError:
        return True
    if not task or cluster_tasks() <= 1:
        return True
    cluster = json.loads(os.environ["TF_CONFIG"]).get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def worker_index() -> int:
    try:
        task = json.loads(os.environ.get("TF_CONFIG", "") or "{}").get("task", {})
        return int(task.get("index", 0))
    except (json.JSONDecodeError, ValueError):
        return 0


def _multi_worker() -> tf.distribute.Strategy:
    if cluster_tasks() == 0:
        raise ConfigError("trainer.strategy=multi_worker needs TF_CONFIG describing the cluster "
                          "(see examples/multi_worker.sh)")
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        raise ConfigError(f"MultiWorkerMirroredStrategy could not start: "
                          f"{str(exc).splitlines()[0]} (it must be created before TensorFlow "
                          f"runs any op)") from exc


def _tpu(name: str, timeout: float) -> tf.distribute.Strategy:
    """Connect to a TPU with a deadline: offline, resolvers raise or hang for minutes."""
    if name.startswith("grpc://"):
        url = urlparse(name)
        try:
            socket.create_connection((url.hostname, url.port or 8470), timeout=timeout).close()
        except OSError as exc:
            raise ConfigError(f"Cannot reach the TPU at {name} within {timeout:.0f} s "
                              f"({exc.strerror or type(exc).__name__}); check the address "
                              f"and firewall, or use trainer.strategy=auto") from exc
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=None if name in ("", "auto") else name)
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except Exception as exc:  # ValueError, NotFoundError, URLError (no metadata server), ...
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ConfigError(f"No TPU found for trainer.tpu='{name or 'auto'}': {first}. On a TPU "
                          f"VM use trainer.tpu=local; elsewhere give the TPU name or a "
                          f"grpc://host:port address") from exc
    return tf.distribute.TPUStrategy(resolver)


def slurm_tasks() -> int:
    """Tasks of the SLURM job step this process runs in (srun), 0 outside one."""
    try:
        return int(os.environ.get("SLURM_STEP_NUM_TASKS", "0")) if "SLURM_PROCID" in os.environ \
            else 0
    except ValueError:
        return 0


def slurm_tf_config(port_base: int = 8888) -> dict:
    """TF_CONFIG for this task of a SLURM job step, from TensorFlow's SlurmClusterResolver
    (nodes from SLURM_STEP_NODELIST, tasks per node, this task's SLURM_PROCID; ports from
    `port_base` on each node). With GPUs each task gets its share (CUDA_VISIBLE_DEVICES);
    without, none are asked for (the resolver would call nvidia-smi)."""
    from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
        SlurmClusterResolver,
    )

    try:
        gpus = len(tf.config.list_physical_devices("GPU"))
        per_node = max(int(n) for n in re.findall(
            r"\d+", os.environ.get("SLURM_STEP_TASKS_PER_NODE", "1")) or ["1"])
        resolver = SlurmClusterResolver(
            port_base=port_base, gpus_per_node=gpus if gpus else per_node,
            gpus_per_task=max(1, gpus // per_node) if gpus else 1, auto_set_gpu=bool(gpus))
        spec = resolver.cluster_spec().as_dict()
        task_type, task_id = resolver.get_task_info()
    except (RuntimeError, KeyError, ValueError) as exc:
        raise ConfigError(f"trainer.cluster=slurm: {str(exc).splitlines()[0]} (run the "
                          f"command under srun, one task per worker; see "
                          f"examples/slurm.sbatch)") from exc
    return {"cluster": spec, "task": {"type": task_type, "index": task_id}}


def use_cluster(cluster: str, port_base: int = 8888) -> None:
    """Describe a SLURM job step as TF_CONFIG (trainer.cluster=slurm, or auto inside a
    step of several tasks without TF_CONFIG): the rest reads TF_CONFIG alone."""
    if cluster == "tf_config" or (cluster == "auto" and (os.environ.get("TF_CONFIG")
                                                         or slurm_tasks() <= 1)):
        return
    os.environ["TF_CONFIG"] = json.dumps(slurm_tf_config(port_base))


def get_strategy(name: str, devices: list[str] | None = None, tpu: str = "",
                 timeout: float = 30.0, cluster: str = "auto",
                 cluster_port: int = 8888) -> tuple[tf.distribute.Strategy, str]:
    """Return (strategy, why it was chosen); the same one for the same request."""
    key = (name, tuple(devices or ()), tpu, cluster)
    if key not in _CACHE:
        if name in ("auto", "multi_worker"):
            use_cluster(cluster, cluster_port)
        _CACHE[key] = _make(name, devices, tpu, timeout)
    return _CACHE[key]



def _cpu(gpus: list) -> tf.distribute.Strategy:
    """The CPU: TensorFlow's default strategy (no distribution) where no GPU is visible,
    which places everything on the CPU; OneDeviceStrategy("/cpu:0") only where a GPU is
    visible (the default strategy would place ops on it). OneDeviceStrategy("/cpu:0")
    measured 1.6x slower per step for the seed CNN (46.8 vs 28.5 ms, 2-core AMD EPYC,
    Keras fit on the same stream) with ten times the page faults (4,461 vs 441 per step: its distributed input and step
    functions allocate fresh buffers every step, a third of the process's time spent in
    the kernel zeroing pages)."""
    return tf.distribute.OneDeviceStrategy("/cpu:0") if gpus else tf.distribute.get_strategy()


def _make(name: str, devices: list[str] | None, tpu: str, timeout: float):
    if name == "tpu":
        return _tpu(tpu or os.environ.get("TPU_NAME", "local"), timeout), f"trainer.strategy=tpu ({tpu or 'local'})"
    if name == "multi_worker":
        return _multi_worker(), f"trainer.strategy=multi_worker ({cluster_tasks()} tasks in TF_CONFIG)"
    if name == "auto":
        if tpu or os.environ.get("TPU_NAME"):
            which = tpu or os.environ["TPU_NAME"]
            return _tpu(which, timeout), f"auto: TPU '{which}' configured"
        if cluster_tasks() > 1:  # before any device query: collectives are set up at start
            return _multi_worker(), f"auto: TF_CONFIG names {cluster_tasks()} tasks"
    gpus = tf.config.list_logical_devices("GPU")
    if name == "auto":
        if len(gpus) > 1:
            return tf.distribute.MirroredStrategy(), f"auto: {len(gpus)} GPUs found"
        if len(gpus) == 1:
            return tf.distribute.OneDeviceStrategy(gpus[0].name), "auto: one GPU found"
        return _cpu(gpus), "auto: no GPU found"
    if name == "cpu":
        return _cpu(gpus), "trainer.strategy=cpu"
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
    raise ConfigError(f"Unknown strategy '{name}'. Choose from: auto, cpu, gpu, mirrored, "
                      f"multi_worker, tpu")
