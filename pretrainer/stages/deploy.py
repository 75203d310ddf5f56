"""deploy: export a finetuned model and prove each artifact predicts like the Keras model.

Formats (`deploy.formats`): saved_model (TF Serving layout export/<name>/<version>/),
litert (export/model.tflite, optionally quantized), onnx (export/model.onnx).
Each artifact is loaded in a fresh process by its own runtime (pretrainer.parity)
and compared with Keras on test examples; parity.json records the result and a
failed check exits non-zero without marking the run DONE.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

import numpy as np

from pretrainer import modelcard, runs
from pretrainer.config import Config, DeployConfig, to_yaml
from pretrainer.console import console, esc, info, styled, table
from pretrainer.data import pipeline
from pretrainer.data.store import MANIFEST, join
from pretrainer.errors import ConfigError, ParityError, RunError
from pretrainer.stages.evaluate import load_finetuned, predict_split


def next_version(model_dir: Path) -> int:
    """TF Serving versions are integers; a new export never overwrites an old one."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def serving_base(cfg: Config) -> Path:
    """runs/<experiment>/serving/: one TF Serving model base path across deploy runs."""
    return runs.experiment_dir(cfg.paths.runs, cfg.experiment) / "serving"


def publish(saved_model: Path, model_dir: Path) -> Path:
    """Copy a checked SavedModel to model_dir/<version>/; a version is never overwritten."""
    import shutil

    target = model_dir / saved_model.name
    if target.exists():  # a concurrent deploy took this number: take the next free one
        target = model_dir / str(next_version(model_dir))
    with runs.atomic_dir(target) as tmp:
        shutil.copytree(saved_model, tmp, dirs_exist_ok=True)
    return target


def float32_copy(model):
    """The same model computing in float32 (exports of mixed-precision graphs break:
    a bf16 Conv2D becomes a Flex op that the LiteRT interpreter cannot run)."""
    import keras

    def f32(node):
        if isinstance(node, dict):
            if (node.get("class_name") == "DTypePolicy" and "config" in node
                    and str(node["config"].get("name", "")).startswith("mixed_")):
                return {**node, "config": {**node["config"], "name": "float32"}}
            return {k: f32(v) for k, v in node.items()}
        if isinstance(node, list):
            return [f32(v) for v in node]
        if node in ("mixed_bfloat16", "mixed_float16"):
            return "float32"
        return node

    config = model.get_config()
    fixed = f32(config)
    if fixed == config:
        return model
    copy = model.__class__.from_config(fixed)
    copy.set_weights([keras.ops.convert_to_numpy(w).astype("float32") for w in model.weights])
    return copy


def _require_onnx() -> None:
    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"deploy.formats includes onnx but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: "
                          f"pip install 'pretrainer[onnx]'")


def export_saved_model(model, target: Path, class_names: Optional[list[str]] = None) -> Path:
    """SavedModel whose `serving_default` takes raw uint8 images of any size.

    The graph resizes to the training size and scales to [0, 1] itself, so a
    TF Serving client sends pixels, not our preprocessing (exports that drop
    preprocessing are a common failure). It returns `probabilities`, `label`
    and `class_name`. `serve_float` takes already-scaled float32 images.
    """
    import tensorflow as tf

    if len(model.input_shape) == 1:  # text: a batch of strings; the tokenizer is in the graph
        return _export_text(model, target, class_names)
    if len(model.input_shape) != 4:  # table rows: raw encoded features in, standardised inside
        return _export_rows(model, target, class_names)
    h, w, c = model.input_shape[1:]
    names = tf.constant(class_names or [str(i) for i in range(model.output_shape[-1])])

    def outputs(probs):
        label = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "label": label, "class_name": tf.gather(names, label)}

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, c], tf.uint8, name="images")])
    def serve_raw(images):
        # bilinear resize is the identity at the training size (half-pixel centres)
        x = tf.image.resize(tf.cast(images, tf.float32), (h, w))
        return outputs(model(x / 255.0, training=False))

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, c], tf.float32, name="images")])
    def serve_float(images):
        return outputs(model(images, training=False))

    return _write_archive(model, target, serving_default=serve_raw, serve_float=serve_float)


