"""IDX source (MNIST-family files) and explainability maps."""

import keras
import numpy as np
import pytest

from pretrainer.config import DataConfig
from pretrainer.data.idx import write_idx
from pretrainer.data.sources import get_source
from pretrainer.errors import DataError
from pretrainer.explain import attributions, grid_png, pick


@pytest.mark.parametrize("compress", [False, True])
def test_idx_folder_loads_train_and_test(tmp_path, compress):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (20, 5, 6)), np.arange(20) % 10
    write_idx(tmp_path / "train-images-idx3-ubyte", x, compress)
    write_idx(tmp_path / "train-labels-idx1-ubyte", y, compress)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", x[:4], compress)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", y[:4], compress)
    src = get_source("idx")(DataConfig(source="idx", dataset="fashion_mnist", path=str(tmp_path)))
    assert src.x_pool.shape == (20, 5, 6, 1) and np.array_equal(src.x_pool[..., 0], x)
    assert np.array_equal(src.y_pool, y) and len(src.x_test) == 4
    assert src.class_names[9] == "ankle boot"


def test_idx_errors_are_one_line(tmp_path):
    cfg = DataConfig(source="idx", path=str(tmp_path))
    with pytest.raises(DataError, match="train-images-idx3-ubyte"):
        get_source("idx")(cfg)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 3, 3)), False)
    with pytest.raises(DataError, match="labels"):
        get_source("idx")(cfg)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4), False)
    truncated = tmp_path / "train-images-idx3-ubyte"
    truncated.write_bytes(truncated.read_bytes()[:-5])
    with pytest.raises(DataError, match="truncated") as err:
        get_source("idx")(cfg)
    assert "\n" not in str(err.value)


def _tiny_classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 1))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.Flatten()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


def test_integrated_gradients_are_complete_and_saliency_is_nonnegative():
    model = _tiny_classifier()
    x = np.random.default_rng(1).random((4, 6, 6, 1)).astype(np.float32)
    target = np.array([0, 1, 2, 1])
    ig = attributions(model, x, target, "integrated_gradients", steps=128)
    probs = model.predict(x, verbose=0)
    base = model.predict(np.zeros_like(x), verbose=0)
    gap = probs[np.arange(4), target] - base[np.arange(4), target]
    # completeness: attributions sum to the change of the explained probability
    np.testing.assert_allclose(ig.reshape(4, -1).sum(axis=1), gap, atol=2e-3)
    sal = attributions(model, x, target, "saliency")
    assert sal.shape == x.shape and (sal >= 0).all() and sal.max() > 0


def test_pick_mixes_right_and_wrong_and_grid_is_written(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    pred = np.array([0, 1, 1, 0, 2, 2])  # wrong at 2 and 4
    idx = pick(y, pred, 4)
    assert sorted(idx.tolist()) == [0, 1, 2, 4]
    assert len(pick(y, pred, 6)) == 6 and len(pick(y, y, 3)) == 3
    images = np.random.default_rng(0).random((3, 6, 6, 1))
    grid_png(images, images, ["a", "b", "c"], tmp_path / "g.png", "saliency")
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
