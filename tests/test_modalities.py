"""The modality records: one place for what each kind of data decides."""

import pytest

from pretrainer.data import modalities
from pretrainer.data.records import StoreManifest
from pretrainer.errors import DataError


def test_each_modality_says_how_it_is_stored_read_predicted_and_exported():
    assert set(modalities.MODALITIES) == {"image", "text", "tabular"}
    for m in modalities.MODALITIES.values():
        assert m.stored and m.dtype and m.user_input and m.card_tag.endswith("classification")
        assert "saved_model" in m.formats
        assert modalities.BY_INPUT_KIND[m.input_kind] is m
    text = modalities.get("text")
    assert text.formats == ("saved_model",) and "tokenizer" in text.formats_why
    assert not text.fixed_shape
    with pytest.raises(DataError, match="Unknown modality 'audio'. Known: image, text"):
        modalities.get("audio")


def test_a_store_manifest_reaches_its_modality():
    m = StoreManifest.from_json({"modality": "tabular", "shape": [3], "splits": {}})
    assert m.kind.predict_signature == ("serve_features", "features")
    assert m.example_shape == (3,)
    assert StoreManifest.from_json({"modality": "text", "splits": {}}).example_shape is None


def test_every_modality_implements_what_the_record_asks():
    """A new modality that forgets a method fails here, not in a user's deploy."""
    from pretrainer.data.modalities.base import Modality

    asked = [n for n, v in vars(Modality).items()
             if callable(v) and not n.startswith("_") and n != "record_shape"]
    for m in modalities.MODALITIES.values():
        missing = [n for n in asked if getattr(type(m), n) is getattr(Modality, n)]
        assert not missing, f"{m.name} lacks {missing}"
    assert sum(m.pixels for m in modalities.MODALITIES.values()) == 1
    assert [m.name for m in modalities.MODALITIES.values() if m.strings] == ["text"]


def test_stored_examples_parse_back_by_the_recorded_feature_spec():
    import numpy as np
    import tensorflow as tf

    rows = {"image": np.arange(12, dtype=np.uint8).reshape(2, 2, 3),
            "text": "naïve café [draft] ✓", "tabular": np.array([1.5, -2.0, 0.0], np.float32)}
    for name, row in rows.items():
        m = modalities.get(name)
        ex = tf.train.Example(features=tf.train.Features(feature=m.example_features(row)))
        (key,) = m.stored
        spec = {key: tf.io.FixedLenFeature([], tf.string) if m.dtype in ("uint8", "string")
                else tf.io.FixedLenFeature([3], tf.float32)}
        got = tf.io.parse_single_example(ex.SerializeToString(), spec)[key].numpy()
        if name == "image":
            assert np.frombuffer(got, np.uint8).tolist() == row.reshape(-1).tolist()
        elif name == "text":
            assert got.decode("utf-8") == row
        else:
            np.testing.assert_array_equal(got, row)
    assert modalities.get("text").record_shape(np.array(["a", "b"])) == []
    assert modalities.get("image").record_shape(np.zeros((4, 5, 6, 1))) == [5, 6, 1]


def test_input_spec_names_the_tensor_each_export_takes():
    image = StoreManifest.from_json({"modality": "image", "shape": [8, 8, 1], "num_classes": 2,
                                     "class_names": ["a", "b"], "splits": {}})
    table = StoreManifest.from_json({"modality": "tabular", "shape": [2], "num_classes": 2,
                                     "class_names": ["a", "b"], "splits": {},
                                     "columns": [{"column": "size (m²)", "kind": "numeric",
                                                  "fill": 1.0}, {"column": "x", "kind": "numeric",
                                                                 "fill": 0.0}],
                                     "feature_names": ["size (m²)", "x"]})
    for m in (image, table):
        spec = modalities.input_spec(m, ["saved_model"])
        assert spec["tensor"]["name"] == m.kind.tensor_name
        assert spec["formats"] == ["saved_model"] and "probabilities" in spec["outputs"]
    assert list(modalities.input_spec(table)["saved_model"]["serving_default"]) == [
        "size__m__", "x"]


def test_a_run_keeps_its_vocabulary_and_images_go_out_as_lossless_pngs(tmp_path):
    import numpy as np
    import tensorflow as tf

    from pretrainer.data.modalities import image, text

    pool = tf.data.Dataset.from_tensor_slices(["the cat sat", "a dog ran", "the dog sat"] * 20)
    vocab = text.run_vocabulary(tmp_path, lambda: pool.batch(8), 50)
    assert vocab[:5] == text.RESERVED and (tmp_path / text.VOCAB_FILE).is_file()

    def no_pool():
        raise AssertionError("a resumed run must not learn its vocabulary again")
    assert text.run_vocabulary(tmp_path, no_pool, 50) == vocab

    x = np.random.default_rng(0).integers(0, 256, (3, 5, 7, 3)).astype(np.float32) / 255.0
    back = [tf.io.decode_png(b).numpy() / 255.0 for b in image.png_files(x)]
    np.testing.assert_allclose(np.stack(back), x, atol=1e-6)
    feats = image.IMAGE.classical_features(np.zeros((2, 64, 64, 1), np.uint8) + 255)
    assert feats.shape == (2, 32 * 32) and feats.max() == 1.0
