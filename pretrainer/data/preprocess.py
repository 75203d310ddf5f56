"""Each modality's preprocessing, defined once.

The data pipeline, the SavedModel signatures, `serve` and `predict` all call these,
so an image is scaled the same way in training and in serving, and a CSV row is
encoded the same way by `collect` and by the exported graph.

- images: uint8 pixels, HWC (channels last), scaled to float32 [0, 1] by /255;
  other sizes are resized bilinearly to the training size first.
- text: raw strings; the WordPiece tokenizer is a layer of the model itself.
- table rows: each CSV column by the encoding `collect` recorded in the store
  manifest (`columns`): numeric columns as numbers (missing -> the recorded fill),
  categorical columns one-hot over the recorded categories; the model standardises
  the encoded features itself (a Normalization layer with the pool's statistics).
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

import numpy as np

from pretrainer.data.records import StoreManifest

PIXEL_MAX = 255.0


def scale_pixels(images):
    """uint8 (or 0-255 float) pixels -> float32 in [0, 1]; TensorFlow or NumPy input."""
    if isinstance(images, np.ndarray):
        return images.astype(np.float32) / PIXEL_MAX
    import tensorflow as tf

    return tf.cast(images, tf.float32) / PIXEL_MAX


def pixels_to_model(images, size: tuple[int, int]):
    """A batch of uint8 images of any size -> the model's float input at `size`.

    Bilinear resize with half-pixel centres is the identity at the training size.
    """
    import tensorflow as tf

    return scale_pixels(tf.image.resize(tf.cast(images, tf.float32), size))


def decode_image_bytes(data, size: tuple[int, int], channels: int):
    """Encoded PNG/JPEG/GIF/BMP bytes (one scalar string) -> float32 [h, w, c] model input."""
    import tensorflow as tf

    img = tf.io.decode_image(data, channels=channels, expand_animations=False)
    img.set_shape([None, None, channels])
    return pixels_to_model(img[None], size)[0]


# ---------------------------------------------------------------- table rows

def input_names(columns: list[dict]) -> list[str]:
    """Signature input names for CSV columns: TensorFlow allows [A-Za-z0-9_.-/] only,
    so other characters become '_' (the mapping is in the input spec)."""
    names, seen = [], set()
    for col in columns:
        name = re.sub(r"[^A-Za-z0-9_.\-]", "_", col["column"]) or "column"
        if not re.match(r"[A-Za-z0-9.]", name):
            name = "c" + name
        while name in seen:
            name += "_"
        seen.add(name)
        names.append(name)
    return names


def encode_columns_tf(columns: list[dict], inputs: dict):
    """Named column tensors (float32 numbers, strings for categories) -> encoded features."""
    import tensorflow as tf

    parts = []
    for col, name in zip(columns, input_names(columns), strict=True):
        value = inputs[name]
        if col["kind"] == "numeric":
            value = tf.where(tf.math.is_nan(value), tf.constant(col["fill"], tf.float32), value)
            parts.append(value[:, None])
        else:
            cats = tf.constant(col["categories"])
            parts.append(tf.cast(tf.equal(tf.strings.strip(value)[:, None], cats[None]),
                                 tf.float32))
    return tf.concat(parts, axis=1)


def encode_row(columns: list[dict], row: dict[str, str]) -> np.ndarray:
    """One CSV row (column name -> cell text) -> encoded features, as `collect` encodes.

    A non-numeric value in a numeric column raises ValueError; an unseen category
    encodes as all zeros (no category), as in the exported graph.
    """
    from pretrainer.data.tabular import MISSING

    out = []
    for col in columns:
        cell = (row.get(col["column"]) or "").strip()
        if col["kind"] == "numeric":
            out.append(col["fill"] if cell.lower() in MISSING else float(cell))
        else:
            out += [float(cell == c) for c in col["categories"]]
    return np.asarray(out, np.float32)


def decode_features(columns: list[dict], x: np.ndarray) -> dict[str, np.ndarray]:
    """Encoded feature rows -> the named column inputs that encode back to them
    (how `deploy` checks the column signature on the test split)."""
    out, i = {}, 0
    for col, name in zip(columns, input_names(columns), strict=True):
        if col["kind"] == "numeric":
            out[name] = x[:, i].astype(np.float32)
            i += 1
        else:
            k = len(col["categories"])
            block = x[:, i:i + k]
            cats = np.asarray(col["categories"] + [""], dtype=object)
            idx = np.where(block.max(axis=1) > 0.5, block.argmax(axis=1), k)
            out[name] = cats[idx].astype(str)
            i += k
    return out


# ---------------------------------------------------------------- input spec

def input_spec(manifest: StoreManifest, formats: Optional[Iterable[str]] = None) -> dict:
    """What a consumer must feed each export, written beside it as JSON."""
    modality = manifest.modality
    regression = manifest.regression
    spec: dict = {"modality": modality,
                  "task": "regression" if regression else "classification",
                  "class_names": list(manifest.class_names)}
    if modality == "image":
        h, w, c = manifest.shape
        encoded = {"image_bytes": f"string [batch]: encoded PNG/JPEG/GIF/BMP of any size, "
                                  f"resized to {h}x{w} (TF Serving: {{\"b64\": ...}})"}
        spec["saved_model"] = {
            "serving_default": encoded,
            "serve_bytes": encoded,
            "serve_pixels": {"images": f"uint8 [batch, height, width, {c}] pixels 0-255, "
                                       f"any height and width (resized to {h}x{w})"},
            "serve_float": {"images": f"float32 [batch, {h}, {w}, {c}], pixels/255 in [0, 1]"},
        }

        spec["tensor"] = {"name": "images", "dtype": "float32", "shape": [None, h, w, c],
                          "layout": "NHWC (channels last)", "range": [0.0, 1.0],
                          "preprocessing": f"resize to {h}x{w} (bilinear), divide by 255",
                          "color": "grayscale" if c == 1 else "RGB"}
    elif modality == "text":
        spec["saved_model"] = {"serving_default": {
            "text": "string [batch]: raw UTF-8 text; the WordPiece tokenizer is in the graph "
                    "(needs TensorFlow Text's ops, linked into stock TF Serving)"}}
    else:
        columns = list(manifest.columns)
        names = input_names(columns)
        spec["saved_model"] = {
            "serving_default": {name: ("float32 [batch] (NaN = missing -> "
                                       f"{col['fill']:g})" if col["kind"] == "numeric" else
                                       "string [batch], one of " + ", ".join(
                                           repr(c) for c in col["categories"][:20]))
                                for col, name in zip(columns, names, strict=True)},
            "serve_features": {"features": f"float32 [batch, {manifest.width}]: the "
                                           f"encoded features in feature_names order"}}
        spec["columns"] = [{"column": c["column"], "input": n, **{k: v for k, v in c.items()
                                                                   if k != "column"}}
                           for c, n in zip(columns, names, strict=True)]
        spec["feature_names"] = list(manifest.feature_names)
        spec["tensor"] = {"name": "features", "dtype": "float32",
                          "shape": [None, manifest.width],
                          "preprocessing": "the encoded features (see columns); the model "
                                           "standardises them itself"}
    spec["outputs"] = ({"prediction": "float32 [batch]"} if regression else
                       {"probabilities": f"float32 [batch, {manifest.num_classes}] softmax, "

                                         f"in class_names order",
                        "label": "int64 [batch] argmax", "class_name": "string [batch]"})
    if formats is not None:
        spec["formats"] = list(formats)
    return spec
