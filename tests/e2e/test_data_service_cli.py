"""`pretrainer data-service`: a dispatcher and two workers on 127.0.0.1, each its own
process as on a cluster, feed a FixMatch finetune (labeled and unlabeled streams both
served); killed with -9 after a checkpoint, the same command resumes and finishes."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
from conftest import ROOT

pytestmark = pytest.mark.e2e

ENV = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
       "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, cwd):
    return subprocess.Popen([sys.executable, "-m", "pretrainer", *args], cwd=cwd, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_line(proc, text: str, timeout: float = 120) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        line = proc.stdout.readline()
        if text in line:
            return line
        if not line and proc.poll() is not None:
            raise AssertionError(f"exited ({proc.returncode}) before '{text}'")
    raise AssertionError(f"no '{text}' within {timeout} s")


def _checkpoint_step(cwd) -> int:
    for state in (cwd / "runs" / "fashion_ae").glob("finetune-*/ckpt/checkpoint"):
        text = state.read_text()
        if 'model_checkpoint_path: "ckpt-' in text:
            return int(text.split('model_checkpoint_path: "ckpt-')[1].split('"')[0])
    return 0


@pytest.fixture
def data_service(tmp_path):
    port = _free_port()
    url = f"grpc://127.0.0.1:{port}"
    servers = [_start(["data-service", "dispatcher", "--port", str(port)], tmp_path)]
    try:
        _wait_for_line(servers[0], "dispatcher listening")
        for _ in range(2):
            servers.append(_start(["data-service", "worker", "--dispatcher", url, "--port", "0",
                                   "--host", "127.0.0.1"], tmp_path))
        for worker in servers[1:]:
            _wait_for_line(worker, "registered")
        yield url
    finally:
        for proc in servers:  # Ctrl-C stops them in ~1.5 s on an idle machine; one
            proc.send_signal(signal.SIGINT)  # deadline for all, as each took 20 s in CI
        deadline = time.time() + 10
        for proc in servers:
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_finetune_fed_by_two_workers_resumes_after_kill_9(tmp_path, data_service):
    args = ["finetune", "--config", "fashion_ae", "finetune.init=scratch",
            "finetune.semi_supervised=fixmatch", "finetune.steps_per_epoch=10",
            "finetune.epochs=4", "trainer.checkpoint_every=5", "trainer.verbose=false",
            "data.max_samples=2000", "data.max_test=100", "backbone.filters=[8,16]",
            "backbone.latent_dim=16", f"data.service={data_service}"]
    proc = _start(args, tmp_path)
    t0 = time.time()
    while _checkpoint_step(tmp_path) < 5:
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() - t0 < 300, "no checkpoint within 300 s"
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    killed_at = _checkpoint_step(tmp_path)
    assert killed_at < 40, "the run ended before it could be killed"

    again = subprocess.run([sys.executable, "-m", "pretrainer", *args], cwd=tmp_path,
                           env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
    assert f"resuming from the checkpoint at step {killed_at}/40" in again.stdout
    run = next((tmp_path / "runs" / "fashion_ae").glob("finetune-*"))
    manifest = json.loads((run / "manifest.json").read_text())
    assert f"from the tf.data service at {data_service}" in manifest["strategy"]
    rows = list(csv.DictReader(open(run / "history.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert (run / "model.keras").is_file()
