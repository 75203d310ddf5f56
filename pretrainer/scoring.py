"""Per-example scores of an evaluated model: what evaluate and the classical baseline
write (predictions.npz, in test-split order) and what pipeline, study and the model
card read to compare two models example by example (stats.paired_bootstrap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pretrainer import files

PREDICTIONS = "predictions.npz"


def write_predictions(out_dir: Path, y_true, y_pred, regression: bool) -> Path:
    """predictions.npz: labels and predictions (class indices, or values for regression)."""
    kind = np.float32 if regression else np.int64
    y_true, y_pred = np.asarray(y_true).astype(kind), np.asarray(y_pred).astype(kind)
    return files.atomic_write_with(Path(out_dir) / PREDICTIONS,
                                  lambda p: np.savez(p, y_true=y_true, y_pred=y_pred),
                                  suffix=".npz")


def example_scores(evaluated_run: Path) -> np.ndarray:
    """Per-example score of an evaluated run: 1/0 correct, or minus the squared error."""
    with np.load(Path(evaluated_run) / PREDICTIONS) as d:
        y, p = d["y_true"], d["y_pred"]
    if np.issubdtype(p.dtype, np.floating):
        return -(p.astype(np.float64) - y) ** 2
    return (p == y).astype(np.float64)