def _write_archive(model, target: Path, **endpoints) -> Path:
    """A SavedModel with the given tf.function endpoints, built aside and renamed in."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in endpoints.items():
        archive.add_endpoint(name, fn)
    with runs.atomic_dir(target) as tmp:
        archive.write_out(str(tmp), verbose=False)
    return target


def _export_text(model, target: Path, class_names: Optional[list[str]]) -> Path:
    """SavedModel for text models: `serving_default` takes a batch of raw strings."""
    import tensorflow as tf

    names = tf.constant(class_names or [str(i) for i in range(model.output_shape[-1])])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="text")])
    def serve(text):
        probs = model(text, training=False)
        label = tf.argmax(probs, axis=-1)
        return {"probabilities": probs, "label": label, "class_name": tf.gather(names, label)}

    return _write_archive(model, target, serving_default=serve)


def _export_rows(model, target: Path, class_names: Optional[list[str]]) -> Path:
    """SavedModel for tabular models: `serving_default` takes float32 feature rows."""
    import tensorflow as tf

    n = model.input_shape[-1]
    regression = not class_names

    @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32, name="features")])
    def serve(features):
        out = model(features, training=False)
        if regression:
            return {"prediction": out[:, 0]}
        label = tf.argmax(out, axis=-1)
        return {"probabilities": out, "label": label,
                "class_name": tf.gather(tf.constant(class_names), label)}

    return _write_archive(model, target, serving_default=serve)


def export_litert(model, target: Path, quantize: str, representative: np.ndarray) -> Path:
    """model.export for float models; the TFLite converter when quantizing (model.export
    has no quantization options in Keras 3.15)."""
    if quantize == "none":
        return runs.atomic_write_with(
            target, lambda p: model.export(str(p), format="litert", verbose=False),
            suffix=".tflite")
    import tensorflow as tf

    with tempfile.TemporaryDirectory() as tmp:
        model.export(tmp, format="tf_saved_model", verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            def rep():
                for i in range(min(len(representative), 200)):
                    yield [representative[i:i + 1].astype(np.float32)]

            converter.representative_dataset = rep
        blob = converter.convert()
    return runs.atomic_write_bytes(target, blob)


def export_onnx(model, target: Path) -> Path:
    return runs.atomic_write_with(
        target, lambda p: model.export(str(p), format="onnx", verbose=False), suffix=".onnx")


def check_parity(fmt: str, artifact: Path, x: np.ndarray, y: np.ndarray, reference: np.ndarray,
                 cfg: DeployConfig) -> dict:
    """Run `artifact` in a fresh process with its own runtime and compare with Keras."""
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "x.npy"), os.path.join(tmp, "y.npy")
        if x.dtype == object:  # text: a unicode array saves without pickling
            x = np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in x])
        np.save(inputs, x)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([sys.executable, "-m", "pretrainer.parity", fmt, str(artifact),
                               inputs, outputs], capture_output=True, text=True, env=env,
                              timeout=900)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise RunError(f"The {fmt} export at {artifact} failed to load or run in its "
                           f"runtime: {tail[0]}")
        probs = np.load(outputs).astype(np.float64)
        latency = np.load(outputs.replace(".npy", "_latency.npy"))
    probs = probs.reshape(len(x), -1)
    diff = np.abs(probs - reference.astype(np.float64))
    regression = reference.shape[1] == 1 and np.issubdtype(np.asarray(y).dtype, np.floating)
    keras_acc = None if regression else float((reference.argmax(1) == y).mean())
    acc = None if regression else float((probs.argmax(1) == y).mean())
    quantized = fmt == "litert" and cfg.quantize != "none"
    if quantized and not regression:
        passed = keras_acc - acc <= cfg.max_accuracy_drop
    elif quantized:  # no accuracy for a regression: allow the quantisation step, relatively
        passed = float(diff.max()) <= 0.05 * (float(np.abs(reference).max()) + 1e-6)
    else:
        passed = float(diff.max()) <= cfg.parity_atol
    size = (sum(f.stat().st_size for f in artifact.rglob("*") if f.is_file())
            if artifact.is_dir() else artifact.stat().st_size)
    return {
        "format": fmt, "path": str(artifact), "quantize": cfg.quantize if fmt == "litert" else None,
        "samples": int(len(x)), "max_abs_diff": float(diff.max()),
        "label_agreement": float((probs.argmax(1) == reference.argmax(1)).mean()),
        "keras_accuracy": keras_acc, "accuracy": acc,
        "accuracy_delta": None if regression else acc - keras_acc,
        "latency_ms_p50": float(np.percentile(latency, 50) * 1e3),
        "latency_ms_p95": float(np.percentile(latency, 95) * 1e3),
        "size_bytes": int(size),
        "threshold": (f"accuracy drop <= {cfg.max_accuracy_drop}" if quantized
                      else f"max_abs_diff <= {cfg.parity_atol}"),
        "passed": bool(passed),
    }


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


def run(cfg: Config, run: Optional[str | Path] = None) -> Path:
    import keras

    dcfg = cfg.deploy
    if "onnx" in dcfg.formats:
        _require_onnx()
    ft_run, model, store, manifest = load_finetuned(cfg, run)
    if manifest["modality"] == "text" and set(dcfg.formats) - {"saved_model"}:
        raise ConfigError("text models export as saved_model only: LiteRT and ONNX cannot "
                          "carry the WordPiece tokenizer's ops. Use deploy=text")
    model = float32_copy(model)
    out = runs.new_run_dir(cfg.paths.runs, cfg.experiment, "deploy")
    runs.write_lineage(out, "deploy", to_yaml(cfg), parent=ft_run,
                       dataset_manifest=join(store, MANIFEST))
    export = out / "export"
    x, y, reference = predict_split(model, store, "test", limit=dcfg.parity_samples)
    pruning = None
    if dcfg.prune_sparsity > 0:
        pruning = _prune(cfg, model, store, x, y, reference)
        reference = np.asarray(model.predict(x, verbose=0), dtype=np.float32)
    artifacts = {}
    if "saved_model" in dcfg.formats:
        version = next_version(serving_base(cfg) / dcfg.name)
        artifacts["saved_model"] = export_saved_model(
            model, export / dcfg.name / str(version), manifest["class_names"])
    if "litert" in dcfg.formats:
        # int8 calibration data comes from the unlabeled pool, never from the test split
        calib = next(iter(pipeline.examples(store, "unlabeled", batch_size=200, labels=False,
                                            cache=False, standardize=False))).numpy()
        artifacts["litert"] = export_litert(model, export / "model.tflite", dcfg.quantize, calib)
    if "onnx" in dcfg.formats:
        artifacts["onnx"] = export_onnx(model, export / "model.onnx")
    info(f"[bold]deploy[/bold]: {esc(ft_run / 'model.keras')} -> "
         + ", ".join(str(p) for p in artifacts.values()))
    parity = {fmt: check_parity(fmt, path, x, y, reference, dcfg)
              for fmt, path in artifacts.items()}
    runs.atomic_write_json(export / "parity.json", {**parity, **({"pruning": pruning}
                                                                  if pruning else {})})
    rows = [[fmt + (f" ({p['quantize']})" if p["quantize"] not in (None, "none") else ""),
             f"{p['max_abs_diff']:.2e}", f"{p['label_agreement']:.2%}",
             "n/a" if p["accuracy_delta"] is None else f"{p['accuracy_delta'] * 100:+.2f}",
             f"{p['latency_ms_p50']:.2f}",
             f"{p['latency_ms_p95']:.2f}", f"{p['size_bytes'] / 1e6:.2f}",
             styled("yes", "green") if p["passed"] else styled("NO", "red")]
            for fmt, p in parity.items()]
    console.print(table(f"parity vs Keras on {len(x)} test examples",
                        ["format", "max |diff|", "labels agree", "acc Δ pts", "p50 ms",
                         "p95 ms", "size MB", "ok"], rows))
    runs.atomic_write_text(export / "MODEL_CARD.md",
                           modelcard.render(dcfg.name, manifest, ft_run, parity, pruning))
    failed = [fmt for fmt, p in parity.items() if not p["passed"]]
    runs.update_manifest(out, exports={f: str(p) for f, p in artifacts.items()}, parity=parity,
                         pruning=pruning,
                         export=str(artifacts.get("saved_model") or next(iter(artifacts.values()))))
    if failed:
        raise ParityError(f"parity failed for {', '.join(failed)} ({parity[failed[0]]['threshold']}"
                          f" not met); the artifacts are kept in {export} but the deploy run "
                          f"is not marked DONE")
    if "saved_model" in artifacts:
        published = publish(artifacts["saved_model"], serving_base(cfg) / dcfg.name)
        runs.update_manifest(out, serving=str(published))
        info(f"TF Serving model base path: {published.parent} (version {published.name})")
    runs.mark_done(out)
    info(f"[green]deploy done[/green]: {esc(export)}")
    keras.backend.clear_session()
    return out
