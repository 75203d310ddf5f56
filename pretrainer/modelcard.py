"""MODEL_CARD.md: what a deployed model is, where it came from, how good it is, where not to use it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from pretrainer import runs


def _evaluation_of(finetune_run: Path) -> Optional[dict]:
    """metrics.json of the newest finished evaluate run of this finetune run, if any."""
    exp = Path(finetune_run).parent
    for ev in sorted(exp.glob("evaluate-*"), reverse=True):
        if runs.is_done(ev) and runs.read_manifest(ev).get("parent_run") == str(
                Path(finetune_run).resolve()):
            return json.loads((ev / "metrics.json").read_text())
    return None


def _task(dataset: dict) -> str:
    if dataset.get("task") == "regression":
        return (f"Regression of `{dataset['source'].get('target')}` from table rows of "
                f"{dataset['shape'][0]} encoded features ({', '.join(dataset.get('feature_names', [])[:20])}).")
    names = ", ".join(dataset["class_names"][:20]) + (", …" if dataset["num_classes"] > 20 else "")
    if dataset["modality"] == "tabular":
        return (f"Classification of table rows ({dataset['shape'][0]} encoded features) into "
                f"{dataset['num_classes']} classes ({names}).")
    return (f"Image classification into {dataset['num_classes']} classes ({names}). Input: images "
            f"of shape {dataset['shape']} (the SavedModel also takes uint8 images of any size "
            f"and resizes them).")


def render(name: str, dataset: dict, finetune_run: Path, parity: dict,
           prune: Optional[dict] = None) -> str:
    ft = runs.read_manifest(finetune_run)
    pre_run = ft.get("parent_run")
    pre = runs.read_manifest(Path(pre_run)) if pre_run else {}
    metrics = _evaluation_of(finetune_run)
    splits = dataset["splits"]
    lines = [
        f"# Model card: {name}", "",
        "## Task",
        _task(dataset), "",
        "## Data",
        f"- dataset `{dataset['name']}` from source `{dataset['source'].get('name')}` "
        f"({dataset['source'].get('dataset') or dataset['source'].get('path', '')})",
        f"- pretraining pool (unlabeled): {splits['unlabeled']['count']} examples",
        f"- labeled training examples: {splits['train']['count']} "
        f"(labeled_fraction {dataset.get('labeled_fraction')}, "
        f"labels_per_class {dataset.get('labels_per_class')})",
        f"- validation: {splits['val']['count']}, test: {splits['test']['count']}",
        f"- skipped unreadable inputs: {dataset.get('skipped', {}).get('count', 0)}; exact "
        f"test duplicates in the pool: {dataset.get('contamination', {}).get('unlabeled_in_test', 'n/a')}",
        "",
        "## Lineage",
        f"- finetune run: `{finetune_run}` (init {ft.get('init')}, mode {ft.get('mode')})",
        f"- pretrain run: `{pre_run}` (pretext {pre.get('pretext')}, backbone {pre.get('backbone')}, "
        f"health {pre.get('health')})" if pre_run else "- pretrain run: none (trained from scratch)",
        f"- resolved configs: `config.yaml` in each run; versions: {ft.get('versions')}",
        "",
        "## Metrics",
    ]
    if metrics and "mse" in metrics:
        lines += [f"On the {metrics['split']} split ({metrics['samples']} examples): "
                  f"MSE {metrics['mse']:.6g}, MAE {metrics['mae']:.6g}, R² {metrics['r2']:.4f}."]
    elif metrics:
        lines += [f"On the {metrics['split']} split ({metrics['samples']} examples): "
                  f"accuracy {metrics['accuracy']:.4f}, macro F1 {metrics['f1_macro']:.4f}, "
                  f"weighted F1 {metrics['f1_weighted']:.4f}."]
    else:
        lines += ["No evaluate run found for this model: run `pretrainer evaluate --run "
                  f"{finetune_run}`."]
    if prune:
        lines += ["", f"Pruned to {prune['achieved_sparsity']:.1%} zero weights "
                      f"(target {prune['target_sparsity']:.0%}): accuracy "
                      f"{prune['accuracy_before']:.4f} -> {prune['accuracy_after']:.4f} on "
                      f"{prune['samples']} test examples."]
    lines += ["", "## Exports and parity", "",
              "| format | max abs diff | label agreement | accuracy delta | p50 ms | size MB | passed |",
              "|---|---|---|---|---|---|---|"]
    for fmt, p in parity.items():
        lines.append(f"| {fmt}{' (' + p['quantize'] + ')' if p.get('quantize') not in (None, 'none') else ''}"
                     f" | {p['max_abs_diff']:.2e} | {p['label_agreement']:.2%} | "
                     + ("n/a" if p["accuracy_delta"] is None
                        else f"{p['accuracy_delta'] * 100:+.2f} pts")
                     + f" | {p['latency_ms_p50']:.2f} | "
                     f"{p['size_bytes'] / 1e6:.2f} | {p['passed']} |")
    lines += ["", "## Intended use",
              "Classifying images like those in the dataset above, at the input size above. "
              "Scores are measured on a held-out test split drawn from the same source.", "",
              "## Limits",
              f"- Trained with {splits['train']['count']} labeled examples: expect errors on "
              "classes, styles, lighting or sensors the data did not cover.",
              "- Accuracy is an average: see the per-class table in the evaluate run's report.md; "
              "it can be much worse for some classes.",
              "- Not calibrated for, or tested on, inputs from other distributions; do not use for "
              "decisions about people without a separate fairness evaluation.", ""]
    return "\n".join(lines)
