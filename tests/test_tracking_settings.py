"""Which runs are logged to MLflow and how a config becomes MLflow params (no server:
tests/e2e/test_tracking.py starts a real one)."""

from pretrainer import tracking


def test_only_runs_that_ask_for_tracking_are_logged(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.yaml").write_text("tracking:\n  backend: none\n")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "config.yaml").write_text(
        "experiment: x\ntracking:\n  backend: mlflow\n  uri: http://127.0.0.1:5000\n")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "config.yaml").write_text("- not a mapping\n")
    assert tracking.settings(tmp_path / "a") is None
    assert tracking.settings(tmp_path / "c") is None  # (a damaged config: no tracking, no crash)
    assert tracking.settings(tmp_path / "missing") is None
    cfg = tracking.settings(tmp_path / "b")
    assert tracking.tracking_uri(cfg) == "http://127.0.0.1:5000"
    local = tracking.tracking_uri({"paths": {"runs": str(tmp_path / "runs")}})
    assert local == (tmp_path / "runs" / "mlruns").as_uri()  # a file store beside the runs


def test_a_nested_config_becomes_dotted_params():
    flat = tracking._flatten({"trainer": {"epochs": 3, "devices": ["/gpu:0"]}, "seed": 1})
    assert flat == {"trainer.epochs": 3, "trainer.devices": ["/gpu:0"], "seed": 1}
