import os
import subprocess
import sys

from conftest import ROOT, run_cli, run_python
from typer.testing import CliRunner

from pretrainer.cli import app

runner = CliRunner()


def _modules_after(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_import_cli_does_not_import_tensorflow():
    out = _modules_after("import sys, pretrainer.cli; "
                         "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    assert out.strip() == "False False"


def test_help_on_every_verb_does_not_import_tensorflow():
    code = (
        "import sys\n"
        "from pretrainer.cli import app\n"
        "for verb in ([], ['collect'], ['pretrain'], ['finetune'], ['evaluate'], ['deploy'],"
        " ['pipeline'], ['configs'], ['doctor'], ['serve'], ['study'], ['predict'], ['embed']):\n"
        "    try:\n"
        "        app(verb + ['--help'], prog_name='pretrainer')\n"
        "    except SystemExit as e:\n"
        "        assert e.code == 0, (verb, e.code)\n"
        "print('TF', 'tensorflow' in sys.modules)\n"
    )
    assert _modules_after(code).strip().endswith("TF False")


def test_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in ("collect", "pretrain", "finetune", "evaluate", "deploy", "pipeline", "configs",
                 "doctor"):
        assert verb in result.output


def test_cfg_prints_resolved_config_with_overrides():
    result = runner.invoke(app, ["pretrain", "--config", "fashion_ae", "--cfg",
                                 "trainer.epochs=7", "data.labeled_fraction=0.05"])
    assert result.exit_code == 0, result.output
    assert "epochs: 7" in result.output
    assert "labeled_fraction: 0.05" in result.output
    assert "experiment: fashion_ae" in result.output


def test_typo_in_override_is_one_line_error_naming_valid_keys(tmp_path):
    proc = run_cli(["pretrain", "trainer.epoch=3"], cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "trainer.epoch" in proc.stderr and "epochs" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) <= 2


def test_unknown_config_lists_the_valid_ones():
    result = runner.invoke(app, ["collect", "--config", "nope"])
    assert result.exit_code == 2
    assert "fashion_ae" in result.output and "cifar_cnn" in result.output


def test_configs_lists_experiments_with_descriptions():
    result = runner.invoke(app, ["configs"])
    assert result.exit_code == 0
    for name in ("fashion_ae", "cifar_ae", "cifar_cnn", "digits_ae"):
        assert name in result.output


def test_user_config_dir_is_searched_first(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "defaults:\n  - pretrainer_schema\n  - data: digits\n  - backbone: conv_ae\n"
        "  - pretext: autoencoder\n  - finetune: classifier\n  - trainer: default\n"
        "  - deploy: default\n  - _self_\n"
        "description: my experiment\ntrainer:\n  epochs: 2\n")
    result = runner.invoke(app, ["pretrain", "--config", "mine", "--config-dir",
                                 str(tmp_path), "--cfg"])
    assert result.exit_code == 0, result.output
    assert "experiment: mine" in result.output and "epochs: 2" in result.output


def test_doctor_checks_the_machine(tmp_path):
    proc = run_cli(["doctor", "--runs-dir", str(tmp_path)], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("versions", "strategy auto", "train step", "SavedModel export", "disk"):
        assert check in proc.stdout


def test_doctor_says_install_gpu_when_the_driver_sees_gpus_tensorflow_does_not(tmp_path):
    fake = tmp_path / "bin" / "nvidia-smi"  # the driver's tool, listing one GPU
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'GPU 0: NVIDIA H200 (UUID: GPU-0)'\n")
    fake.chmod(0o755)
    env = {"PATH": f"{fake.parent}:{os.environ['PATH']}"}
    proc = run_cli(["doctor", "--runs-dir", str(tmp_path), "trainer.strategy=tpu",
                    "trainer.tpu=grpc://127.0.0.1:9", "trainer.connect_timeout=3"],
                   cwd=tmp_path, timeout=300, env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    out = " ".join(proc.stdout.split())
    assert "nvidia-smi lists 1 GPU(s), TensorFlow sees 0" in out and "pretrainer[gpu]" in out
    assert "strategy tpu (trainer.tpu=grpc://127.0.0.1:9)" in out  # the override is honoured


def test_a_failed_precondition_leaves_no_run_and_collects_nothing(tmp_path):
    proc = run_cli(["finetune", "--config", "fashion_ae", "finetune.init=pretrained"],
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "No finished pretrain run" in proc.stderr
    assert not (tmp_path / "data").exists()  # said before collecting anything
    proc = run_cli(["pretrain", "--config", "text_lm", "backbone.causal=false",
                    "data.max_samples=200"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 2 and "backbone.causal=true" in proc.stderr, proc.stderr
    assert not list((tmp_path / "runs").rglob("pretrain-*"))  # no empty run directory


def test_user_values_with_brackets_are_printed_as_written(tmp_path):
    proc = run_cli(["evaluate", "--config", "fashion_ae", "--run", str(tmp_path / "x[/b]y [bold]")],
                   cwd=tmp_path, timeout=120)
    assert proc.returncode == 2 and "x[/b]y [bold]" in proc.stderr, proc.stderr


def test_version_and_short_help():
    from pretrainer import __version__

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"pretrainer {__version__}"
    for args in (["-h"], ["finetune", "-h"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output


def test_help_screen_is_cached_and_printed_without_typer(tmp_path):
    """`pretrainer --help` renders once through Typer, then comes from the cache with
    the standard library alone; another terminal width renders afresh."""
    env = {"PRETRAINER_CACHE": str(tmp_path / "cache"), "COLUMNS": "100"}
    first = run_cli(["--help"], cwd=tmp_path, env=env)
    assert first.returncode == 0 and "Usage: pretrainer" in first.stdout
    assert "collect" in first.stdout and len(list((tmp_path / "cache").iterdir())) == 1
    again = run_cli(["--help"], cwd=tmp_path, env=env)
    assert again.returncode == 0 and again.stdout == first.stdout
    code = ("import runpy, sys; sys.argv = ['pretrainer', '--help']\n"
            "try:\n    runpy.run_module('pretrainer', run_name='__main__')\n"
            "except SystemExit as e:\n    assert e.code == 0, e.code\n"
            "print('typer' in sys.modules, 'rich' in sys.modules, file=sys.stderr)")
    cached = run_python(code, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    assert cached.stdout == first.stdout and cached.stderr.strip() == "False False"
    wider = run_cli(["--help"], cwd=tmp_path, env={**env, "COLUMNS": "140"})
    assert wider.stdout != first.stdout and len(list((tmp_path / "cache").iterdir())) == 2
    # a cache that cannot be written: the screen still comes, every time
    (tmp_path / "file").write_text("")
    ro = run_cli(["--help"], cwd=tmp_path, env={**env, "PRETRAINER_CACHE": str(tmp_path / "file")})
    assert ro.returncode == 0 and ro.stdout == first.stdout


def test_a_trainer_override_that_finetuning_does_not_use_is_reported(capsys):
    from pretrainer.cli.running import note_ignored
    from pretrainer.config import compose

    cfg = compose("fashion_ae", ["trainer.epochs=3"])
    assert cfg.finetune.epochs and cfg.finetune.epochs != 3  # the config sets its own
    note_ignored("finetune", ["trainer.epochs=3"], cfg)
    err = capsys.readouterr().err
    assert "trainer.epochs=3 applies to pretraining" in err
    assert f"finetune.epochs={cfg.finetune.epochs}" in err
    for verb, overrides in (("pretrain", ["trainer.epochs=3"]),  # it does apply there
                            ("finetune", ["trainer.epochs=3", "finetune.epochs=3"])):
        note_ignored(verb, overrides, compose("fashion_ae", overrides))
        assert capsys.readouterr().err == ""


def test_an_override_that_needs_quotes_says_how_to_quote_it():
    import pytest

    from pretrainer.errors import ConfigError
    from pretrainer.sweep import expand

    with pytest.raises(ConfigError, match=r"""cannot parse the override data.path=d/sp ace/ünï: """
                                          r"""quote .* e\.g\. "data\.path='d/sp ace/ünï'\""""):
        expand(["trainer.epochs=1", "data.path=d/sp ace/ünï"])
    assert expand(["data.path='d/sp ace/ünï'"])[0] == [["data.path='d/sp ace/ünï'"]]


def test_a_full_disk_in_tensorflows_own_writes_is_the_full_disk_line():
    from pretrainer.cli.running import explain_damage

    class ResourceExhaustedError(Exception):  # what TensorFlow's SaveV2 raises
        pass

    exc = ResourceExhaustedError("runs/x/ckpt/ckpt-86_temp/part-00000; No space left on device")
    assert explain_damage(None, exc).startswith("the disk is full (while writing)")
    assert explain_damage(None, RuntimeError("something else")) is None


def test_work_that_outlived_a_swallowed_sigterm_still_exits_143(monkeypatch):
    """When SIGTERM's exception is swallowed inside TensorFlow and the work runs on to
    its end, the command still ends as terminated, not with 0."""
    import signal

    import pytest
    import typer

    from pretrainer import errors
    from pretrainer.cli import running

    monkeypatch.setattr(errors, "stop_requested", None)

    def body(cfg):
        errors.stop_requested = signal.SIGTERM  # what the handler records

    with pytest.raises(typer.Exit) as exit_:
        running.execute("fashion_ae", None, [], False, False, body)
    assert exit_.value.exit_code == 143
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
