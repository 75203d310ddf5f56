import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _no_leaked_cluster_environment():
    """A test that leaves TF_CONFIG in this worker's environment makes every later CLI
    subprocess wait for a multi-worker cluster that never comes (CI hung on it once)."""
    before = {k: os.environ.get(k) for k in ("TF_CONFIG", "SLURM_PROCID")}
    yield
    after = {k: os.environ.get(k) for k in before}
    assert after == before, f"the test changed {after} (was {before}): use monkeypatch"



def run_cli(args, cwd, timeout=600, env=None):
    """Run `python -m pretrainer ARGS` in a subprocess, as a user's shell would."""
    import subprocess

    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pretrainer", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


def run_python(code: str, cwd=ROOT, timeout=300, env=None):
    """Run `python -c CODE` in a fresh process (a clean interpreter: what a user's other
    program, or a serving runtime, would import)."""
    import subprocess

    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout, env=env)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run with the working directory in a fresh folder (runs/ and data/ land there)."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def interrupt_on_call(monkeypatch, owner, name: str, n: int) -> None:
    """Make the n-th call of owner.name raise KeyboardInterrupt (a kill at that point);
    the calls before it run the real thing."""
    real, calls = getattr(owner, name), {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(owner, name, interrupted)
