import json
import os

import keras
import numpy as np
import pytest
from conftest import run_python

from pretrainer.config import DeployConfig
from pretrainer.data.modalities.image import png_files
from pretrainer.data.records import StoreManifest
from pretrainer.exports import litert, onnx, parity, savedmodel
from pretrainer.stages import deploy

NAMES = ["cat", "dog", "owl"]
MANIFEST = StoreManifest.from_json({"modality": "image", "task": "classification",
                                    "shape": [8, 8, 1], "num_classes": 3, "class_names": NAMES})


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.BatchNormalization(), keras.layers.Flatten(),
                              keras.layers.Dense(3, activation="softmax", dtype="float32")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    rng = np.random.default_rng(0)
    x = (rng.integers(0, 256, (40, 8, 8, 1)) / 255.0).astype("float32")  # like the store
    y = rng.integers(0, 3, 40)
    model.fit(x, y, epochs=1, verbose=0)
    return model, x, y, model.predict(x, verbose=0)


@pytest.mark.parametrize("fmt", ["saved_model", "litert", "onnx"])
def test_each_format_matches_keras_in_its_own_runtime(tiny, tmp_path, fmt):
    model, x, y, ref = tiny
    path = {"saved_model": lambda: savedmodel.export(model, tmp_path / "sm" / "1", MANIFEST),
            "litert": lambda: litert.export(model, tmp_path / "m.tflite", MANIFEST, "none", x),
            "onnx": lambda: onnx.export(model, tmp_path / "m.onnx", MANIFEST)}[fmt]()
    result = parity.check(fmt, path, MANIFEST, x, y, ref, DeployConfig())
    assert result["passed"], result
    assert result["max_abs_diff"] < 1e-4 and result["label_agreement"] == 1.0
    assert result["size_bytes"] > 0 and result["latency_ms_p50"] > 0


def test_parity_gate_fails_on_a_planted_mismatch(tiny, tmp_path):
    model, x, y, ref = tiny
    path = litert.export(model, tmp_path / "m.tflite", MANIFEST, "none", x)
    planted = ref.copy()
    planted[0] = planted[0][::-1]  # one example's probabilities disagree
    result = parity.check("litert", path, MANIFEST, x, y, planted, DeployConfig())
    assert not result["passed"] and result["max_abs_diff"] > 1e-4


@pytest.mark.parametrize("quantize", ["dynamic", "float16", "int8"])
def test_quantized_litert_runs_in_the_interpreter(tiny, tmp_path, quantize):
    model, x, y, ref = tiny
    path = litert.export(model, tmp_path / f"{quantize}.tflite", MANIFEST, quantize, x)
    result = parity.check("litert", path, MANIFEST, x, y, ref,
                          DeployConfig(quantize=quantize, max_accuracy_drop=1.0))
    assert result["passed"] and result["quantize"] == quantize
    assert result["label_agreement"] > 0.5  # quantized, yet still the same model


def test_saved_model_runner_imports_only_tensorflow(tiny, tmp_path):
    model, x, _, _ = tiny
    path = savedmodel.export(model, tmp_path / "sm" / "1", MANIFEST)
    np.savez(tmp_path / "x.npz", **parity.client_inputs(MANIFEST, x, "saved_model"))
    code = ("import sys; from pretrainer.exports import parity; "
            f"parity.main(['saved_model', '{path}', '{tmp_path / 'x.npz'}', "
            f"'{tmp_path / 'y.npy'}']); "
            "print(sorted(m for m in sys.modules if m.startswith('pretrainer.') "
            "and m not in ('pretrainer.exports', 'pretrainer.exports.parity')))")
    out = run_python(code)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert np.load(tmp_path / "y.npy").shape == (40, 3)


def test_versions_increment_and_never_overwrite(tmp_path):
    assert deploy.next_version(tmp_path / "none") == 1
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "7").mkdir()
    assert deploy.next_version(tmp_path / "m") == 8


def test_saved_model_serves_image_files_and_raw_uint8_images_of_any_size(tiny, tmp_path):
    import tensorflow as tf

    model, x, _, ref = tiny
    path = savedmodel.export(model, tmp_path / "sm" / "1", MANIFEST)
    sigs = tf.saved_model.load(str(path)).signatures
    fn = sigs["serve_pixels"]
    raw = np.rint(x * 255).astype(np.uint8)
    out = fn(images=tf.constant(raw))
    np.testing.assert_allclose(out["probabilities"].numpy(), ref, atol=1e-5)
    assert out["class_name"].numpy()[0].decode() == ["cat", "dog", "owl"][ref[0].argmax()]
    bigger = fn(images=tf.constant(np.zeros((2, 17, 13, 1), np.uint8)))
    assert bigger["probabilities"].shape == (2, 3)
    # the default signature: the same images as PNG files, as a client sends them
    files = sigs["serving_default"](image_bytes=tf.constant(png_files(x)))
    np.testing.assert_allclose(files["probabilities"].numpy(), ref, atol=1e-5)

    assert (path / "assets" / "labels.txt").read_text().split() == NAMES
    spec = json.loads((path / "assets" / "input_spec.json").read_text())
    assert spec["class_names"] == NAMES and spec["tensor"]["range"] == [0.0, 1.0]


