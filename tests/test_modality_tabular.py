"""data/modalities/tabular.py: one encoding of table rows for training (collect), local predict
(encode_row) and the exported graph (encode_columns_tf), and names TensorFlow accepts."""

import re

import numpy as np
import tensorflow as tf

from pretrainer.data.modalities import tabular as preprocess
from pretrainer.data.tabular import load_csv

CSV = ("área (m²),kind of house,rooms,price\n"
       "120,flat,3,10\n,house,4,20\n80, flat ,NA,30\n95,villa,2,40\n")


def test_training_local_and_graph_encodings_agree(tmp_path):
    path = tmp_path / "homes.csv"
    path.write_text(CSV, encoding="latin-1")
    data = load_csv(str(path), "price", "regression")
    columns = data["encodings"]
    rows = [dict(zip(["área (m²)", "kind of house", "rooms"], r.split(",")[:3], strict=True))
            for r in CSV.splitlines()[1:]]
    local = np.stack([preprocess.encode_row(columns, r) for r in rows])
    np.testing.assert_allclose(local, data["x"], rtol=1e-6)
    names = preprocess.input_names(columns)
    # TensorFlow's rule for signature input names, and one name per column
    assert all(re.fullmatch(r"[A-Za-z0-9.][A-Za-z0-9_.\-/]*", n) for n in names), names
    assert len(set(names)) == len(names) == 3
    inputs = {}
    for col, name in zip(columns, names, strict=True):
        cells = [r[col["column"]].strip() for r in rows]
        inputs[name] = (tf.constant([float(c) if c not in ("", "NA") else np.nan for c in cells],
                                    tf.float32) if col["kind"] == "numeric" else tf.constant(cells))
    graph = preprocess.encode_columns_tf(columns, inputs).numpy()
    np.testing.assert_allclose(graph, data["x"], rtol=1e-6)
    decoded = preprocess.decode_features(columns, data["x"])  # deploy's column check
    np.testing.assert_allclose(preprocess.encode_columns_tf(
        columns, {k: tf.constant(v) for k, v in decoded.items()}).numpy(), data["x"], rtol=1e-6)


def test_an_unseen_category_encodes_as_no_category():
    columns = [{"column": "kind", "kind": "categorical", "categories": ["flat", "house"]}]
    assert preprocess.encode_row(columns, {"kind": "castle"}).tolist() == [0.0, 0.0]
