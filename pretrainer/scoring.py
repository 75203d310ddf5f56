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


def evaluations_beside(ev: Path, init: str):
    """(evaluate run, its finetune run, that run's manifest) for each finished evaluation
    beside `ev` (newest first) of a model finetuned with `init` on the same store: the
    models `ev`'s model can be compared with example by example."""
    from pretrainer import runs

    key = runs.read_manifest(ev).dataset_manifest_sha256
    for other in sorted(Path(ev).parent.glob("evaluate-*"), reverse=True):
        if other == Path(ev) or not runs.is_done(other):
            continue
        om = runs.read_manifest(other)
        parent = om.parent
        if om.dataset_manifest_sha256 != key or parent is None or not parent.is_dir():
            continue
        model = runs.read_manifest(parent)
        if model.init == init:
            yield other, parent, model
