"""labels.txt and <model>.json beside a LiteRT or ONNX file: class names in label order
and the input spec, for consumers that read neither the model card nor the file's
own metadata."""

from __future__ import annotations

import json
from pathlib import Path

from pretrainer import files
from pretrainer.data import modalities
from pretrainer.data.records import StoreManifest


def labels_text(names: list[str]) -> str:
    """labels.txt: one class name per line, in label order (beside LiteRT/ONNX files and in
    the SavedModel's assets/)."""
    return "".join(f"{n}\n" for n in names)


def write(artifact: Path, manifest: StoreManifest, fmt: str, **extra) -> None:
    names = list(manifest.class_names)
    if names:
        files.atomic_write_text(artifact.parent / "labels.txt", labels_text(names))
    spec = modalities.input_spec(manifest)
    doc = {"format": fmt, "file": artifact.name, "class_names": names,
           "input": spec.get("tensor"), "outputs": spec["outputs"], **extra}
    if fmt in ("litert", "onnx"):
        regression = manifest.regression
        doc["outputs"] = ({"prediction": "float32 [batch]"} if regression else
                          {"probabilities": spec["outputs"]["probabilities"]})
    files.atomic_write_text(artifact.with_suffix(artifact.suffix + ".json"),
                           json.dumps(doc, indent=2) + "\n")
