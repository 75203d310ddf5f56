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
        "trainer.verbose=false", "data.max_samples=2000", "trainer.batch_size=64",
        "backbone.filters=[16,32]"]


def _start(cwd, args=ARGS):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONUNBUFFERED": "1"}  # what a killed process printed is kept
    return subprocess.Popen([sys.executable, "-m", "pretrainer", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _weights(run):
    import keras

    import pretrainer.models  # noqa: F401  (our layers)

    return keras.saving.load_model(run / "backbone.keras").get_weights()


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


def test_kill9_then_sigterm_then_finish_with_the_weights_of_an_uninterrupted_run(tmp_path):
    straight_dir = tmp_path / "straight"
    straight_dir.mkdir()
    proc = _start(straight_dir)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-2000:]
    (straight,) = (straight_dir / "runs" / "fashion_ae").glob("pretrain-*")
    tmp_path = tmp_path / "killed"
    tmp_path.mkdir()
    proc = _start(tmp_path)
    _wait_for_checkpoint(tmp_path, 10, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)

    proc = _start(tmp_path)  # the same command resumes the killed run
    step = _wait_for_checkpoint(tmp_path, 40, proc)
    signalled = time.time()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 143, err[-2000:]
    # saved, said and gone within 2 s (0.4 s alone on 2 cores; ~1.3 s before the
    # interpreter's TensorFlow teardown was skipped: entry._leave_after_sigterm)
    assert time.time() - signalled < 2.0
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
    # killed twice at two different steps, it ends bit for bit where the straight run did
    import numpy as np

    for a, b in zip(_weights(straight), _weights(run), strict=True):
        np.testing.assert_array_equal(a, b)
    # and every history row, those of the resumed epochs included, covers the whole epoch
    assert (run / "history.csv").read_text() == (straight / "history.csv").read_text()


def test_sigterm_before_training_leaves_no_run_and_exits_at_once(tmp_path):
    """Before the training loop takes SIGTERM over (which saves and stops), SIGTERM used
    to end the process at once, leaving a run of .lock, config.yaml and manifest.json."""
    proc = _start(tmp_path)
    t0 = time.time()
    while not list((tmp_path / "runs" / "fashion_ae").glob("pretrain-*")):
        assert proc.poll() is None and time.time() - t0 < 240, "no run directory appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t1 = time.time()
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err[-2000:]
    assert time.time() - t1 < 15  # (a loaded 2-core machine: a checkpoint may be written)
    for run in (tmp_path / "runs" / "fashion_ae").glob("pretrain-*"):  # none, or resumable
        assert (run / "ckpt" / "checkpoint").is_file(), sorted(p.name for p in run.iterdir())


def test_a_second_process_on_a_live_run_gets_one_line_and_exit_2(tmp_path):
    long = [*ARGS[:3], "trainer.epochs=50", *ARGS[4:]]  # still training when we look
    first = _start(tmp_path, long)
    killed_at = _wait_for_checkpoint(tmp_path, 5, first)
    second = _start(tmp_path, long)  # the same command: it would resume the live run
    out, err = second.communicate(timeout=120)
    assert first.poll() is None  # the first was alive all along
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert second.returncode == 2, err[-2000:]
    assert f"in use by pid {first.pid}" in err and "Traceback" not in err
    # a lock left by a dead process is taken over: the same run resumes and goes on
    third = _start(tmp_path, long)
    killed_at = _wait_for_checkpoint(tmp_path, 0, third)  # where the first one stopped
    _wait_for_checkpoint(tmp_path, killed_at + 5, third)
    third.send_signal(signal.SIGKILL)
    out, _ = third.communicate(timeout=30)
    assert "resuming from the checkpoint at step" in out
    assert len(list((tmp_path / "runs" / "fashion_ae").glob("pretrain-*"))) == 1


def test_two_collects_of_one_new_store_take_turns(tmp_path):
    args = ["collect", "--config", "fashion_ae", "data.max_samples=3000"]
    procs = [_start(tmp_path, args) for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err[-2000:]
    said = " ".join(out for out, _ in results)
    assert "up to date" in said  # the second found the first one's finished store
    data = tmp_path / "data"
    assert not [p.name for p in data.iterdir() if ".partial-" in p.name]


def test_kill_during_a_keras_save_keeps_the_previous_artifact(tmp_path):
    code = f"""
import os, signal, keras
from pretrainer import files
from pretrainer import runs
target = {str(tmp_path / 'model.keras')!r}
m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
files.atomic_write_with(target, m.save, suffix=".keras")
def dying(path):
    m.save(path)
    with open(path, "r+b") as f:
        f.truncate(100)  # half-written ...
    os.kill(os.getpid(), signal.SIGKILL)  # ... and killed
files.atomic_write_with(target, dying, suffix=".keras")
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    import keras

    model = keras.saving.load_model(tmp_path / "model.keras")  # the previous one, whole
    assert model.output_shape == (None, 2)


def test_damaged_files_get_one_line_and_exit_2(tmp_path):
    from conftest import run_cli

    tiny = ["--config", "fashion_ae", "data.max_samples=300", "data.max_test=60",
            "trainer.epochs=1", "trainer.verbose=false", "backbone.filters=[8,16]",
            "backbone.latent_dim=16"]
    assert run_cli(["pretrain", *tiny], cwd=tmp_path).returncode == 0
    (pre,) = (tmp_path / "runs" / "fashion_ae").glob("pretrain-*")
    backbone = pre / "backbone.keras"
    data = bytearray(backbone.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    backbone.write_bytes(bytes(data))
    proc = run_cli(["finetune", *tiny], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "backbone.keras is damaged" in proc.stderr and "Traceback" not in proc.stderr
    # a byte-flipped shard: the shard is named, and collect rebuilds it
    (shard,) = (tmp_path / "data" / "fashion_mnist_small").glob("unlabeled-*.tfrecord")
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    proc = run_cli(["pretrain", *tiny, "trainer.epochs=2"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert shard.name in proc.stderr and "pretrainer collect" in proc.stderr
    proc = run_cli(["collect", *tiny], cwd=tmp_path)
    assert proc.returncode == 0 and "missing or corrupt; rebuilding" in proc.stdout
    from pretrainer.data.store import verify

    assert verify(tmp_path / "data" / "fashion_mnist_small") == []
