"""A real full disk (a small tmpfs, mounted where the tests run as root): training stops
with the one-line full-disk error, keeps its checkpoint, and after space is freed the
same command resumes to the weights an uninterrupted run ends with, leaving no
half-written checkpoint folder behind."""

import os
import shutil
import subprocess

import numpy as np
import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e

ARGS = ["pretrain", "-c", "fashion_ae", "data.max_samples=300", "data.max_test=60",
        "trainer.epochs=2", "trainer.verbose=false", "backbone.filters=[8,16]",
        "backbone.latent_dim=16", "trainer.checkpoint_every=2"]


@pytest.fixture
def small_disk(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    # 800 KB: the run's first checkpoint fits, its second does not (a ~0.2 MB model)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=800k", "tmpfs", str(disk)],
                      capture_output=True).returncode:
        pytest.skip("this machine does not let tests mount a tmpfs")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _weights(run):
    import keras

    import pretrainer.models  # noqa: F401  (our layers)

    return keras.saving.load_model(run / "backbone.keras").get_weights()


def test_a_full_disk_stops_training_with_one_line_and_the_rerun_resumes(small_disk, tmp_path):
    args = [*ARGS, f"paths.runs={small_disk}/runs", f"paths.data={tmp_path}/data"]
    full = run_cli(args, cwd=tmp_path)
    assert full.returncode == 2, full.stderr[-1500:]
    assert "the disk is full" in full.stderr and "Traceback" not in full.stderr
    (run,) = (small_disk / "runs" / "fashion_ae").glob("pretrain-*")
    assert list((run / "ckpt").glob("ckpt-*.index")), "the checkpoint before the full disk"
    subprocess.run(["mount", "-o", "remount,size=20m", str(small_disk)], check=True)
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-1500:]
    assert "resuming from the checkpoint" in again.stdout + again.stderr
    assert (run / "DONE").is_file() and not list(run.rglob("*_temp"))
    whole = run_cli([*ARGS, f"paths.runs={tmp_path}/runs", f"paths.data={tmp_path}/data"],
                    cwd=tmp_path)
    assert whole.returncode == 0, whole.stderr[-1500:]
    (other,) = (tmp_path / "runs" / "fashion_ae").glob("pretrain-*")
    for a, b in zip(_weights(run), _weights(other), strict=True):
        np.testing.assert_array_equal(a, b)
