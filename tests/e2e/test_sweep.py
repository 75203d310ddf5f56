"""`-m/--multirun`: every combination as its own run, one table, and a killed sweep that
continues where it stopped."""

import json

import pytest
from conftest import interrupt_on_call
from typer.testing import CliRunner

from pretrainer.cli import app
from pretrainer.stages import finetune

pytestmark = pytest.mark.e2e

ARGS = ["finetune", "-c", "house_linear", "-m", "finetune.learning_rate=0.1,0.05",
        "finetune.epochs=2,3", "trainer.verbose=false"]


def test_a_sweep_runs_each_combination_once_and_resumes_after_a_kill(in_tmp, monkeypatch):
    real = finetune.run
    interrupt_on_call(monkeypatch, finetune, "run", 3)
    result = CliRunner().invoke(app, ARGS)
    assert result.exit_code == 130, result.output
    (sweep,) = (in_tmp / "runs" / "house_linear").glob("sweep-finetune-*")
    assert len(json.loads((sweep / "sweep.json").read_text())["combinations"]) == 2

    monkeypatch.setattr(finetune, "run", real)
    result = CliRunner().invoke(app, ARGS)
    assert result.exit_code == 0, result.output
    assert result.output.count("finished earlier") == 2
    state = json.loads((sweep / "sweep.json").read_text())
    combos = [c["overrides"] for c in state["combinations"]]
    assert len(combos) == 4 and len({tuple(c) for c in combos}) == 4
    runs = {c["run"] for c in state["combinations"]}
    assert len(runs) == 4 and all((p / "DONE").is_file() for p in map(in_tmp.joinpath, runs))
    table = (sweep / "sweep.md").read_text()
    assert "| finetune.learning_rate | finetune.epochs | loss |" in table
    assert table.count("| 0.05 |") == 2 and "| 3 |" in table
    assert all(json.loads((in_tmp / r / "manifest.json").read_text())["epochs"] in (2, 3)
               for r in runs)


def test_several_values_without_multirun_is_a_one_line_error(in_tmp):
    result = CliRunner().invoke(app, ["finetune", "-c", "house_linear", "trainer.epochs=1,2"])
    assert result.exit_code == 2
    assert "trainer.epochs" in result.output and "-m (--multirun)" in result.output


def test_cfg_job_is_accepted_as_hydra_users_type_it():
    result = CliRunner().invoke(app, ["pretrain", "--cfg", "job", "trainer.epochs=4"])
    assert result.exit_code == 0 and "epochs: 4" in result.output


SEARCH = ["finetune", "-c", "house_linear", "-m", "hydra/sweeper=optuna",
          "hydra.sweeper.n_trials=3", "finetune.learning_rate=tag(log, interval(0.01, 0.2))",
          "finetune.epochs=range(2,4)", "trainer.verbose=false"]


def test_an_optuna_search_runs_its_trials_and_continues_after_a_kill(in_tmp, monkeypatch):
    pytest.importorskip("optuna")
    real = finetune.run
    interrupt_on_call(monkeypatch, finetune, "run", 2)
    assert CliRunner().invoke(app, SEARCH).exit_code == 130
    (sweep,) = (in_tmp / "runs" / "house_linear").glob("sweep-finetune-*")
    first = json.loads((sweep / "sweep.json").read_text())["combinations"]
    assert [t["status"] for t in first] == ["done", "running"]

    monkeypatch.setattr(finetune, "run", real)
    result = CliRunner().invoke(app, SEARCH)
    assert result.exit_code == 0, result.output
    state = json.loads((sweep / "sweep.json").read_text())
    trials = state["combinations"]
    assert [t["status"] for t in trials] == ["done"] * 3
    assert trials[0] == first[0] and trials[1]["params"] == first[1]["params"]
    for t in trials:  # each trial its own finished run, with the values Optuna proposed
        assert 0.01 <= t["params"]["finetune.learning_rate"] <= 0.2
        assert t["params"]["finetune.epochs"] in (2, 3)
        manifest = json.loads((in_tmp / t["run"] / "manifest.json").read_text())
        assert manifest["epochs"] == t["params"]["finetune.epochs"]
        assert t["objective"] == "loss" and t["value"] == t["metrics"]["loss"]
    assert state["best"]["loss"] == min(t["value"] for t in trials)
    assert "3 Optuna TPE trials (minimize loss)" in (sweep / "sweep.md").read_text()


def test_a_search_without_multirun_or_with_a_bad_setting_is_one_line(in_tmp):
    result = CliRunner().invoke(app, SEARCH[:3] + SEARCH[4:])
    assert result.exit_code == 2 and "add -m" in result.output
    result = CliRunner().invoke(app, SEARCH + ["hydra.sweeper.storage=x"])
    assert result.exit_code == 2 and "valid: n_trials, direction" in result.output
