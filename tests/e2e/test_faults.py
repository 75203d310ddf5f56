"""Runs that survive kill -9 and SIGTERM, and artifacts that survive a kill mid-write."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e

ARGS = ["pretrain", "--config", "fashion_ae", "trainer.epochs=3", "trainer.checkpoint_every=5",
        "trainer.verbose=false", "data.max_samples=3000", "trainer.batch_size=64"]


def _start(cwd):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen([sys.executable, "-m", "pretrainer", *ARGS], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(cwd, min_step, proc, timeout=240):
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"exited early ({proc.returncode}): {out[-1000:]} {err[-1000:]}")
        for state in (cwd / "runs" / "fashion_ae").glob("pretrain-*/ckpt/checkpoint"):
            text = state.read_text()
            if "ckpt-" in text:
                step = int(text.split('model_checkpoint_path: "ckpt-')[1].split('"')[0])
                if step >= min_step:
                    return step
        time.sleep(0.2)
    raise AssertionError("no checkpoint appeared")


def test_kill9_then_sigterm_then_finish_with_the_full_step_count(tmp_path):
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    proc = _start(tmp_path)  # the same command resumes the killed run
    step = _wait_for_checkpoint(tmp_path, 40, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-2000:]
    assert "resuming from the checkpoint at step" in out
    assert "stopped by SIGTERM" in err and "Run the same command again" in err

    proc = _start(tmp_path)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    resumed_at = int(out.split("resuming from the checkpoint at step ")[1].split("/")[0])
    assert resumed_at >= step
    (run,) = (tmp_path / "runs" / "fashion_ae").glob("pretrain-*")  # one run, continued
    manifest = json.loads((run / "manifest.json").read_text())
    assert (run / "DONE").is_file() and manifest["resumed"] == 2
    data = json.loads((tmp_path / "data" / "fashion_mnist_small" / "manifest.json").read_text())
    per_epoch = -(-data["splits"]["unlabeled"]["count"] // 64)
    assert manifest["steps"] == 3 * per_epoch  # the same as an uninterrupted run
    assert manifest["epochs"] == 3


def test_kill_during_a_keras_save_keeps_the_previous_artifact(tmp_path):
    code = f"""
import os, signal, keras
from pretrainer import runs
target = {str(tmp_path / 'model.keras')!r}
m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
runs.atomic_write_with(target, m.save, suffix=".keras")
def dying(path):
    m.save(path)
    with open(path, "r+b") as f:
        f.truncate(100)  # half-written ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and killed
runs.atomic_write_with(target, dying, suffix=".keras")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    import keras

    model = keras.saving.load_model(tmp_path / "model.keras")  # the previous one, whole
    assert model.output_shape == (None, 2)
