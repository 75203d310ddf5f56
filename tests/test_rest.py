"""exports/rest.py: TF Serving's REST contract over a SavedModel, without the HTTP
(tests/test_serve.py puts it behind the server)."""

import keras
import numpy as np
import pytest

from pretrainer.data.records import StoreManifest
from pretrainer.errors import RunError
from pretrainer.exports import rest, savedmodel

IMAGE = StoreManifest.from_json({"modality": "image", "task": "classification",
                                 "shape": [4, 4, 1], "num_classes": 2, "class_names": ["a", "b"]})


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(2, activation="softmax")])
    run = tmp_path_factory.mktemp("deploy")
    for version in ("1", "10", "2"):  # the newest is 10, not "2" by name
        savedmodel.export(model, run / "export" / "shoes" / version, IMAGE)
    name, path = rest.find_export(run)
    return model, rest.Model(name, path)


def test_find_export_takes_the_highest_version_and_names_what_is_missing(exported, tmp_path):
    _, served = exported
    assert served.name == "shoes" and served.version == "10"
    with pytest.raises(RunError, match="no SavedModel export"):
        rest.find_export(tmp_path)


def test_row_and_columnar_requests_answer_as_tf_serving_does(exported):
    model, served = exported
    x = np.random.default_rng(0).random((3, 4, 4, 1)).astype("float32")
    want = model.predict(x, verbose=0)
    rows = served.predict({"signature_name": "serve_float", "instances": x.tolist()})
    np.testing.assert_allclose([r["probabilities"] for r in rows["predictions"]], want,
                               atol=1e-5)
    assert [r["class_name"] for r in rows["predictions"]] == [
        ["a", "b"][i] for i in want.argmax(1)]
    cols = served.predict({"signature_name": "serve_float", "inputs": x.tolist()})
    np.testing.assert_allclose(cols["outputs"]["probabilities"], want, atol=1e-5)
    assert cols["outputs"]["label"] == want.argmax(1).tolist()


@pytest.mark.parametrize("body,match", [
    ({"signature_name": "nope", "instances": [[0]]}, "not found in signature def"),
    ({"signature_name": "serve_pixels", "instances": [[[[0.5]] * 4] * 4]}, "integer"),
    ({"signature_name": "serve_float", "instances": [[["x"]]]}, "expected numbers"),
])
def test_a_request_the_model_cannot_take_is_a_bad_request(exported, body, match):
    _, served = exported
    with pytest.raises(rest.BadRequest, match=match):
        served.predict(body)


def test_string_outputs_are_text_or_b64_as_tf_serving_writes_them():
    arr = np.array([b"shoe", b"\xff\xfe"], dtype=object)
    assert rest._jsonable("label", arr) == ["shoe", {"b64": "//4="}]
    assert rest._jsonable("image_bytes", np.array([b"ab"], dtype=object)) == [{"b64": "YWI="}]
