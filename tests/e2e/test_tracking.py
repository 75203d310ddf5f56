"""tracking=mlflow against a real `mlflow server` on 127.0.0.1: params, per-epoch metrics,
final metrics, artifacts and the finetune -> evaluate chain, read back through MLflow."""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import run_cli

pytestmark = pytest.mark.e2e
mlflow = pytest.importorskip("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    port = _free_port()
    exe = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                             "--artifacts-destination", str(tmp_path / "artifacts"),
                             "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not start within 120 s")
    yield url
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def test_finetune_and_evaluate_are_logged_and_linked(tmp_path, server):
    args = ["--config", "house_linear", "trainer.verbose=false", "finetune.epochs=200",
            "tracking=mlflow", f"tracking.uri={server}", "tracking.experiment=houses"]
    for verb in ("finetune", "evaluate"):
        proc = run_cli([verb, *args], cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        assert "warning" not in proc.stderr, proc.stderr
    exp = tmp_path / "runs" / "house_linear"
    (ft,) = exp.glob("finetune-*")
    (ev,) = exp.glob("evaluate-*")
    ft_id = json.loads((ft / "manifest.json").read_text())["mlflow_run_id"]
    ev_id = json.loads((ev / "manifest.json").read_text())["mlflow_run_id"]

    client = mlflow.tracking.MlflowClient(tracking_uri=server)
    run = client.get_run(ft_id)
    assert run.data.params["finetune.learning_rate"] == "0.1"
    assert run.data.params["data.target"] == "price"
    assert run.data.tags["pretrainer.stage"] == "finetune" and run.info.run_name == ft.name
    losses = client.get_metric_history(ft_id, "loss")
    assert [m.step for m in losses] == list(range(1, 201)) and losses[-1].value < losses[0].value
    assert "final_loss" in run.data.metrics and "fit_seconds" in run.data.metrics
    names = {a.path for a in client.list_artifacts(ft_id)}
    assert {"config.yaml", "manifest.json", "history.csv", "model.keras"} <= names
    assert "ckpt" not in names
    evaluation = client.get_run(ev_id)
    assert evaluation.data.tags["pretrainer.parent_run_id"] == ft_id  # the chain
    assert evaluation.data.metrics["mse"] < 1.0  # the line price = 2 x area, learned
    assert client.get_experiment(run.info.experiment_id).name == "houses"


def test_tracking_without_mlflow_installed_fails_before_any_work(in_tmp, monkeypatch):
    import importlib.util

    from typer.testing import CliRunner

    from pretrainer.cli import app

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "mlflow" else real(name, *a))
    result = CliRunner().invoke(app, ["finetune", "-c", "house_linear", "tracking=mlflow"])
    assert result.exit_code == 2 and "pip install 'pretrainer[mlflow]'" in result.output
    assert not (in_tmp / "runs").exists() and not (in_tmp / "data").exists()
