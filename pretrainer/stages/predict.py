"""predict: batch inference over an image folder, a text file or a CSV.

    pretrainer predict INPUT --run DEPLOY_OR_FINETUNE_RUN [-o predictions.csv|.jsonl]

A deploy run is read through its SavedModel's signatures, as TF Serving would run
it; a finetune run through the same signature functions built on its model.keras
(`exports.savedmodel.signatures`). Inputs stream in batches (bounded memory), are
preprocessed as `collect` preprocessed the training data (`data.inputs`), and the
output is written to a temporary file renamed into place at the end. Unreadable
inputs are skipped, counted and listed.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import runs
from pretrainer.config import Config
from pretrainer.console import console, esc, info, warn
from pretrainer.data import inputs as user_inputs
from pretrainer.data.store import read_manifest
from pretrainer.errors import ConfigError, RunError


def model_entry(cfg: Config, run: Optional[str]):
    """(run dir, store manifest, callable(batch) -> outputs dict, what it is) for a deploy
    or finetune run (default: the latest finished finetune run of the experiment)."""
    import tensorflow as tf

    from pretrainer.data.store import store_path
    from pretrainer.exports import savedmodel
    from pretrainer.stages import load_keras_artifact, trained_store

    run_dir = runs.resolve(cfg.paths.runs, cfg.experiment, "finetune", run,
                           accept=("deploy", "finetune"))
    stage = runs.read_manifest(run_dir).stage
    if stage == "deploy":
        from pretrainer.exports.rest import find_export

        ft_run = runs.read_manifest(run_dir).parent
        manifest = read_manifest(trained_store(ft_run, store_path(cfg)))
        _, path = find_export(run_dir)
        savedmodel.load_text_ops()
        fns = dict(tf.saved_model.load(str(path)).signatures)
        what = f"the SavedModel {path}"
    else:  # finetune
        manifest = read_manifest(trained_store(run_dir, store_path(cfg)))
        shape = manifest.example_shape
        # computing in float32, as deploy exports it: the same predictions either way
        model = savedmodel.float32_copy(load_keras_artifact(run_dir, "model.keras", shape))
        fns = savedmodel.signatures(model, manifest)
        what = f"{run_dir / 'model.keras'}"
    name, arg = manifest.kind.predict_signature
    fn = fns.get(name) or fns["serving_default"]
    dtype = tf.string if manifest.kind.strings else tf.float32

    def call(x: np.ndarray) -> dict:
        out = fn(**{arg: tf.constant(list(x) if x.dtype == object else x, dtype=dtype)})
        return {k: v.numpy() for k, v in out.items()}

    return run_dir, manifest, call, what


def printable(name: str) -> str:
    """A file name as UTF-8 text: bytes that are not UTF-8 (kept by Python as surrogates,
    which a UTF-8 file refuses) are written as \\xNN."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class _Writer:
    """CSV or JSON Lines (by the output's suffix), written aside and renamed in."""

    def __init__(self, path: Path, class_names: list[str], regression: bool,
                 text: bool = False):
        """`text`: a `text` column beside `input` (which says where: "line N")."""
        self.path, self.names, self.regression = path, class_names, regression
        self.text = text
        self.jsonl = path.suffix.lower() in (".jsonl", ".ndjson")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        self.f = open(self.tmp, "w", encoding="utf-8", newline="")
        self.csv = None if self.jsonl else csv.writer(self.f)
        if self.csv:
            where = ["input", "text"] if text else ["input"]
            self.csv.writerow([*where, "prediction"] if regression else
                              [*where, "label", "class_name",
                               *(f"p_{n}" for n in class_names)])

    def write(self, ids: list[str], out: dict, texts=None) -> None:
        texts = list(texts) if self.text else [None] * len(ids)
        heads = [{"input": printable(i), **({"text": t} if self.text else {})}
                 for i, t in zip(ids, texts, strict=True)]
        if self.regression:
            for head, v in zip(heads, out["prediction"].reshape(-1), strict=True):
                if self.jsonl:
                    self.f.write(json.dumps({**head, "prediction": float(v)},
                                            ensure_ascii=False) + "\n")
                else:
                    self.csv.writerow([*head.values(), f"{float(v):.6g}"])
            return
        probs, labels = out["probabilities"], out["label"]
        for head, p, k in zip(heads, probs, labels, strict=True):
            name = self.names[int(k)] if self.names else str(int(k))
            if self.jsonl:
                self.f.write(json.dumps({**head, "label": int(k), "class_name": name,
                                         "probabilities": {n: round(float(q), 6) for n, q in
                                                           zip(self.names, p, strict=True)}},
                                        ensure_ascii=False) + "\n")
            else:
                self.csv.writerow([*head.values(), int(k), name,
                                   *(f"{float(q):.6f}" for q in p)])

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self.f.close()
        self.tmp.unlink(missing_ok=True)


def run(cfg: Config, input_path: str, run: Optional[str] = None,
        output: Optional[str] = None, batch_size: int = 256) -> Path:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    src = Path(input_path).expanduser()
    run_dir, manifest, call, what = model_entry(cfg, run)
    user_inputs.check_modality(src, manifest)
    out_path = Path(output or "predictions.csv").expanduser()
    regression = manifest.regression
    text = manifest.kind.strings
    writer = _Writer(out_path, list(manifest.class_names), regression, text)
    info(f"[bold]predict[/bold]: {esc(src)} with {esc(what)} -> {esc(out_path)}")
    done, skipped = 0, []
    try:
        with Progress(TextColumn("predict"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), console=console, transient=True,
                      disable=not console.is_terminal) as bar:
            task = bar.add_task("", total=user_inputs.count(src))
            for batch in user_inputs.batches(src, manifest, batch_size):
                skipped += batch.skipped
                if len(batch.ids):
                    writer.write(batch.ids, call(batch.x), batch.x if text else None)
                    done += len(batch.ids)
                bar.advance(task, len(batch.ids) + len(batch.skipped))
    except BaseException:
        writer.abort()
        raise
    if done:
        writer.commit()
    else:
        writer.abort()
    if skipped:
        shown = "; ".join(f"{printable(s['input'])} ({s['reason']})" for s in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warn(f"skipped {len(skipped)} unreadable input(s): {esc(shown)}{more}")
    if not done:
        raise RunError(f"no readable inputs in {src}: nothing predicted")
    info(f"[green]predict done[/green]: {done} prediction(s) in {esc(out_path)}")
    return out_path
