import os
import subprocess
import sys

import pytest
from conftest import ROOT

# Logical devices must be configured before TensorFlow initialises: run in a subprocess.
SCRIPT = r"""
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from pretrainer.config import TrainerConfig
from pretrainer.train import setup

def run(strategy, devices):
    tcfg = TrainerConfig(strategy=strategy, devices=devices, verbose=False)
    strat, why = setup(tcfg, seed=0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 6)).astype("float32")
    y = (x.sum(1) > 0).astype("int64")
    with strat.scope():
        model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(8, activation="relu"),
                                  keras.layers.Dense(2, activation="softmax")])
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)  # global batch 64
    hist = model.fit(ds, epochs=3, verbose=0)
    return strat.num_replicas_in_sync, hist.history["loss"], model.get_weights()

n1, loss1, w1 = run("cpu", [])
n2, loss2, w2 = run("mirrored", ["/cpu:0", "/cpu:1"])
assert (n1, n2) == (1, 2), (n1, n2)
np.testing.assert_allclose(loss1, loss2, rtol=1e-5)
for a, b in zip(w1, w2):
    np.testing.assert_allclose(a, b, atol=1e-5)
print("OK", loss1[-1], loss2[-1])
"""


def test_mirrored_over_two_logical_cpus_matches_one_device():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().startswith("OK")


def test_unknown_mirrored_device_lists_the_real_ones():
    code = ("from pretrainer.strategy import get_strategy\n"
            "from pretrainer.errors import ConfigError\n"
            "try:\n    get_strategy('mirrored', ['/gpu:7'])\n"
            "except ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert "/gpu:7 not found" in out.stdout and "/cpu:0" in out.stdout


def test_tpu_offline_is_a_clear_error_within_the_timeout():
    code = ("import time\nfrom pretrainer.strategy import get_strategy\n"
            "from pretrainer.errors import ConfigError\n"
            "for tpu in ('local', 'grpc://127.0.0.1:9', 'my-tpu'):\n"
            "    t = time.time()\n"
            "    try:\n        get_strategy('tpu', tpu=tpu, timeout=5)\n"
            "    except ConfigError as e:\n"
            "        print(round(time.time() - t), str(e).count(chr(10)), e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3, out.stdout + out.stderr[-2000:]
    for line in lines:
        seconds, newlines = map(int, line.split()[:2])
        assert seconds <= 6 and newlines == 0
    assert "trainer.tpu=local" in lines[0] and "Cannot reach the TPU" in lines[1]


def test_precision_auto_resolves_to_the_measured_policy():
    from pretrainer.precision import resolve as resolve_precision

    assert resolve_precision("mixed_bfloat16")[0] == "mixed_bfloat16"
    policy, why = resolve_precision("auto")
    assert policy == "float32" and "measured" in why


def test_a_slurm_job_step_becomes_tf_config(monkeypatch):
    """Two nodes, one task each, as `srun --nodes=2 --ntasks-per-node=1` sets it up."""
    from pretrainer import strategy

    for key in ("TF_CONFIG", "CUDA_VISIBLE_DEVICES"):  # (set, then deleted: both are
        monkeypatch.setenv(key, "")  # undone after the test, so TF_CONFIG written here
        monkeypatch.delenv(key)  # does not leak into the next tests' subprocesses)
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "2")
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu-node[07-08]")
    monkeypatch.setenv("SLURM_STEP_TASKS_PER_NODE", "1(x2)")
    assert strategy.slurm_tasks() == 2
    assert strategy.slurm_tf_config(9000) == {
        "cluster": {"worker": ["gpu-node07:9000", "gpu-node08:9000"]},
        "task": {"type": "worker", "index": 1}}
    strategy.use_cluster("auto", 9000)  # a step of 2 tasks and no TF_CONFIG: use SLURM's
    assert strategy.cluster_tasks() == 2 and strategy.worker_index() == 1
    assert not strategy.is_chief()


def test_slurm_asked_for_outside_a_job_step_is_one_line(monkeypatch):
    from pretrainer import strategy
    from pretrainer.errors import ConfigError

    for key in ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_STEP_NODELIST", "TF_CONFIG"):
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    strategy.use_cluster("auto")  # not in SLURM: nothing to do
    assert "TF_CONFIG" not in os.environ
    with pytest.raises(ConfigError, match="trainer.cluster=slurm: .*PROCID.* under srun"):
        strategy.use_cluster("slurm")
