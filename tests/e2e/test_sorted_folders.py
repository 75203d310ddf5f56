"""Class-sorted folders bigger than any shuffle buffer train as well as shuffled arrays.

Stores used to keep the source's order: a 50k-image class-folder set trained to 30 %
test accuracy while plain Keras reached 70 %. Here 12,000 images in 10 sorted class
folders (the bundled Fashion-MNIST sample and its mirror image) go through
`pretrainer finetune` + `evaluate` with the seed recipe, and the same CNN is trained
with plain `model.fit` on the same decoded images in random order.
"""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, run_cli

pytestmark = pytest.mark.e2e

SAMPLE = ROOT / "pretrainer" / "data" / "samples" / "fashion_mnist_small.npz"
EPOCHS = 1


def _plain_seed_cnn():
    """scripts/compare_sorted_folders.py's plain-Keras seed CNN (scripts/ is no package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "compare_sorted_folders", ROOT / "scripts" / "compare_sorted_folders.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.plain_seed_cnn


def _write_tree(root: Path):
    """Write the PNG tree; return (train x, train y, test x, test y) as written (PNG is
    lossless, so these are the pixels the collect decodes)."""
    from PIL import Image

    d = np.load(SAMPLE)
    names = [f"{i} {n} [c]" for i, n in enumerate(d["class_names"])]  # spaces, brackets
    x = np.concatenate([d["x_train"], d["x_train"][:, :, ::-1]])
    y = np.concatenate([d["y_train"], d["y_train"]])
    for split, xs, ys in (("train", x, y), ("test", d["x_test"], d["y_test"])):
        for i, (img, label) in enumerate(zip(xs, ys, strict=True)):
            folder = root / split / names[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:05d}.png")
    return x, y, d["x_test"], d["y_test"]


def test_sorted_class_folders_score_like_shuffled_arrays(tmp_path):
    tree = tmp_path / "tree"
    x_all, y_all, x_test, y_test = _write_tree(tree)
    args = ["--config", "cifar_cnn", "data=image_folder", f"data.path={tree}",
            "data.image_size=[28,28]", "data.color=grayscale", f"trainer.epochs={EPOCHS}",
            "trainer.verbose=false",
            # streamed from the shards through 1,000-record blocks: the split is 10x that
            "data.cache=false", "data.shuffle_buffer=1000"]
    ft = run_cli(["finetune", *args], cwd=tmp_path)
    assert ft.returncode == 0, ft.stderr[-2000:]
    assert "val_accuracy" in ft.stdout  # the held-out split is scored every epoch
    ev = run_cli(["evaluate", *args], cwd=tmp_path)
    assert ev.returncode == 0, ev.stderr[-2000:]
    (run,) = (tmp_path / "runs" / "cifar_cnn").glob("evaluate-*")
    ours = json.loads((run / "metrics.json").read_text())["accuracy"]
    store = json.loads((tmp_path / "data" / "image_folder" / "manifest.json").read_text())
    assert store["splits"]["train"]["count"] > 10 * 1000  # over ten times the shuffle block

    import keras

    perm = np.random.default_rng(0).permutation(len(y_all))
    n = int(0.95 * len(perm))  # what pretrainer trains on (5% held out for validation)
    x = x_all[perm[:n], :, :, None].astype("float32") / 255.0
    y = keras.utils.to_categorical(y_all[perm[:n]], 10)
    model = _plain_seed_cnn()(x.shape[1:], 10)
    model.fit(x, y, epochs=EPOCHS, batch_size=64, verbose=0)
    plain = model.evaluate(x_test[:, :, :, None].astype("float32") / 255.0,
                           keras.utils.to_categorical(y_test, 10), verbose=0)[1]
    assert plain > 0.7
    assert ours >= plain - 0.02, (ours, plain)
