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
