"""LiteRT (TFLite) export: export/model.tflite plus labels.txt and model.json beside it.

The flatbuffer's `serving_default` signature takes `images` (float32 NHWC in [0, 1])
or `features` and returns `probabilities` (or `prediction`), so an interpreter's
signature runner shows what each tensor is. Class names and the input spec go in
`labels.txt` / `model.json` beside the model: TFLite's in-file metadata needs the
tflite-support writer, which has no wheels for current Python/TensorFlow.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from pretrainer import files
from pretrainer.data.records import StoreManifest
from pretrainer.exports import sidecar


def float_signature(model, manifest: StoreManifest):
    """The float tensor-in, tensor-out function LiteRT and ONNX both carry."""
    import tensorflow as tf

    regression = manifest.regression
    name = manifest.kind.tensor_name
    out_name = "prediction" if regression else "probabilities"

    @tf.function(input_signature=[tf.TensorSpec([None, *model.input_shape[1:]], tf.float32,
                                                name=name)])
    def serve(x):
        out = model(x, training=False)
        return {out_name: out[:, 0] if regression else out}

    return serve, name, out_name


def export(model, target: Path, manifest: StoreManifest, quantize: str,
           representative: np.ndarray) -> Path:
    import keras
    import tensorflow as tf

    fn, _, _ = float_signature(model, manifest)
    with tempfile.TemporaryDirectory() as tmp:
        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint("serving_default", fn)
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        if quantize != "none":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if quantize == "float16":
            converter.target_spec.supported_types = [tf.float16]
        elif quantize == "int8":
            def rep():
                for i in range(min(len(representative), 200)):
                    yield [representative[i:i + 1].astype(np.float32)]

            converter.representative_dataset = rep
        blob = converter.convert()
    files.atomic_write_bytes(target, blob)
    sidecar.write(target, manifest, "litert", quantize=quantize)
    return target