def test_litert_and_onnx_carry_names_and_class_names_in_a_clean_process(tiny, tmp_path):
    model, x, _, ref = tiny
    litert.export(model, tmp_path / "model.tflite", MANIFEST, "none", x)
    onnx.export(model, tmp_path / "model.onnx", MANIFEST)
    np.save(tmp_path / "x.npy", x)
    code = f"""
import json, numpy as np, onnxruntime as ort, tensorflow as tf
x = np.load({str(tmp_path / 'x.npy')!r})
s = ort.InferenceSession({str(tmp_path / 'model.onnx')!r})
meta = s.get_modelmeta().custom_metadata_map
assert [i.name for i in s.get_inputs()] == ["images"], s.get_inputs()
assert [o.name for o in s.get_outputs()] == ["probabilities"]
assert s.get_inputs()[0].shape[0] == "batch"
o = s.run(["probabilities"], {{"images": x}})[0]
runner = tf.lite.Interpreter(model_path={str(tmp_path / 'model.tflite')!r}).get_signature_runner()
l = runner(images=x[:1])["probabilities"]
print(json.dumps({{"names": json.loads(meta["class_names"]), "spec": json.loads(meta["input_spec"]),
                  "onnx": o.tolist(), "litert": l.tolist()}}))
"""
    out = run_python(code, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["names"] == NAMES and got["spec"]["layout"].startswith("NHWC")
    np.testing.assert_allclose(got["onnx"], ref, atol=1e-4)
    np.testing.assert_allclose(got["litert"], ref[:1], atol=1e-4)
    assert (tmp_path / "labels.txt").read_text().split() == NAMES
    side = json.loads((tmp_path / "model.tflite.json").read_text())
    assert side["class_names"] == NAMES and side["input"]["shape"] == [None, 8, 8, 1]


def test_pruning_reaches_the_target_and_keeps_zeros_through_finetuning(tiny):
    import tensorflow as tf

    from pretrainer import prune

    model, x, y, _ = tiny
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    clone.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    achieved = prune.prune(clone, 0.5, ds, steps_per_epoch=5, epochs=2)
    assert 0.49 <= achieved <= 0.51
    kernel = clone.layers[-1].kernel.numpy()
    original = model.layers[-1].kernel.numpy()
    # the zeros are where the original weights were smallest
    assert np.abs(original[kernel == 0]).max() <= np.abs(original[kernel != 0]).min() + 1e-7


def test_missing_onnx_extra_is_a_clear_error(monkeypatch):
    import importlib.util

    from pretrainer.errors import ConfigError

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tf2onnx" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'pretrainer\[onnx\]'"):
        onnx.require()


def test_publish_never_overwrites_a_version(tmp_path):
    src = tmp_path / "export" / "m" / "1"
    src.mkdir(parents=True)
    (src / "saved_model.pb").write_bytes(b"new")
    (tmp_path / "serving" / "m" / "1").mkdir(parents=True)
    (tmp_path / "serving" / "m" / "1" / "saved_model.pb").write_bytes(b"old")
    published = deploy.publish(src, tmp_path / "serving" / "m")
    assert published.name == "2" and (published / "saved_model.pb").read_bytes() == b"new"
    assert (tmp_path / "serving" / "m" / "1" / "saved_model.pb").read_bytes() == b"old"


def test_mixed_precision_models_export_as_float32(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Conv2D(4, 3),
                                  keras.layers.Flatten(),
                                  keras.layers.Dense(3, activation="softmax", dtype="float32")])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = (np.random.default_rng(0).integers(0, 256, (16, 8, 8, 1)) / 255.0).astype("float32")
    f32 = deploy.float32_copy(model)
    assert all(layer.dtype_policy.name == "float32" for layer in f32.layers)
    np.testing.assert_allclose(f32.predict(x, verbose=0), model.predict(x, verbose=0),
                               atol=2e-2)  # bf16 vs f32 arithmetic
    path = litert.export(f32, tmp_path / "m.tflite", MANIFEST, "none", x)
    ref = f32.predict(x, verbose=0)
    result = parity.check("litert", path, MANIFEST, x, ref.argmax(1), ref, DeployConfig())
    assert result["passed"]


@pytest.mark.parametrize("y,probs,chance", [
    ([0, 1, 2, 0] * 25, np.eye(3)[[0, 1, 2, 0] * 25], False),  # all right
    ([0] * 60 + [1] * 40, np.eye(2)[[0] * 100], True),  # always the majority class
    ([0, 1] * 50, np.eye(2)[[0, 0, 1, 1] * 25], True),  # coin flips
])
def test_chance_level_models_are_recognised(y, probs, chance):
    assert (deploy.chance_level(np.array(y), probs.astype(np.float32)) is not None) == chance


def test_regressor_no_better_than_the_mean_is_chance_level():
    y = np.linspace(0, 1, 50).astype(np.float32)
    assert deploy.chance_level(y, np.full((50, 1), 0.5, np.float32)) is not None
    assert deploy.chance_level(y, (y + 0.01)[:, None]) is None
