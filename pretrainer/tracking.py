"""Experiment tracking: each finished run logged to MLflow (`tracking=mlflow`).

When a run is marked DONE and its config says `tracking.backend: mlflow`, this logs
to `tracking.uri` (an MLflow server, or by default a local store in
<paths.runs>/mlruns, what `mlflow ui --backend-store-uri` opens):

- params: the resolved config, flattened (`finetune.learning_rate`, ...);
- metrics: every column of history.csv per epoch (step = epoch), the final metrics
  of the run (metrics.json, the manifest's final_metrics, fit_seconds);
- artifacts: the run directory's files (config.yaml, manifest.json, history.csv,
  models, reports, plots), not checkpoints or TensorBoard logs;
- tags: stage, run name, dataset checksum, and the parent run (pretrain -> finetune ->
  evaluate/deploy) by name and by MLflow run id, so the chain is linked.

The MLflow run id goes into the run's manifest. A tracking failure (server down) is a
warning: the run itself is finished and kept.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import time
from pathlib import Path
from typing import Optional

from pretrainer import runs

SKIP_DIRS = {"ckpt", "tb"}
MAX_PARAM = 500  # MLflow's limit on a param value's length (6000 on newer servers)


def _flatten(node, prefix: str = "") -> dict:
    out = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def settings(run: Path) -> Optional[dict]:
    """(the run's config as a dict) when it asks for tracking, else None."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        return None
    import yaml

    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(cfg, dict) or (cfg.get("tracking") or {}).get("backend",
                                                                     "none") == "none":

        return None
    return cfg


def tracking_uri(cfg: dict) -> str:
    uri = (cfg.get("tracking") or {}).get("uri") or ""
    if uri:
        return uri
    return (Path(cfg.get("paths", {}).get("runs", "runs")).resolve() / "mlruns").as_uri()


def require_mlflow() -> None:
    from pretrainer.errors import ConfigError

    if importlib.util.find_spec("mlflow") is None:
        raise ConfigError("tracking=mlflow needs MLflow: pip install 'pretrainer[mlflow]'")


def log_run(run: Path) -> Optional[str]:
    """Log a finished run to MLflow; return its MLflow run id (None: not tracked)."""
    cfg = settings(run)
    if cfg is None:
        return None
    from pretrainer.console import warn

    try:
        return _log(Path(run), cfg)
    except ImportError:
        warn(f"{run}: tracking=mlflow but MLflow is not installed (pip install "
             f"'pretrainer[mlflow]'); the run is not logged")
    except Exception as exc:  # noqa: BLE001 - a tracking server's failure is not the run's
        warn(f"{run}: could not log to MLflow at {tracking_uri(cfg)} "
             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})")
    runs.update_manifest(run, mlflow_run_id=None)
    return None


def _log(run: Path, cfg: dict) -> str:
    from mlflow.entities import Metric, Param
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(cfg)
    client = MlflowClient(tracking_uri=uri)
    name = (cfg.get("tracking") or {}).get("experiment") or cfg.get("experiment") or "default"
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp is not None else client.create_experiment(name)
    manifest = runs.read_manifest(run)
    tags = {"pretrainer.stage": str(manifest.stage), "pretrainer.run": run.name,
            "pretrainer.experiment": str(cfg.get("experiment"))}
    for key in ("dataset_manifest_sha256", "dataset_key", "init", "mode", "pretext"):
        if getattr(manifest, key) is not None:
            tags[f"pretrainer.{key}"] = str(getattr(manifest, key))
    parent = manifest.parent
    if parent:
        tags["pretrainer.parent_run"] = parent.name
        parent_id = runs.read_manifest(parent).mlflow_run_id
        if parent_id:
            tags["pretrainer.parent_run_id"] = parent_id
    mlrun = client.create_run(exp_id, run_name=run.name, tags=tags)
    run_id = mlrun.info.run_id
    now = int(time.time() * 1000)
    params = [Param(k, str(v)[:MAX_PARAM]) for k, v in _flatten(cfg).items()]
    metrics = []
    history = run / "history.csv"
    if history.is_file():
        with history.open(newline="") as f:
            for row in csv.DictReader(f):
                step = int(float(row.get("epoch", 0) or 0))
                for k, v in row.items():
                    if k != "epoch" and v not in ("", None):
                        try:
                            metrics.append(Metric(k, float(v), now, step))
                        except ValueError:
                            continue
    final = dict(manifest.final_metrics)
    if (run / "metrics.json").is_file():
        final.update(json.loads((run / "metrics.json").read_text()))
    for k, v in final.items():  # final_<name> beside the per-epoch curves of the same name
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            metrics.append(Metric(f"final_{k}" if history.is_file() else k, float(v), now, 0))
    if manifest.fit_seconds is not None:
        metrics.append(Metric("fit_seconds", float(manifest.fit_seconds), now, 0))
    for i in range(0, max(len(params), len(metrics)), 100):  # MLflow's batch limits
        client.log_batch(run_id, metrics=metrics[i:i + 100], params=params[i:i + 100])
    for path in sorted(run.iterdir()):
        if path.name.startswith(".") or path.name in SKIP_DIRS:
            continue
        if path.is_dir():
            client.log_artifacts(run_id, str(path), artifact_path=path.name)
        else:
            client.log_artifact(run_id, str(path))
    client.set_terminated(run_id)
    runs.update_manifest(run, mlflow_run_id=run_id, mlflow_uri=uri)
    return run_id


runs.on_done(log_run)  # every run marked done is logged when its config says so
