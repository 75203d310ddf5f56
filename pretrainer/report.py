"""Side-by-side tables of finished runs (`pretrainer evaluate --compare RUN RUN ...`)."""

from __future__ import annotations

import json
from pathlib import Path

from pretrainer import runs
from pretrainer.console import console, table
from pretrainer.errors import RunError

SHOWN = ("accuracy", "f1_macro", "f1_weighted", "precision_macro", "recall_macro",
         "top5_accuracy", "roc_auc_ovr", "mse", "mae", "r2")


def _metrics_of(run: str) -> tuple[str, dict]:
    path = runs.require_done(run)
    stage = runs.read_manifest(path).stage
    if stage == "finetune":  # its newest evaluation
        evals = [e for e in sorted(path.parent.glob("evaluate-*"), reverse=True)
                 if runs.is_done(e)
                 and runs.read_manifest(e).is_child_of(path)]
        if not evals:
            raise RunError(f"{run} has not been evaluated: run `pretrainer evaluate --run {run}`")
        path = evals[0]
    elif stage != "evaluate":
        raise RunError(f"{run} is a '{stage}' run; compare evaluate or finetune runs")
    return path.name, json.loads((Path(path) / "metrics.json").read_text())


def compare_runs(run_dirs: list[str]) -> None:
    found = [_metrics_of(r) for r in run_dirs]
    keys = [k for k in SHOWN if any(k in m for _, m in found)]
    rows = [["init", *[str(m.get("init")) for _, m in found]],
            ["labels", *[str(m.get("labels")) for _, m in found]],
            ["samples", *[str(m.get("samples")) for _, m in found]]]
    rows += [[k, *[f"{m[k]:.4f}" if isinstance(m.get(k), (int, float)) else "" for _, m in found]]
             for k in keys]
    console.print(table("runs side by side", ["metric", *[name for name, _ in found]], rows))
