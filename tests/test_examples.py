"""The example scripts run as written: each is executed (DRY_RUN=1 prints the commands it
would run), and every pretrainer command it prints composes into a valid config."""

import os
import shlex
import subprocess

import pytest
import yaml
from conftest import ROOT
from typer.testing import CliRunner

from pretrainer.cli import app

SCRIPTS = sorted((ROOT / "examples").glob("*.sh"))


def _dry_run(script, **env):
    proc = subprocess.run(["bash", str(script), "trainer.epochs=1"], capture_output=True,
                          text=True, timeout=120, cwd="/",  # scripts find the repository
                          env={**os.environ, "DRY_RUN": "1", **env})
    return proc


def _commands(stdout):
    lines = [shlex.split(line) for line in stdout.splitlines()]
    return [words[1:] for words in lines if words and words[0].endswith("pretrainer")]


def _composes(args):
    """`--cfg` on the same verb (doctor: its overrides on pretrain) resolves the config."""
    verb, rest = args[0], args[1:]
    if verb == "doctor":
        verb = "pretrain"
    result = CliRunner().invoke(app, [verb, *rest, "--cfg"])
    assert result.exit_code == 0, (args, result.output)
    return result.output


def test_example_scripts_parse():
    for script in SCRIPTS:
        proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert proc.returncode == 0, f"{script.name}: {proc.stderr}"


def test_multi_gpu_script_scales_both_batches_and_keeps_precision_auto():
    proc = _dry_run(ROOT / "examples" / "multi_gpu_server.sh", NGPU="4")
    assert proc.returncode == 0, proc.stderr
    commands = _commands(proc.stdout)
    assert [c[0] for c in commands] == ["doctor", "pipeline"]
    assert commands[0] == ["doctor"]
    cfg = yaml.safe_load(_composes(commands[1]))
    assert cfg["trainer"]["batch_size"] == 512 and cfg["finetune"]["batch_size"] == 128
    assert cfg["trainer"]["precision"] == "auto" and cfg["trainer"]["epochs"] == 1


def test_multi_gpu_script_without_gpus_says_what_to_do():
    proc = _dry_run(ROOT / "examples" / "multi_gpu_server.sh", NGPU="0")
    assert proc.returncode == 2 and "doctor" in proc.stderr and "install-gpu" in proc.stderr


def test_tpu_script_runs_doctor_on_the_tpu():
    proc = _dry_run(ROOT / "examples" / "tpu_vm.sh", TPU="grpc://10.0.0.2:8470")
    assert proc.returncode == 0, proc.stderr
    doctor, pipeline = _commands(proc.stdout)
    assert doctor == ["doctor", "trainer.strategy=tpu", "trainer.tpu=grpc://10.0.0.2:8470"]
    cfg = _composes(pipeline)
    assert "strategy: tpu" in cfg and "tpu: grpc://10.0.0.2:8470" in cfg
    _composes(doctor)


@pytest.mark.parametrize("hosts,expect", [("a,b", '"worker": ["a:7", "b:7"]'),
                                          ("a:1,b:2", '"worker": ["a:1", "b:2"]')])
def test_multi_worker_script_builds_tf_config(hosts, expect):
    proc = _dry_run(ROOT / "examples" / "multi_worker.sh", HOSTS=hosts, PORT="7", INDEX="1")
    assert proc.returncode == 0, proc.stderr
    assert expect in proc.stdout and '"index": 1' in proc.stdout
    (pretrain,) = _commands(proc.stdout)
    assert "strategy: multi_worker" in _composes(pretrain)


def test_scripts_use_the_projects_venv_when_there_is_one():
    proc = _dry_run(ROOT / "examples" / "tpu_vm.sh")
    first = proc.stdout.split()[0]
    venv = ROOT / ".venv" / "bin" / "pretrainer"
    assert first == (".venv/bin/pretrainer" if venv.exists() else "pretrainer")
