"""Run an exported model on saved inputs in a fresh process, with only its own runtime.

    python -m pretrainer.exports.parity FORMAT ARTIFACT INPUTS.npz OUTPUTS.npy [SIGNATURE]

FORMAT is saved_model (imports only TensorFlow, and TensorFlow Text's ops as a TF
Serving build links them), litert (the ai_edge_litert interpreter when installed,
else TensorFlow's tf.lite.Interpreter) or onnx (imports only onnxruntime). INPUTS.npz
holds one array per input of the signature (SavedModel) or one array (LiteRT, ONNX),
as a client would send them: uint8 pixels, strings, table columns by name. This is
what a serving runtime sees: no Keras objects and no pretrainer code. Per-request
latencies go to OUTPUTS_latency.npy.
"""

from __future__ import annotations

import sys
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # the runner subprocess imports this module with TensorFlow alone
    from pretrainer.data.records import StoreManifest



def _saved_model(path: str, signature: str):
    import tensorflow as tf

    try:  # text models: the tokenizer's ops live in tensorflow-text, as in TF Serving builds
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    fn = tf.saved_model.load(path).signatures[signature]
    specs = fn.structured_input_signature[1]

    def run(inputs: dict):  # (bytes, e.g. encoded images, stay bytes; text is UTF-8)
        feed = {k: tf.constant(v if v.dtype.kind == "S" else v.astype(str)
                               if specs[k].dtype == tf.string
                               else v.astype(specs[k].dtype.as_numpy_dtype))
                for k, v in inputs.items()}
        outs = fn(**feed)
        key = "probabilities" if "probabilities" in outs else "prediction"
        return outs[key].numpy() if key in outs else next(iter(outs.values())).numpy()

    return run


def _litert(path: str, signature: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TF's own interpreter: deprecated in favour of ai_edge_litert, still works
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    state = {"shape": None}

    def run(inputs: dict):
        (x,) = inputs.values()
        if state["shape"] != x.shape:
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            state["shape"] = x.shape
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def _onnx(path: str, signature: str):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name

    def run(inputs: dict):
        (x,) = inputs.values()
        return session.run(None, {name: x.astype(np.float32)})[0]

    return run


RUNTIMES = {"saved_model": _saved_model, "litert": _litert, "onnx": _onnx}


def _rows(inputs: dict, i: int, j: int) -> dict:
    return {k: v[i:j] for k, v in inputs.items()}


def main(argv: list[str]) -> int:
    fmt, artifact, inputs_path, outputs_path = argv[:4]
    signature = argv[4] if len(argv) > 4 else "serving_default"
    run = RUNTIMES[fmt](artifact, signature)
    with np.load(inputs_path, allow_pickle=False) as data:
        inputs = {k: data[k] for k in data.files}
    n = len(next(iter(inputs.values())))
    # the whole set in batches of 64, then one request at a time for latency
    probs = np.concatenate([np.asarray(run(_rows(inputs, i, i + 64))).reshape(
        min(64, n - i), -1) for i in range(0, n, 64)])
    run(_rows(inputs, 0, 1))  # warm-up for the single-example shape
    times = []
    for i in range(min(n, 50)):
        t0 = time.perf_counter()
        run(_rows(inputs, i, i + 1))
        times.append(time.perf_counter() - t0)
    np.save(outputs_path, probs)
    np.save(outputs_path.replace(".npy", "_latency.npy"), np.array(times))
    return 0


def client_inputs(manifest: StoreManifest, x: np.ndarray, fmt: str) -> dict:
    """The test examples as a client feeds each export's default entry point: PNG files,
    UTF-8 strings or named table columns (SavedModel), float tensors (others)."""
    return manifest.kind.client_inputs(manifest, x, fmt)


def check(fmt: str, artifact, manifest: StoreManifest, x: np.ndarray, y: np.ndarray,
          reference: np.ndarray, cfg, signature: str = "serving_default") -> dict:
    """Run `artifact` in a fresh process with its own runtime and compare with Keras.

    `cfg` is the DeployConfig (parity_atol, quantize, max_accuracy_drop)."""
    import os
    import subprocess
    import tempfile
    from pathlib import Path

    from pretrainer.errors import RunError

    artifact = Path(artifact)
    with tempfile.TemporaryDirectory() as tmp:
        inputs, outputs = os.path.join(tmp, "x.npz"), os.path.join(tmp, "y.npy")
        np.savez(inputs, **client_inputs(manifest, x, fmt))
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
        proc = subprocess.run([sys.executable, "-m", "pretrainer.exports.parity", fmt,
                               str(artifact), inputs, outputs, signature],
                              capture_output=True, text=True, env=env, timeout=900)
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
        "format": fmt, "path": str(artifact), "signature": signature if fmt == "saved_model"
        else None, "quantize": cfg.quantize if fmt == "litert" else None,
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


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
