"""Run an exported model on saved inputs in a fresh process, with only its own runtime.

    python -m pretrainer.parity FORMAT ARTIFACT INPUTS.npy OUTPUTS.npy

FORMAT is saved_model (imports only TensorFlow), litert (the ai_edge_litert
interpreter when installed, else TensorFlow's tf.lite.Interpreter) or onnx
(imports only onnxruntime). This is what a serving runtime sees: no Keras
objects and no pretrainer code. Per-sample latencies go to OUTPUTS_latency.npy.
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np


def _saved_model(path: str):
    import tensorflow as tf

    try:  # text models: the tokenizer's ops live in tensorflow-text, as in TF Serving builds
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass
    fn = tf.saved_model.load(path).signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()

    raw = spec.dtype == tf.uint8  # pretrainer's raw-image signature: uint8 pixels in

    def run(x):
        if spec.dtype == tf.string:
            x = x.astype(str)
        elif raw:
            x = np.rint(x * 255.0).astype(np.uint8)
        else:
            x = x.astype(spec.dtype.as_numpy_dtype)
        outs = fn(**{name: tf.constant(x)})
        return (outs["probabilities"] if "probabilities" in outs
                else next(iter(outs.values()))).numpy()

    return run


def _litert(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # TF's own interpreter: deprecated in favour of ai_edge_litert, still works
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        import tensorflow as tf

        Interpreter = tf.lite.Interpreter
    interp = Interpreter(model_path=path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    state = {"shape": None}

    def run(x):
        if state["shape"] != x.shape:
            interp.resize_tensor_input(inp["index"], x.shape)
            interp.allocate_tensors()
            state["shape"] = x.shape
        interp.set_tensor(inp["index"], x.astype(inp["dtype"]))
        interp.invoke()
        return interp.get_tensor(out["index"])

    return run


def _onnx(path: str):
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.astype(np.float32)})[0]


RUNTIMES = {"saved_model": _saved_model, "litert": _litert, "onnx": _onnx}


def main(argv: list[str]) -> int:
    fmt, artifact, inputs_path, outputs_path = argv
    run = RUNTIMES[fmt](artifact)
    x = np.load(inputs_path)
    # the whole set in batches of 64, then one request at a time for latency
    probs = np.concatenate([run(x[i:i + 64]) for i in range(0, len(x), 64)])
    run(x[:1])  # warm-up for the single-sample shape
    times = []
    for i in range(min(len(x), 50)):
        t0 = time.perf_counter()
        run(x[i:i + 1])
        times.append(time.perf_counter() - t0)
    np.save(outputs_path, probs)
    np.save(outputs_path.replace(".npy", "_latency.npy"), np.array(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
