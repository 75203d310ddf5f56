"""ONNX export: export/model.onnx with named tensors and the metadata a consumer needs.

The graph's input is `images` (float32 NHWC in [0, 1]) or `features`, its output
`probabilities` (or `prediction`), the batch dimension `batch`; `metadata_props`
carries `class_names` (JSON list, label order) and `input_spec` (JSON), readable
with `onnxruntime.InferenceSession(...).get_modelmeta().custom_metadata_map`.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pretrainer import files
from pretrainer.data import modalities
from pretrainer.data.records import StoreManifest
from pretrainer.errors import ConfigError
from pretrainer.exports import sidecar


def require() -> None:
    missing = [m for m in ("tf2onnx", "onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"deploy.formats includes onnx but {', '.join(missing)} "
                          f"{'is' if len(missing) == 1 else 'are'} not installed: "
                          f"pip install 'pretrainer[onnx]'")


def _rename(graph, old: str, new: str) -> None:
    for coll in (graph.input, graph.output, graph.value_info):
        for v in coll:
            if v.name == old:
                v.name = new
    for node in graph.node:
        node.input[:] = [new if n == old else n for n in node.input]
        node.output[:] = [new if n == old else n for n in node.output]


def name_and_describe(model_proto, manifest: StoreManifest) -> None:
    """Give the graph's tensors meaningful names and attach class names and input spec."""
    regression = manifest.regression
    graph = model_proto.graph
    _rename(graph, graph.input[0].name, manifest.kind.tensor_name)
    _rename(graph, graph.output[0].name, "prediction" if regression else "probabilities")
    for v in list(graph.input) + list(graph.output):
        dims = v.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = "batch"
    props = {"class_names": json.dumps(list(manifest.class_names)),
             "input_spec": json.dumps(modalities.input_spec(manifest).get("tensor", {})),
             "task": "regression" if regression else "classification",
             "producer": "pretrainer"}
    del model_proto.metadata_props[:]
    for k, v in props.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = k, v


def export(model, target: Path, manifest: StoreManifest) -> Path:
    import onnx

    def write(path):
        model.export(str(path), format="onnx", verbose=False)
        proto = onnx.load(str(path))
        name_and_describe(proto, manifest)
        onnx.checker.check_model(proto)
        onnx.save(proto, str(path))

    files.atomic_write_with(target, write, suffix=".onnx")
    sidecar.write(target, manifest, "onnx")
    return target
