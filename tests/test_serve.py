import base64
import io
import json
import threading
import urllib.error
import urllib.request

import keras
import numpy as np
import pytest
from PIL import Image

from pretrainer.stages import deploy, serve


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax")])
    run = tmp_path_factory.mktemp("deploy")
    deploy.export_saved_model(model, run / "export" / "shoes" / "1", ["a", "b", "c"])
    srv, m = serve.make_server(run, "127.0.0.1", 0)  # port 0: a free loopback port
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/v1/models/shoes", model
    srv.shutdown()
    srv.server_close()


def _call(url, body=None, raw=None):
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_predict_matches_keras_for_lists_and_b64(server):
    url, model = server
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (8, 8), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    code, out = _call(url + ":predict", {"instances": [img.tolist(), {"b64": b64}]})
    assert code == 200, out
    expected = model.predict(img[None, ..., None] / 255.0, verbose=0)[0]
    for pred in out["predictions"]:
        np.testing.assert_allclose(pred["probabilities"], expected, atol=1e-5)
        assert pred["class_name"] == "abc"[int(expected.argmax())]
    code, out = _call(url + ":predict", {"instances": [np.zeros((20, 11, 1), int).tolist()]})
    assert code == 200 and len(out["predictions"][0]["probabilities"]) == 3  # any size


def test_status(server):
    url, _ = server
    code, out = _call(url)
    assert code == 200 and out["model_version_status"][0]["state"] == "AVAILABLE"


@pytest.mark.parametrize("body,raw", [
    (None, b"{not json"),
    ({"inputs": []}, None),
    ({"instances": []}, None),
    ({"instances": [[[1, 2], [3]]]}, None),
    ({"instances": [np.zeros((4, 4, 3)).tolist()]}, None),
    ({"instances": [np.full((4, 4), 300).tolist()]}, None),
    ({"instances": [{"b64": "!!!"}]}, None),
])
def test_malformed_requests_get_400_and_json(server, body, raw):
    url, _ = server
    code, out = _call(url + ":predict", body=body, raw=raw)
    assert code == 400 and "error" in out


def test_unknown_model_is_404(server):
    url, _ = server
    code, out = _call(url.replace("shoes", "boots") + ":predict", {"instances": [[[0]]]})
    assert code == 404 and "shoes" in out["error"]
