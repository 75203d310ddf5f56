"""The SavedModel export (TF Serving's layout: <base>/<name>/<version>/) and its signatures.

Signatures by modality (inputs named for what they are; `serving_default` first):

- images: `serving_default` (also named `serve_bytes`) encoded PNG/JPEG/GIF/BMP bytes
  of any size, decoded and resized in the graph (TF Serving maps a JSON `{"b64": ...}`
  value to such a DT_STRING tensor: `{"instances": [{"b64": ...}]}` works as TF Serving's
  image tutorial sends it); `serve_pixels` uint8 pixels of any size (resized in the
  graph); `serve_float` float32 pixels/255 at the training size.

- text: `serving_default` raw strings (the tokenizer is in the graph).
- table rows: `serving_default` one input per CSV column, encoded in the graph as
  `collect` encodes it; `serve_features` the encoded feature vector.

Classifiers return `probabilities`, `label` and `class_name`; regressors `prediction`.
`assets/labels.txt` (one class name per line, in label order) and
`assets/input_spec.json` travel with the model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pretrainer import files
from pretrainer.data import modalities
from pretrainer.data.records import StoreManifest
from pretrainer.exports import sidecar


def next_version(model_dir: Path) -> int:
    """TF Serving versions are integers; a new export never overwrites an old one."""
    versions = [int(p.name) for p in model_dir.glob("*") if p.is_dir() and p.name.isdigit()]
    return max(versions, default=0) + 1


def publish(saved_model: Path, model_dir: Path) -> Path:
    """Copy a checked SavedModel to model_dir/<version>/; a version is never overwritten."""
    target = model_dir / saved_model.name
    if target.exists():  # a concurrent deploy took this number: take the next free one
        target = model_dir / str(next_version(model_dir))
    with files.atomic_dir(target) as tmp:
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
    if getattr(model, "loss", None) is not None:  # deploy's pruning finetunes the copy
        copy.compile(loss=model.loss)
    return copy


def _outputs(out, class_names: list[str]):
    import tensorflow as tf

    if not class_names:  # a regressor: one number per row
        return {"prediction": out[:, 0]}
    label = tf.argmax(out, axis=-1)
    return {"probabilities": out, "label": label,
            "class_name": tf.gather(tf.constant(class_names), label)}


def signatures(model, manifest: StoreManifest) -> dict:
    """{signature name: tf.function} for `model` trained on the store described by `manifest`.

    `predict` calls these same functions on a finetune run, so a prediction made
    locally and one made by TF Serving from the export go through one graph.
    """
    names = list(manifest.class_names)
    if not manifest.regression and not names:
        names = [str(i) for i in range(model.output_shape[-1])]
    return manifest.kind.signatures(model, manifest, lambda out: _outputs(out, names))


def export(model, target: Path, manifest: StoreManifest) -> Path:
    """Write the SavedModel for `model` at `target` (built aside, renamed in)."""
    import keras

    archive = keras.export.ExportArchive()
    archive.track(model)
    for name, fn in signatures(model, manifest).items():
        archive.add_endpoint(name, fn)
    with files.atomic_dir(target) as tmp:
        archive.write_out(str(tmp), verbose=False)
        assets = Path(tmp) / "assets"
        assets.mkdir(exist_ok=True)
        names = list(manifest.class_names)
        if names:
            (assets / "labels.txt").write_text(sidecar.labels_text(names), encoding="utf-8")
        (assets / "input_spec.json").write_text(
            json.dumps(modalities.input_spec(manifest), indent=2) + "\n", encoding="utf-8")
    return target


def load_text_ops() -> None:
    """Register TensorFlow Text's ops (the WordPiece tokenizer's) before loading a text
    SavedModel; stock TF Serving links the same ops into its model server."""
    try:
        import tensorflow_text  # noqa: F401
    except ImportError:
        pass


def signature_defs(path: Path) -> dict:
    """The SavedModel's SignatureDefs as TF Serving's metadata API prints them (proto JSON)."""
    from google.protobuf import json_format
    from tensorflow.core.protobuf import saved_model_pb2

    sm = saved_model_pb2.SavedModel()
    sm.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    graph = sm.meta_graphs[0]
    return {name: json_format.MessageToDict(sig, preserving_proto_field_name=True)
            for name, sig in graph.signature_def.items() if not name.startswith("__")}
