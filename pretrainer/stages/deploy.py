"""deploy: export a finetuned model and prove each artifact predicts like the Keras model.

Formats (`deploy.formats`): saved_model (TF Serving layout export/<name>/<version>/),
litert (export/model.tflite, optionally quantized), onnx (export/model.onnx); the
exporting itself lives in `pretrainer.exports`. Each artifact is loaded in a fresh
process by its own runtime (`pretrainer.exports.parity`) and compared with Keras on
test examples fed as a client sends them; parity.json records the result and a failed
check exits non-zero without marking the run DONE. A model no better than chance is
not published to serving/ unless `deploy.allow_chance=true`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import files, runs
from pretrainer.config import Config, to_yaml
from pretrainer.console import console, esc, info, styled, table, warn
from pretrainer.data import pipeline
from pretrainer.data.records import StoreManifest
from pretrainer.data.store import MANIFEST, join
from pretrainer.errors import ConfigError, ParityError
from pretrainer.exports import card, litert, onnx, parity, savedmodel
from pretrainer.stages.evaluate import load_finetuned, predict_split

# kept importable from here: tests and older callers use these names
next_version, publish, float32_copy = (savedmodel.next_version, savedmodel.publish,
                                       savedmodel.float32_copy)


def serving_base(cfg: Config) -> Path:
    """runs/<experiment>/serving/: one TF Serving model base path across deploy runs."""
    return runs.experiment_dir(cfg.paths.runs, cfg.experiment) / "serving"


def _prune(cfg: Config, model, store: Path, x: np.ndarray, y: np.ndarray,
           reference: np.ndarray) -> dict:
    """Finetune-then-prune: zero the smallest weights, finetune with them held at zero."""
    from pretrainer import prune

    before = float((reference.argmax(1) == y).mean())
    bs = cfg.finetune.batch_size or cfg.trainer.batch_size
    one_hot = cfg.finetune.loss == "categorical_crossentropy"
    train = pipeline.images(store, "train", batch_size=bs, shuffle=True, repeat=True,
                            one_hot=one_hot, seed=cfg.seed, augment=cfg.finetune.augment)
    achieved = prune.prune(model, cfg.deploy.prune_sparsity, train,
                           steps_per_epoch=pipeline.steps(store, "train", bs),
                           epochs=cfg.deploy.prune_epochs,
                           learning_rate=cfg.finetune.learning_rate * 0.1)
    after = float((np.asarray(model.predict(x, verbose=0)).argmax(1) == y).mean())
    result = {"target_sparsity": cfg.deploy.prune_sparsity, "achieved_sparsity": achieved,
              "accuracy_before": before, "accuracy_after": after, "samples": int(len(y)),
              "finetune_epochs": cfg.deploy.prune_epochs}
    info(f"pruned to {achieved:.1%} zero weights: accuracy {before:.4f} -> {after:.4f} "
         f"on {len(y)} test examples")
    return result


def chance_level(y: np.ndarray, reference: np.ndarray) -> Optional[str]:
    """Why the model is no better than guessing on these test examples, or None.

    Classifier: accuracy not above the majority-class rate by 2.33 binomial standard
    errors (one-sided 1 %). Regressor: R² <= 0 (no better than predicting the mean).
    """
    y = np.asarray(y)
    if reference.shape[1] == 1 and np.issubdtype(y.dtype, np.floating):
        var = float(np.var(y))
        r2 = 1.0 - float(np.mean((reference[:, 0] - y) ** 2)) / var if var > 0 else 0.0
        return None if r2 > 0 else f"R² {r2:.3f} on {len(y)} test examples"
    acc = float((reference.argmax(1) == y).mean())
    base = float(np.bincount(y.astype(np.int64)).max()) / len(y)
    bound = base + 2.33 * float(np.sqrt(base * (1 - base) / len(y)))
    return None if acc > bound else (f"accuracy {acc:.3f} on {len(y)} test examples, "
                                     f"majority class {base:.3f}")


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    dcfg = cfg.deploy
    if "onnx" in dcfg.formats:
        onnx.require()
    ft_run, model, store, manifest = load_finetuned(cfg, run)
    if set(dcfg.formats) - set(manifest.kind.formats):
        raise ConfigError(f"{manifest.modality} models export as "
                          f"{', '.join(manifest.kind.formats)} only: "
                          f"{manifest.kind.formats_why}")
    model = float32_copy(model)
    with runs.opened(cfg.paths.runs, cfg.experiment, "deploy", to_yaml(cfg), parent=ft_run,
                     dataset_manifest=join(store, MANIFEST),
                     keep="export/parity.json") as opened:  # kept when parity fails
        _export_and_check(cfg, opened.path, ft_run, model, store, manifest)
    info(f"[green]deploy done[/green]: {esc(opened.path / 'export')}")
    keras.backend.clear_session()
    return opened.path


def _export_and_check(cfg: Config, out: Path, ft_run: Path, model, store,
                      manifest: StoreManifest) -> None:
    """Export each format into `out`/export, check it against Keras in its own runtime,
    write the model card and publish the SavedModel; ParityError when a check fails."""
    dcfg = cfg.deploy
    export = out / "export"
    x, y, reference = predict_split(model, store, "test", limit=dcfg.parity_samples)
    pruning = None
    if dcfg.prune_sparsity > 0:
        pruning = _prune(cfg, model, store, x, y, reference)
        reference = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    artifacts = {}
    if "saved_model" in dcfg.formats:
        version = next_version(serving_base(cfg) / dcfg.name)
        artifacts["saved_model"] = savedmodel.export(model, export / dcfg.name / str(version),
                                                     manifest)
    if "litert" in dcfg.formats:
        # int8 calibration data comes from the unlabeled pool, never from the test split
        calib = next(iter(pipeline.examples(store, "unlabeled", batch_size=200, labels=False,
                                            cache=False, standardize=False))).numpy()
        artifacts["litert"] = litert.export(model, export / "model.tflite", manifest,
                                            dcfg.quantize, calib)
    if "onnx" in dcfg.formats:
        artifacts["onnx"] = onnx.export(model, export / "model.onnx", manifest)
    info(f"[bold]deploy[/bold]: {esc(ft_run / 'model.keras')} -> "
         + ", ".join(esc(p) for p in artifacts.values()))
    checks = {fmt: parity.check(fmt, path, manifest, x, y, reference, dcfg)
              for fmt, path in artifacts.items()}
    files.atomic_write_json(export / "parity.json", {**checks, **({"pruning": pruning}
                                                                 if pruning else {})})
    rows = [[fmt + (f" ({p['quantize']})" if p["quantize"] not in (None, "none") else ""),
             f"{p['max_abs_diff']:.2e}", f"{p['label_agreement']:.2%}",
             "n/a" if p["accuracy_delta"] is None else f"{p['accuracy_delta'] * 100:+.2f}",
             f"{p['latency_ms_p50']:.2f}",
             f"{p['latency_ms_p95']:.2f}", f"{p['size_bytes'] / 1e6:.2f}",
             styled("yes", "green") if p["passed"] else styled("NO", "red")]
            for fmt, p in checks.items()]
    console.print(table(f"parity vs Keras on {len(x)} test examples",
                        ["format", "max |diff|", "labels agree", "acc Δ pts", "p50 ms",
                         "p95 ms", "size MB", "ok"], rows))
    chance = chance_level(y, reference)
    files.atomic_write_text(export / "MODEL_CARD.md",
                           card.render(dcfg.name, manifest, ft_run, checks, model,
                                       pruning=pruning, chance=chance, cfg=cfg))
    failed = [fmt for fmt, p in checks.items() if not p["passed"]]
    runs.update_manifest(out, exports={f: str(p) for f, p in artifacts.items()}, parity=checks,
                         pruning=pruning, chance_level=chance,
                         export=str(artifacts.get("saved_model") or next(iter(artifacts.values()))))
    if failed:
        raise ParityError(f"parity failed for {', '.join(failed)} ({checks[failed[0]]['threshold']}"
                          f" not met); the artifacts are kept in {export} but the deploy run "
                          f"is not marked DONE")
    if "saved_model" in artifacts and chance and not dcfg.allow_chance:
        warn(f"not published to {esc(serving_base(cfg) / dcfg.name)}: the model is no better "
             f"than chance ({chance}). The exports are in {esc(export)}; "
             f"deploy.allow_chance=true publishes it anyway")
    elif "saved_model" in artifacts:
        published = publish(artifacts["saved_model"], serving_base(cfg) / dcfg.name)
        runs.update_manifest(out, serving=str(published))
        info(f"TF Serving model base path: {esc(published.parent)} (version {published.name})")
