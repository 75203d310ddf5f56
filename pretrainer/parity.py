"""Run a SavedModel on saved inputs in a fresh process that imports only TensorFlow.

    python -m pretrainer.parity EXPORT_DIR INPUTS.npy OUTPUTS.npy

This is what a serving runtime sees: no Keras objects, no pretrainer code, only
the graph and its `serving_default` signature.
"""

from __future__ import annotations

import sys
import time


def main(argv: list[str]) -> int:
    import numpy as np
    import tensorflow as tf

    export_dir, inputs_path, outputs_path = argv
    loaded = tf.saved_model.load(export_dir)
    fn = loaded.signatures["serving_default"]
    (name, spec), = fn.structured_input_signature[1].items()
    x = np.load(inputs_path).astype(spec.dtype.as_numpy_dtype)
    outs = fn(**{name: tf.constant(x)})
    probs = next(iter(outs.values())).numpy()
    times = []
    for i in range(min(len(x), 50)):  # per-sample latency, as a one-request server sees it
        t0 = time.perf_counter()
        fn(**{name: tf.constant(x[i:i + 1])})
        times.append(time.perf_counter() - t0)
    np.save(outputs_path, probs)
    np.save(outputs_path.replace(".npy", "_latency.npy"), np.array(times))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
