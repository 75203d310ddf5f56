import json

import pytest

from pretrainer import files, runs
from pretrainer.errors import RunError


def test_atomic_write_leaves_no_temp_and_replaces(tmp_path):
    target = tmp_path / "a.json"
    files.atomic_write_json(target, {"x": 1})
    files.atomic_write_json(target, {"x": 2})
    assert json.loads(target.read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_failed_writer_keeps_the_old_file(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")

    def broken(path):
        path.write_bytes(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        files.atomic_write_with(target, broken)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


def test_latest_run_skips_runs_without_done(tmp_path):
    a = runs.new_run_dir(tmp_path, "exp", "pretrain")
    runs.write_lineage(a, "pretrain", "x: 1\n")
    runs.mark_done(a)
    b = runs.new_run_dir(tmp_path, "exp", "pretrain")  # newer, but interrupted
    runs.write_lineage(b, "pretrain", "x: 1\n")
    assert b.name > a.name
    assert runs.latest_run(tmp_path, "exp", "pretrain") == a
    with pytest.raises(RunError, match="incomplete"):
        runs.require_done(b, "pretrain")
    with pytest.raises(RunError, match="'pretrain' run"):
        runs.require_done(a, "finetune")


def test_no_run_at_all_says_what_to_run(tmp_path):
    with pytest.raises(RunError, match="pretrainer pretrain --config exp"):
        runs.latest_run(tmp_path, "exp", "pretrain")


def test_atomic_dir_refuses_to_overwrite(tmp_path):
    with files.atomic_dir(tmp_path / "1") as d:
        (d / "f").write_text("x")
    assert (tmp_path / "1" / "f").read_text() == "x"
    with pytest.raises(RunError, match="already exists"):
        with files.atomic_dir(tmp_path / "1"):
            pass


def test_backbone_of_another_shape_is_refused_naming_both_shapes(tmp_path):
    import keras

    from pretrainer.stages import load_keras_artifact

    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2)])
    model.save(tmp_path / "backbone.keras")
    with pytest.raises(RunError) as err:
        load_keras_artifact(tmp_path, "backbone.keras", (28, 28, 1), "use finetune.init=scratch")
    assert "(8, 8, 1)" in str(err.value) and "(28, 28, 1)" in str(err.value)
    with pytest.raises(RunError, match="has no model.keras"):
        load_keras_artifact(tmp_path, "model.keras", (8, 8, 1))


def test_artifacts_respect_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        f = files.atomic_write_text(tmp_path / "a.txt", "x")
        with files.atomic_dir(tmp_path / "served") as d:
            (d / "inside").write_text("y")
    finally:
        os.umask(old)
    assert f.stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "served").stat().st_mode & 0o777 == 0o755


def test_a_run_locked_by_a_live_process_is_refused_naming_its_pid(tmp_path):
    import subprocess
    import sys
    import time

    lock = tmp_path / "run" / ".lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pretrainer import files; "
        f"files.acquire_lock(__import__('pathlib').Path({str(lock)!r}), 'run x'); "
        "print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"in use by pid {holder.pid}"):
            files.acquire_lock(lock, "run x")
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    files.acquire_lock(lock, "run x")  # left by a dead process: taken over
    assert json.loads(lock.read_text())["pid"] == __import__("os").getpid()
    files.release_lock(lock)


def test_a_live_run_with_the_same_config_is_refused_before_its_first_checkpoint(tmp_path):
    """A second identical command during the first run's first epoch trained a second
    run beside it; now it is refused, and a dead run without a checkpoint is not."""
    import subprocess
    import sys
    import time

    run, resumed = runs.start_run(tmp_path, "exp", "pretrain", "x: 1\n")
    assert not resumed
    files.release_lock(run / runs.LOCK)  # hand the run to another live process
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; f = open(sys.argv[1], 'a'); "
        "fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"),
        str(run / runs.LOCK)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunError, match=f"run {run} is in use by"):
            runs.start_run(tmp_path, "exp", "pretrain", "x: 1\n")
        other, _ = runs.start_run(tmp_path, "exp", "pretrain", "x: 2\n")  # another config
        assert other != run
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)
    again, resumed = runs.start_run(tmp_path, "exp", "pretrain", "x: 1\n")
    assert again not in (run, other) and not resumed  # dead, never checkpointed: a new run


def test_an_opened_run_is_done_on_success_and_gone_when_it_fails_before_any_progress(
        tmp_path):
    with runs.opened(tmp_path, "exp", "evaluate", "seed: 0\n", extra={"split": "test"}) as r:
        assert (r.path / ".lock").is_file() and not r.resumed
        assert runs.read_manifest(r.path).stage == "evaluate"
    assert runs.is_done(r.path) and not files.holds_lock(r.path / ".lock")

    with pytest.raises(KeyboardInterrupt):
        with runs.opened(tmp_path, "exp", "evaluate", "seed: 0\n") as failed:
            raise KeyboardInterrupt
    assert not failed.path.exists()  # nothing a rerun could use: no empty run left


def test_a_failed_run_that_holds_its_keep_file_stays_for_the_user(tmp_path):
    """deploy: exports that failed their parity check stay, without DONE."""
    with pytest.raises(RuntimeError):
        with runs.opened(tmp_path, "exp", "deploy", "seed: 0\n", keep="export/parity.json") as r:
            files.atomic_write_json(r.path / "export" / "parity.json", {"passed": False})
            raise RuntimeError("parity")
    assert (r.path / "export" / "parity.json").is_file() and not runs.is_done(r.path)


def test_a_killed_run_with_progress_is_resumed_by_the_same_config_only(tmp_path):
    """A study keeps its done cells in study.json: the same command continues it."""
    with pytest.raises(KeyboardInterrupt):
        with runs.opened(tmp_path, "exp", "study", "seed: 1\n", progress="study.json") as first:
            files.atomic_write_json(first.path / "study.json", {"cells": [1]})
            raise KeyboardInterrupt
    files.release_lock(first.path / ".lock")  # (the killed process's lock died with it)
    with runs.opened(tmp_path, "exp", "study", "seed: 2\n", progress="study.json") as other:
        assert not other.resumed and other.path != first.path
    with runs.opened(tmp_path, "exp", "study", "seed: 1\n", progress="study.json") as again:
        assert again.resumed and again.path == first.path
    assert runs.is_done(first.path) and runs.read_manifest(first.path).resumed == 1
