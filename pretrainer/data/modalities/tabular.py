"""Table rows: each CSV column by the encoding `collect` recorded in the store manifest
(`columns`): numeric columns as numbers (missing -> the recorded fill), categorical
columns one-hot over the recorded categories. The model standardises the encoded
features itself (a Normalization layer with the pool's statistics), and the SavedModel
takes the columns by name and encodes them as `collect` did (`encode_columns_tf`)."""

from __future__ import annotations

import json
import re

import numpy as np

from pretrainer.data.modalities.base import Modality

MISSING = {"", "nan", "na", "n/a", "null", "none"}  # cells that mean "no value"
SMALL_TABLE = 500  # below this many labeled rows, linear models join gradient boosting


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


class TabularModality(Modality):
    def example_features(self, row) -> dict:
        import tensorflow as tf

        return {"features": tf.train.Feature(float_list=tf.train.FloatList(
            value=np.asarray(row, np.float32).tolist()))}

    def entry_spec(self, manifest) -> dict:
        columns = list(manifest.columns)
        names = input_names(columns)
        return {
            "saved_model": {
                "serving_default": {
                    name: ("float32 [batch] (NaN = missing -> "
                           f"{col['fill']:g})" if col["kind"] == "numeric" else
                           "string [batch], one of " + ", ".join(
                               repr(c) for c in col["categories"][:20]))
                    for col, name in zip(columns, names, strict=True)},
                "serve_features": {"features": f"float32 [batch, {manifest.width}]: the "
                                               f"encoded features in feature_names order"}},
            "columns": [{"column": c["column"], "input": n,
                         **{k: v for k, v in c.items() if k != "column"}}
                        for c, n in zip(columns, names, strict=True)],
            "feature_names": list(manifest.feature_names),
            "tensor": {"name": "features", "dtype": "float32", "shape": [None, manifest.width],
                       "preprocessing": "the encoded features (see columns); the model "
                                        "standardises them itself"},
        }

    def signatures(self, model, manifest, outputs) -> dict:
        import tensorflow as tf

        columns = list(manifest.columns)
        n = model.input_shape[-1]

        @tf.function(input_signature=[tf.TensorSpec([None, n], tf.float32, name="features")])
        def serve_features(features):
            return outputs(model(features, training=False))

        if not columns:  # a store from before column encodings were recorded
            return {"serving_default": serve_features}
        specs = {name: tf.TensorSpec([None], tf.float32 if col["kind"] == "numeric"
                                     else tf.string, name=name)
                 for col, name in zip(columns, input_names(columns), strict=True)}

        @tf.function(input_signature=[specs])
        def serve_columns(columns_in):
            return outputs(model(encode_columns_tf(columns, columns_in), training=False))

        return {"serving_default": serve_columns, "serve_features": serve_features}

    def client_inputs(self, manifest, x, fmt: str) -> dict:
        if fmt == "saved_model" and manifest.columns:
            return decode_features(list(manifest.columns), np.asarray(x, np.float32))
        return {"features": np.asarray(x, np.float32)}

    def card_input(self, manifest) -> str:
        cols = list(manifest.columns)
        return (f"table rows: {len(cols)} columns by name ("
                + ", ".join(c["column"] for c in cols[:20]) + ")")

    def card_usage(self, name: str, manifest) -> list[str]:
        cols = list(manifest.columns)
        example = {n: (c["fill"] if c["kind"] == "numeric" else c["categories"][0])
                   for c, n in zip(cols, input_names(cols), strict=True)}
        return ["Input: one value per CSV column, by name (numbers, or the category text).",
                "", "```bash",
                f"curl -s localhost:8501/v1/models/{name}:predict -d "
                f"'{json.dumps({'instances': [example]})}'", "```", ""]

    def classical_describe(self, regression: bool) -> str:
        return (f"HistGradientBoosting{'Regressor' if regression else 'Classifier'} "
                f"(or {'ridge' if regression else 'logistic'} regression on small tables)")

    def classical_features(self, x):
        x = np.asarray(x, np.float32)
        return x.reshape(len(x), -1)

    def classical_candidates(self, regression: bool, n: int, c_grid) -> list:
        """Gradient boosting with leaves sized to the data (its default of 20 rows a leaf
        cannot split a table of 21 rows: 56.7 % on a separable one), and below
        SMALL_TABLE rows standardised logistic / ridge regression beside it."""
        from sklearn.ensemble import (
            HistGradientBoostingClassifier,
            HistGradientBoostingRegressor,
        )
        from sklearn.linear_model import LogisticRegression, Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        leaf = min(20, max(1, n // 10))
        cls = HistGradientBoostingRegressor if regression else HistGradientBoostingClassifier
        out = [(f"{cls.__name__}(min_samples_leaf={leaf})",
                cls(random_state=0, min_samples_leaf=leaf))]
        if n < SMALL_TABLE:
            linear = ([(f"Ridge(alpha={1 / c:g})", Ridge(alpha=1 / c)) for c in c_grid]
                      if regression else
                      [(f"LogisticRegression(C={c:g})", LogisticRegression(C=c, max_iter=2000))
                       for c in c_grid])
            out = [(name, make_pipeline(StandardScaler(), est)) for name, est in linear] + out
        return out


TABULAR = TabularModality(
    name="tabular", stored={"features": "float32 list (encoded columns)"}, dtype="float32",
    user_input="a .csv file with the training columns", input_kind="csv",
    predict_signature=("serve_features", "features"), card_tag="tabular-classification",
    tensor_name="features", standardized=True, card_call="**columns")
