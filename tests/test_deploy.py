import subprocess
import sys

import keras
import numpy as np
import pytest
from conftest import ROOT

from pretrainer.config import DeployConfig
from pretrainer.stages import deploy


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
    path = {"saved_model": lambda: deploy.export_saved_model(model, tmp_path / "sm" / "1"),
            "litert": lambda: deploy.export_litert(model, tmp_path / "m.tflite", "none", x),
            "onnx": lambda: deploy.export_onnx(model, tmp_path / "m.onnx")}[fmt]()
    result = deploy.check_parity(fmt, path, x, y, ref, DeployConfig())
    assert result["passed"], result
    assert result["max_abs_diff"] < 1e-4 and result["label_agreement"] == 1.0
    assert result["size_bytes"] > 0 and result["latency_ms_p50"] > 0


def test_parity_gate_fails_on_a_planted_mismatch(tiny, tmp_path):
    model, x, y, ref = tiny
    path = deploy.export_litert(model, tmp_path / "m.tflite", "none", x)
    planted = ref.copy()
    planted[0] = planted[0][::-1]  # one example's probabilities disagree
    result = deploy.check_parity("litert", path, x, y, planted, DeployConfig())
    assert not result["passed"] and result["max_abs_diff"] > 1e-4


@pytest.mark.parametrize("quantize", ["dynamic", "float16", "int8"])
def test_quantized_litert_runs_in_the_interpreter(tiny, tmp_path, quantize):
    model, x, y, ref = tiny
    path = deploy.export_litert(model, tmp_path / f"{quantize}.tflite", quantize, x)
    result = deploy.check_parity("litert", path, x, y, ref,
                                 DeployConfig(quantize=quantize, max_accuracy_drop=1.0))
    assert result["passed"] and result["quantize"] == quantize
    assert result["label_agreement"] > 0.5  # quantized, yet still the same model


def test_saved_model_runner_imports_only_tensorflow(tiny, tmp_path):
    model, x, _, _ = tiny
    path = deploy.export_saved_model(model, tmp_path / "sm" / "1")
    np.save(tmp_path / "x.npy", x)
    code = ("import sys; from pretrainer import parity; "
            f"parity.main(['saved_model', '{path}', '{tmp_path / 'x.npy'}', "
            f"'{tmp_path / 'y.npy'}']); "
            "print(sorted(m for m in sys.modules if m.startswith('pretrainer.') "
            "and m != 'pretrainer.parity'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
    assert np.load(tmp_path / "y.npy").shape == (40, 3)


def test_versions_increment_and_never_overwrite(tmp_path):
    assert deploy.next_version(tmp_path / "none") == 1
    (tmp_path / "m" / "1").mkdir(parents=True)
    (tmp_path / "m" / "7").mkdir()
    assert deploy.next_version(tmp_path / "m") == 8


def test_saved_model_serves_raw_uint8_images_of_any_size(tiny, tmp_path):
    import tensorflow as tf

    model, x, _, ref = tiny
    path = deploy.export_saved_model(model, tmp_path / "sm" / "1", ["cat", "dog", "owl"])
    fn = tf.saved_model.load(str(path)).signatures["serving_default"]
    raw = np.rint(x * 255).astype(np.uint8)
    out = fn(images=tf.constant(raw))
    np.testing.assert_allclose(out["probabilities"].numpy(), ref, atol=1e-5)
    assert out["class_name"].numpy()[0].decode() == ["cat", "dog", "owl"][ref[0].argmax()]
    bigger = fn(images=tf.constant(np.zeros((2, 17, 13, 1), np.uint8)))
    assert bigger["probabilities"].shape == (2, 3)


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
        deploy._require_onnx()


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
    path = deploy.export_litert(f32, tmp_path / "m.tflite", "none", x)
    ref = f32.predict(x, verbose=0)
    result = deploy.check_parity("litert", path, x, ref.argmax(1), ref, DeployConfig())
    assert result["passed"]
