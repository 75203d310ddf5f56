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


def _consecutive_free_ports(n, tries=50):
    for _ in range(tries):
        (base,) = _free_ports(1)
        socks = []
        try:
            for p in range(base, base + n):
                s = socket.socket()
                s.bind(("127.0.0.1", p))
                socks.append(s)
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no consecutive free ports")


def test_the_sbatch_example_trains_two_workers_from_slurms_environment(tmp_path):
    """examples/slurm.sbatch as SLURM runs it, with srun played by tests/fake_slurm/srun
    (two tasks on this machine, each with the SLURM_* variables srun sets):
    trainer.cluster=slurm builds TF_CONFIG from them, and the two workers end equal."""
    from pathlib import Path

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PATH": f"{ROOT / 'tests' / 'fake_slurm'}:{os.environ['PATH']}",
           "SLURM_NTASKS": "2", "SLURM_NODELIST": "localhost", "SLURM_SUBMIT_DIR": str(tmp_path),
           "PRETRAINER": str(Path(sys.executable).with_name("pretrainer")),
           "PORT": str(_consecutive_free_ports(2)), "SRUN_LOG": str(tmp_path / "task"),
           "CUDA_VISIBLE_DEVICES": "", "TMPDIR": str(scratch), "EXP": "fashion_ae"}
    env.pop("TF_CONFIG", None)
    proc = subprocess.run(["bash", str(ROOT / "examples" / "slurm.sbatch"), *TINY[2:]],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=400)
    logs = [(tmp_path / f"task.{i}").read_text() for i in range(2)]
    assert proc.returncode == 0, proc.stderr[-2000:] + "".join(log[-2000:] for log in logs)
    sums = [float(re.search(r"checksum ([0-9.]+)", log).group(1)) for log in logs]
    assert sums[0] == pytest.approx(sums[1], rel=1e-6)
    assert all("2 tasks in TF_CONFIG" in log or "names 2 tasks" in log for log in logs)
    runs = sorted((tmp_path / "runs" / "fashion_ae").glob("pretrain-*"))
    assert len(runs) == 1 and (runs[0] / "DONE").is_file()  # task 0, the chief, wrote it


def test_the_kubernetes_example_gives_each_pod_its_tf_config():
    """The Indexed Job's container script, run as pod 1 of 2 would run it (DRY_RUN: the
    TF_CONFIG it builds, without training)."""
    import yaml

    docs = list(yaml.safe_load_all((ROOT / "examples" / "kubernetes.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert int(env["WORKERS"]) == job["spec"]["completions"] == job["spec"]["parallelism"]
    proc = subprocess.run([*container["command"], container["args"][0]], text=True,
                          capture_output=True, timeout=30,
                          env={**os.environ, **env, "JOB_COMPLETION_INDEX": "1", "DRY_RUN": "1"})
    assert proc.returncode == 0, proc.stderr
    tf_config = json.loads(proc.stdout.split("TF_CONFIG=", 1)[1])
    assert tf_config == {"cluster": {"worker": ["pretrainer-0.pretrainer:12345",
                                                "pretrainer-1.pretrainer:12345"]},
                         "task": {"type": "worker", "index": 1}}
