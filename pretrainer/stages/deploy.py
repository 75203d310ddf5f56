"""deploy: export a finetuned model (TF Serving layout) and prove it predicts like Keras."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.config import Config, to_yaml
from pretrainer.console import console, info, table
from pretrainer.data.store import MANIFEST, read_manifest
from pretrainer.errors import ParityError, RunError
from pretrainer.stages.collect import store_path
from pretrainer.stages.evaluate import load_model, predict_split, resolve_finetune_run


def next_version(model_dir: Path) -> int:
    """TF Serving versions are integers; a new export never overwrites an old one."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def saved_model_parity(export_dir: Path, x: np.ndarray, reference: np.ndarray) -> dict:
    """Load the export in a fresh process (TensorFlow only) and compare with `reference`."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        np.save(inputs, x)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([sys.executable, "-m", "pretrainer.parity", str(export_dir),
                               inputs, outputs], capture_output=True, text=True, env=env,
                              timeout=600)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RunError(f"The SavedModel at {export_dir} failed to load or run in a fresh "
                           f"process: {tail[0]}")
        probs = np.load(outputs)
        latency = np.load(outputs.replace(".npy", "_latency.npy"))
    diff = np.abs(probs.astype(np.float64) - reference.astype(np.float64))
    return {
        "samples": int(len(x)),
        "max_abs_diff": float(diff.max()),
        "label_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "latency_ms_p50": float(np.percentile(latency, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(latency, 95) * 1e3),
        "size_bytes": sum(f.stat().st_size for f in export_dir.rglob("*") if f.is_file()),
    }


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    store = store_path(cfg)
    manifest = read_manifest(store)
    ft_run = resolve_finetune_run(cfg, run)
    model = load_model(ft_run, tuple(manifest["shape"]))
    out = runs.new_run_dir(cfg.paths.runs, cfg.experiment, "deploy")
    runs.write_lineage(out, "deploy", to_yaml(cfg), parent=ft_run,
                       dataset_manifest=store / MANIFEST)
    model_dir = out / "export" / cfg.deploy.name
    version = next_version(model_dir)
    export_dir = model_dir / str(version)
    info(f"[bold]deploy[/bold]: {ft_run / 'model.keras'} -> {export_dir}")
    with runs.atomic_dir(export_dir) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    x, y, reference = predict_split(model, store, "test", limit=cfg.deploy.parity_samples)
    parity = saved_model_parity(export_dir, x, reference)
    parity.update(format="saved_model", path=str(export_dir), atol=cfg.deploy.parity_atol,
                  keras_accuracy=float((reference.argmax(1) == y).mean()),
                  passed=parity["max_abs_diff"] <= cfg.deploy.parity_atol)
    runs.atomic_write_json(out / "export" / "parity.json", {"saved_model": parity})
    console.print(table("parity: exported SavedModel vs Keras", ["format", "max |diff|",
                        "labels agree", "p50 ms", "size MB", "ok"],
                        [["saved_model", f"{parity['max_abs_diff']:.2e}",
                          f"{parity['label_agreement']:.2%}", f"{parity['latency_ms_p50']:.2f}",
                          f"{parity['size_bytes'] / 1e6:.2f}",
                          "[green]yes[/green]" if parity["passed"] else "[red]NO[/red]"]]))
    if not parity["passed"]:
        raise ParityError(f"SavedModel predictions differ from Keras by {parity['max_abs_diff']:.2e}"
                          f" > deploy.parity_atol={cfg.deploy.parity_atol}; the export is kept at "
                          f"{export_dir} but the deploy run is not marked DONE")
    runs.update_manifest(out, export=str(export_dir), version=version, parity=parity)
    runs.mark_done(out)
    info(f"[green]deploy done[/green]: {export_dir}")
    keras.backend.clear_session()
    return out
