"""Two MultiWorkerMirroredStrategy workers on loopback ports, through the CLI."""

import csv
import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e

TINY = ["--config", "fashion_ae", "data.max_samples=600", "data.max_test=100",
        "trainer.epochs=2", "trainer.batch_size=32", "backbone.filters=[8,16]",
        "backbone.latent_dim=16", "trainer.verbose=false", "backbone.batch_norm=false"]


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _losses(run):
    rows = list(csv.DictReader(open(run / "history.csv")))
    return np.array([float(r["loss"]) for r in rows])


def _two_workers(tmp_path, args):
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    scratch = tmp_path / "tmp"  # the workers' TMPDIR: a non-chief trains in a folder there
    scratch.mkdir(exist_ok=True)
    for i in range(2):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": "",
               "TMPDIR": str(scratch),
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker",
                                                                     "index": i}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "pretrainer", "pretrain", *args,
             "trainer.strategy=multi_worker"], cwd=tmp_path, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out[-2000:] + err[-3000:]
    assert not list(scratch.glob("pretrainer-*-worker*"))  # removed when the worker exits
    return [float(re.search(r"checksum ([0-9.]+)", out).group(1)) for out, _ in outs]


def test_batchnorm_statistics_are_the_same_on_every_worker(tmp_path):
    """Each worker updates its moving statistics from its own half of the batch; they are
    averaged before saving, so every variable, not only the trainable ones, agrees."""
    args = [*TINY[:-1], "backbone.batch_norm=true", "trainer.epochs=1"]
    assert run_cli(["collect", *args], cwd=tmp_path).returncode == 0
    sums = _two_workers(tmp_path, args)  # sum of |w| over all weights, BN statistics too
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)


def test_two_workers_match_one_process_and_only_the_chief_writes(tmp_path):
    assert run_cli(["collect", *TINY], cwd=tmp_path).returncode == 0
    sums = _two_workers(tmp_path, TINY)
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)  # both workers end identical

    runs = sorted((tmp_path / "runs" / "fashion_ae").glob("pretrain-*"))
    assert len(runs) == 1 and (runs[0] / "DONE").is_file()  # the chief's run only
    assert (runs[0] / "backbone.keras").is_file()

    single = run_cli(["pretrain", *TINY, "trainer.strategy=cpu"], cwd=tmp_path)
    assert single.returncode == 0, single.stderr[-2000:]
    (one,) = set((tmp_path / "runs" / "fashion_ae").glob("pretrain-*")) - set(runs)
    # the same global batches and updates; all-reduce order differs from one device's sums,
    # and Adam amplifies such float differences a little over the steps
    np.testing.assert_allclose(_losses(runs[0]), _losses(one), rtol=1e-2)
    steps = [json.loads((r / "manifest.json").read_text())["steps"] for r in (runs[0], one)]
    assert steps[0] == steps[1]
